#pragma once
// Turning one row of logits into the next token, per sequence per step, and the acceptance rule
// of speculative decoding. Everything here is a pure function of its inputs (plus an explicit Rng),
// so the generation loop can call it from any thread and replay it from a copied Rng.
//
// The pipeline, in order (the order of the Hugging Face / vLLM samplers):
//   raw logits ─► repetition penalty ─► frequency/presence penalties ─► logit bias
//     ─► greedy (temperature 0): one-hot at the arg-max, ties to the lowest id
//     ─► else: ÷ temperature ─► softmax ─► top-k ─► top-p ─► min-p ─► renormalise
// target_distribution() is exactly the distribution a token is drawn from; draw() draws from it.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/rng.h"

namespace dsv3 {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  std::int32_t top_k = 0;           // 0 = off; ties with the k-th value are kept (as in HF/vLLM)
  float top_p = 1.0f;               // 1 = off; in (0, 1]
  float min_p = 0.0f;               // 0 = off; in [0, 1], relative to the most likely token
  float repetition_penalty = 1.0f;  // 1 = off; CTRL rule over prompt + output tokens
  float presence_penalty = 0.0f;    // OpenAI rule over output tokens
  float frequency_penalty = 0.0f;   // OpenAI rule over output tokens
  std::map<std::int32_t, float> logit_bias;  // token id -> added to its logit
  std::optional<std::uint64_t> seed;         // same seed -> same tokens
  std::optional<std::int32_t> max_tokens;    // unset: until a stop or the context limit
  std::vector<std::int32_t> stop_token_ids;  // generation ends on these; they are not emitted
  std::vector<std::string> stop;             // generation ends before these strings
  std::int32_t logprobs = 0;                 // top-N log-probabilities per token; 0 = off
  // The chosen token's own log-probability (SampledToken::logprob), also wanted with logprobs > 0.
  // Off by default: it costs a pass of exp over the whole vocabulary for every token.
  bool token_logprob = false;
  bool ignore_eos = false;                   // keep going past the model's end-of-sequence token (benchmarks)

  bool greedy() const { return temperature == 0.0f; }

  // Throws dsv3::Error naming the first field that is out of range for a `vocab_size` vocabulary.
  void validate(std::int64_t vocab_size) const;
};

// The tokens the penalties look at: repetition over both, presence/frequency over `output` only.
struct TokenHistory {
  std::span<const std::int32_t> prompt;
  std::span<const std::int32_t> output;
};

// What the penalties read from a history, kept up to date token by token (a generating sequence
// holds one), so that no step copies or sorts the history: every distinct token of the prompt and
// output, whether it occurs in the prompt (repetition penalty) and how often in the output
// (presence and frequency penalties). add() and remove() allocate nothing while the distinct
// tokens fit the capacity given at construction.
class PenaltyCounts {
 public:
  struct Entry {
    std::int32_t token = 0;
    std::int32_t output_count = 0;
    bool in_prompt = false;
  };

  PenaltyCounts() = default;
  // The counts of `history`, with room for `capacity` distinct tokens.
  explicit PenaltyCounts(const TokenHistory& history, std::size_t capacity = 0);

  // One more output token.
  void add(std::int32_t token);
  // Takes back one add() of `token` (a speculative draft that was only tried).
  void remove(std::int32_t token);

  std::span<const Entry> entries() const { return entries_; }  // by token id

 private:
  std::vector<Entry> entries_;
};

// Whether `params` asks for any penalty that reads the history (logit bias does not).
bool uses_history(const SamplingParams& params);
// Whether sample_token takes the logits' first arg-max alone (greedy, no penalty, no bias): it then
// reads nothing else, draws nothing and allocates nothing, so such rows can be sampled on any thread.
bool plain_argmax(const SamplingParams& params);

// Repetition penalty, then frequency/presence penalties, then logit bias, in place.
void apply_penalties(std::span<float> logits, const PenaltyCounts& counts, const SamplingParams& params);
void apply_penalties(std::span<float> logits, const TokenHistory& history, const SamplingParams& params);

// The probability of every token under `params` given the raw `logits` row; sums to 1.
// `out` must have logits.size() entries; it is filled in place (no allocation of the row).
void target_distribution(std::span<const float> logits, const PenaltyCounts& counts, const SamplingParams& params,
                         std::span<float> out);
void target_distribution(std::span<const float> logits, const TokenHistory& history,
                         const SamplingParams& params, std::span<float> out);
std::vector<float> target_distribution(std::span<const float> logits, const TokenHistory& history,
                                       const SamplingParams& params);

// A token drawn from `distribution` (non-negative weights, need not be normalised). Never returns
// a token of weight zero. Uses exactly one uniform from `rng`.
std::int32_t draw(std::span<const float> distribution, Rng& rng);

// The arg-max of `logits`, ties to the lowest id.
std::int32_t argmax(std::span<const float> logits);

struct TokenLogprob {
  std::int32_t token = 0;
  float logprob = 0.0f;
  bool operator==(const TokenLogprob&) const = default;
};

// Log-probabilities are those of the raw model output (log-softmax of the logits before penalties,
// bias and temperature), as OpenAI and vLLM report by default: they describe the model, not the
// sampling settings, and stay comparable across requests.
// The `count` most likely tokens, most likely first, equal values by lowest id.
std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, std::int32_t count);
// The same into `out`, reusing its capacity.
void top_logprobs(std::span<const float> logits, std::int32_t count, std::vector<TokenLogprob>& out);
float token_logprob(std::span<const float> logits, std::int32_t token);

struct SampledToken {
  std::int32_t token = 0;
  float logprob = 0.0f;  // of `token` in the raw model distribution; from the engine only when asked for (NaN otherwise)
  std::vector<TokenLogprob> top_logprobs;  // params.logprobs entries, empty when off
};

// target_distribution + draw + logprobs for one step. Greedy sampling consumes no randomness.
SampledToken sample(std::span<const float> logits, const TokenHistory& history, const SamplingParams& params,
                    Rng& rng);
// The token alone, with `scratch` (logits.size() floats) for the distribution: what sample() draws.
// Greedy sampling without penalties or biases reads the logits alone and leaves scratch untouched.
std::int32_t sample_token(std::span<const float> logits, const PenaltyCounts& counts, const SamplingParams& params,
                          Rng& rng, std::span<float> scratch);

// Speculative sampling (Leviathan et al. 2023; Chen et al. 2023). `target` is p, the distribution
// of the verifying model at this position, `draft` is q, the distribution the drafted token was
// drawn from. The draft is accepted with probability min(1, p(x)/q(x)); on rejection the token is
// drawn from the residual normalise(max(0, p - q)). The emitted token is then distributed exactly
// as p. With a greedy target (p one-hot) this accepts iff draft == arg-max p and otherwise returns
// the arg-max.
struct Acceptance {
  bool accepted = false;
  std::int32_t token = 0;  // the draft when accepted, else the residual sample
};
Acceptance speculative_accept(std::span<const float> target, std::span<const float> draft_distribution,
                              std::int32_t draft, Rng& rng);
// The same with `residual` (target.size() floats) as scratch for the rejection case.
Acceptance speculative_accept(std::span<const float> target, std::span<const float> draft_distribution,
                              std::int32_t draft, Rng& rng, std::span<float> residual);

// One verification step over a chain of drafts. target_rows holds drafts.size() + 1 rows of
// vocab_size: row i is p at the position of drafts[i] (computed with drafts[0..i) in the history),
// the last row is p after all drafts. draft_rows holds drafts.size() rows of q. Returns the tokens
// to append: the accepted drafts, then either the residual sample at the first rejection or, when
// every draft is accepted, a bonus token drawn from the last target row. Always 1..drafts.size()+1.
struct Verification {
  std::vector<std::int32_t> tokens;
  std::int32_t accepted_drafts = 0;
};
Verification verify_drafts(std::span<const float> target_rows, std::span<const float> draft_rows,
                           std::span<const std::int32_t> drafts, std::int64_t vocab_size, Rng& rng);
// The same into `result` (its tokens' capacity reused) with `residual` (vocab_size floats) as
// scratch: no allocation once result.tokens has room for drafts.size() + 1 tokens.
void verify_drafts(std::span<const float> target_rows, std::span<const float> draft_rows,
                   std::span<const std::int32_t> drafts, std::int64_t vocab_size, Rng& rng, std::span<float> residual,
                   Verification& result);

}  // namespace dsv3
