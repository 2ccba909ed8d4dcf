#include "engine/engine.h"

#include <algorithm>

#include "core/error.h"

namespace dsv3 {

struct Engine::Sequence {
  SequenceId id = 0;
  SamplingParams params;
  Rng rng{0};
  std::vector<std::int32_t> prompt, output;
  LatentCache::Table table;
  std::int64_t main_cached = 0;   // positions whose latents the main layers have cached
  std::int64_t mtp_cached = 0;    // MTP rows cached (row p: h[p] with token p + 1)
  std::vector<float> mtp_hidden;  // main final hidden states at positions [mtp_cached, main_cached)
  bool finished = false;

  std::int64_t length() const { return static_cast<std::int64_t>(prompt.size() + output.size()); }
  std::int32_t token(std::int64_t position) const {
    const auto p = static_cast<std::size_t>(position);
    return p < prompt.size() ? prompt[p] : output[p - prompt.size()];
  }
};

// What MTP drafted for one decoding sequence this step.
struct Engine::Drafts {
  std::vector<std::int32_t> tokens;
  std::vector<float> distributions;  // [k, vocab]: q, what each draft was drawn from
};

Engine::Engine(const Model& model, EngineOptions options)
    : model_(model),
      options_(options),
      cache_(model.config(),
             {.capacity_tokens = options.cache_tokens, .dtype = options.cache_dtype, .block_tokens = options.block_tokens},
             model.backend()),
      workspace_(model.backend()) {
  if (options_.prefill_chunk <= 0) fail("prefill chunk must be positive");
  if (options_.mtp_drafts < 0) fail("--mtp must be 0 or more draft tokens");
  if (options_.mtp_drafts > 0 && model.weights().mtp.empty())
    fail("MTP speculative decoding needs an MTP module, and this model has none (num_nextn_predict_layers = 0)");
  speculation_.drafted.assign(static_cast<std::size_t>(options_.mtp_drafts), 0);
  speculation_.accepted.assign(static_cast<std::size_t>(options_.mtp_drafts), 0);
}

Engine::~Engine() = default;

SequenceId Engine::add(std::vector<std::int32_t> prompt, const SamplingParams& params) {
  const ModelConfig& c = model_.config();
  params.validate(c.vocab_size);
  if (prompt.empty()) fail("the prompt is empty");
  for (std::size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= c.vocab_size)
      fail("prompt token {} at position {} is outside the vocabulary [0, {})", prompt[i], i, c.vocab_size);
  const std::int64_t limit = c.max_position_embeddings;
  const std::int64_t wanted = static_cast<std::int64_t>(prompt.size()) + params.max_tokens.value_or(1);
  if (wanted > limit)
    fail("the prompt has {} tokens and up to {} more are asked for, beyond the model's {} positions",
         prompt.size(), params.max_tokens.value_or(1), limit);
  auto sequence = std::make_unique<Sequence>();
  sequence->id = next_id_++;
  sequence->params = params;
  sequence->rng = Rng::from_seed_or_entropy(params.seed);
  sequence->prompt = std::move(prompt);
  const SequenceId id = sequence->id;
  sequences_.emplace(id, std::move(sequence));
  return id;
}

void Engine::finish(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  cache_.release(it->second->table);
  sequences_.erase(it);
}

bool Engine::has_work() const {
  return std::any_of(sequences_.begin(), sequences_.end(), [](const auto& entry) { return !entry.second->finished; });
}

void Engine::emit(Sequence& sequence, SampledToken token, std::vector<TokenEvent>& events) {
  if (sequence.finished) return;
  const ModelConfig& c = model_.config();
  sequence.output.push_back(token.token);
  TokenEvent event{sequence.id, std::move(token)};
  const auto& stops = sequence.params.stop_token_ids;
  const bool is_eos =
      std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), event.sampled.token) != c.eos_token_ids.end();
  const bool is_stop = std::find(stops.begin(), stops.end(), event.sampled.token) != stops.end() ||
                       (is_eos && !sequence.params.ignore_eos);
  if (is_stop) {
    event.reason = FinishReason::stop_token;
  } else if (sequence.params.max_tokens && static_cast<std::int64_t>(sequence.output.size()) >= *sequence.params.max_tokens) {
    event.reason = FinishReason::max_tokens;
  } else if (sequence.length() >= c.max_position_embeddings) {
    event.reason = FinishReason::max_tokens;
  }
  event.finished = event.reason != FinishReason::none;
  sequence.finished = event.finished;
  events.push_back(std::move(event));
}

// MTP drafting for every decoding sequence: first the rows the MTP module has not yet seen (main
// hidden states of the last accepted tokens), whose last row drafts token N; then k - 1 more rows
// that chain on the module's own output to draft tokens N + 1 ...
void Engine::draft(std::vector<Sequence*>& decoding, std::vector<Drafts>& drafts) {
  const std::int64_t vocab = model_.config().vocab_size, hidden = model_.config().hidden_size;
  const std::int64_t k = options_.mtp_drafts;
  drafts.assign(decoding.size(), {});
  std::vector<std::vector<std::int64_t>> next_tokens(decoding.size());
  std::vector<MtpSegment> segments;
  for (std::size_t s = 0; s < decoding.size(); ++s) {
    Sequence& seq = *decoding[s];
    for (std::int64_t p = seq.mtp_cached; p < seq.main_cached; ++p) next_tokens[s].push_back(seq.token(p + 1));
    segments.push_back({&seq.table, seq.mtp_cached, seq.mtp_hidden, next_tokens[s], false});
  }
  StepOutput out = model_.mtp_step(segments, cache_, workspace_);
  std::vector<float> chained(decoding.size() * static_cast<std::size_t>(hidden));
  for (std::int64_t i = 0;; ++i) {
    std::int64_t row_end = 0;
    for (std::size_t s = 0; s < decoding.size(); ++s) {
      Sequence& seq = *decoding[s];
      Drafts& d = drafts[s];
      const std::span<const float> logits(out.logits.data + out.logit_offsets[s] * vocab, static_cast<std::size_t>(vocab));
      std::vector<std::int32_t> history(seq.output);
      history.insert(history.end(), d.tokens.begin(), d.tokens.end());
      const std::vector<float> q = target_distribution(logits, {seq.prompt, history}, seq.params);
      d.tokens.push_back(draw(q, seq.rng));
      d.distributions.insert(d.distributions.end(), q.begin(), q.end());
      row_end += static_cast<std::int64_t>(segments[s].next_tokens.size());
      std::copy_n(out.hidden.data + (row_end - 1) * hidden, hidden, chained.data() + s * hidden);
      if (i == 0) {
        seq.mtp_cached = seq.main_cached;
        seq.mtp_hidden.clear();
      }
    }
    if (i + 1 == k) return;
    // Row p = N - 2 + i + 1 approximates the unknown main hidden state h[p] by the MTP output of
    // row p - 1; these rows are overwritten once the main model has verified the drafts.
    segments.clear();
    for (std::size_t s = 0; s < decoding.size(); ++s) {
      next_tokens[s] = {drafts[s].tokens.back()};
      segments.push_back({&decoding[s]->table, decoding[s]->main_cached + i,
                          std::span<const float>(chained.data() + s * hidden, static_cast<std::size_t>(hidden)),
                          next_tokens[s], false});
    }
    out = model_.mtp_step(segments, cache_, workspace_);
  }
}

std::vector<TokenEvent> Engine::step() {
  const std::int64_t vocab = model_.config().vocab_size, hidden = model_.config().hidden_size;
  const bool speculate = options_.mtp_drafts > 0;
  const std::int64_t k = options_.mtp_drafts;
  std::vector<Sequence*> prefilling, decoding;
  for (auto& [id, seq] : sequences_) {
    if (seq->finished) continue;
    (seq->main_cached < static_cast<std::int64_t>(seq->prompt.size()) ? prefilling : decoding).push_back(seq.get());
  }
  // Pages first, so a full cache fails the step before anything changes.
  for (Sequence* seq : prefilling)
    cache_.reserve(seq->table, std::min<std::int64_t>(seq->prompt.size(), seq->main_cached + options_.prefill_chunk));
  for (Sequence* seq : decoding) cache_.reserve(seq->table, seq->length() + k);

  std::vector<Drafts> drafts;
  if (speculate && !decoding.empty()) draft(decoding, drafts);

  // One main-model step: prefill chunks, then each decoding sequence's pending token and drafts.
  std::vector<std::vector<std::int64_t>> tokens;
  std::vector<StepSegment> segments;
  for (Sequence* seq : prefilling) {
    const std::int64_t end = std::min<std::int64_t>(seq->prompt.size(), seq->main_cached + options_.prefill_chunk);
    tokens.emplace_back(seq->prompt.begin() + seq->main_cached, seq->prompt.begin() + end);
  }
  for (std::size_t s = 0; s < decoding.size(); ++s) {
    std::vector<std::int64_t> run{decoding[s]->token(decoding[s]->length() - 1)};
    if (speculate) run.insert(run.end(), drafts[s].tokens.begin(), drafts[s].tokens.end());
    tokens.push_back(std::move(run));
  }
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    Sequence* seq = s < prefilling.size() ? prefilling[s] : decoding[s - prefilling.size()];
    segments.push_back({&seq->table, seq->main_cached, tokens[s], s >= prefilling.size() && speculate});
  }
  std::vector<TokenEvent> events;
  if (segments.empty()) return events;
  const StepOutput out = model_.step(segments, cache_, workspace_);

  std::int64_t row = 0;  // first hidden row of the current segment
  for (std::size_t s = 0; s < segments.size(); ++s) {
    const auto count = static_cast<std::int64_t>(tokens[s].size());
    const float* logits = out.logits.data + out.logit_offsets[s] * vocab;
    const float* hidden_rows = out.hidden.data + row * hidden;
    row += count;
    if (s < prefilling.size()) {
      Sequence& seq = *prefilling[s];
      seq.main_cached += count;
      if (speculate) seq.mtp_hidden.insert(seq.mtp_hidden.end(), hidden_rows, hidden_rows + count * hidden);
      if (seq.main_cached == static_cast<std::int64_t>(seq.prompt.size()))
        emit(seq, sample({logits, static_cast<std::size_t>(vocab)}, {seq.prompt, seq.output}, seq.params, seq.rng), events);
      continue;
    }
    Sequence& seq = *decoding[s - prefilling.size()];
    if (!speculate) {
      seq.main_cached += 1;
      emit(seq, sample({logits, static_cast<std::size_t>(vocab)}, {seq.prompt, seq.output}, seq.params, seq.rng), events);
      continue;
    }
    // Verify: row i is the target distribution after the pending token and drafts [0, i).
    const Drafts& d = drafts[s - prefilling.size()];
    std::vector<float> targets(static_cast<std::size_t>((k + 1) * vocab));
    std::vector<std::int32_t> history(seq.output);
    for (std::int64_t i = 0; i <= k; ++i) {
      target_distribution({logits + i * vocab, static_cast<std::size_t>(vocab)}, {seq.prompt, history}, seq.params,
                          {targets.data() + i * vocab, static_cast<std::size_t>(vocab)});
      if (i < k) history.push_back(d.tokens[i]);
    }
    const Verification verified = verify_drafts(targets, d.distributions, d.tokens, vocab, seq.rng);
    for (std::int64_t i = 0; i < k; ++i) {
      speculation_.drafted[i] += 1;
      if (i < verified.accepted_drafts) speculation_.accepted[i] += 1;
    }
    const std::int64_t accepted = verified.accepted_drafts;
    seq.mtp_hidden.assign(hidden_rows, hidden_rows + (accepted + 1) * hidden);  // positions N-1 .. N-1+accepted
    seq.main_cached += accepted + 1;
    for (std::size_t i = 0; i < verified.tokens.size(); ++i) {
      const std::span<const float> row_logits(logits + i * vocab, static_cast<std::size_t>(vocab));
      SampledToken token{verified.tokens[i], token_logprob(row_logits, verified.tokens[i]),
                         seq.params.logprobs > 0 ? top_logprobs(row_logits, seq.params.logprobs)
                                                 : std::vector<TokenLogprob>{}};
      emit(seq, std::move(token), events);
    }
  }
  // Return pages nobody needs any more: rejected drafts' rows past the next step's start, and
  // everything of the sequences that ended (their events carry all that is left of them).
  for (Sequence* seq : decoding) cache_.truncate(seq->table, seq->length());
  std::erase_if(sequences_, [this](auto& entry) {
    if (!entry.second->finished) return false;
    cache_.release(entry.second->table);
    return true;
  });
  return events;
}

}  // namespace dsv3
