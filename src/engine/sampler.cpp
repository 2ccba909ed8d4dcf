#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/error.h"

namespace dsv3 {
namespace {

void check_token(std::int32_t token, std::size_t vocab_size, const char* what) {
  if (token < 0 || static_cast<std::size_t>(token) >= vocab_size)
    fail("sampling: {} token id {} is outside the vocabulary of {} tokens", what, token, vocab_size);
}

// The largest logit; rejects rows the pipeline cannot turn into a distribution.
float checked_max(std::span<const float> logits) {
  float max = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) fail("sampling: logit of token {} is NaN", i);
    if (logits[i] == std::numeric_limits<float>::infinity()) fail("sampling: logit of token {} is +inf", i);
    max = std::max(max, logits[i]);
  }
  if (max == -std::numeric_limits<float>::infinity())
    fail("sampling: no token has a finite logit (all {} are -inf)", logits.size());
  return max;
}

// A float's bits as an integer in the same order as the floats (NaNs beyond the infinities, by
// their sign; both zeros 0, as they compare equal): integer maxima vectorise, float ones
// (comparisons that may trap) do not.
std::int32_t ordered(float value) {
  const auto bits = std::bit_cast<std::int32_t>(value);
  return (bits ^ ((bits >> 31) & 0x7fffffff)) - (bits >> 31);
}
// The float of a key (+0 for 0).
float from_ordered(std::int32_t key) {
  if (key >= 0) return std::bit_cast<float>(key);
  const std::int32_t bits = key - 1;
  return std::bit_cast<float>(bits ^ 0x7fffffff);
}

// One pass over a row's ordered keys: the largest and the smallest, and the first block of kBlock
// that holds the largest. Compiled also for AVX2 and AVX-512 and chosen at load by the CPU
// (target_clones): the portable build's SSE2 has no 32-bit integer max. `bench_row_ops
// --benchmark_filter=GreedyRow` (a 129,280-logit row, 2-vCPU AMD EPYC, 3 runs): 63-72 us with SSE2
// alone, 9.6-9.7 us on AVX-512, so ~1 ms less of a 16-sequence greedy step.
struct KeyScan {
  std::int32_t high = std::numeric_limits<std::int32_t>::min();
  std::int32_t low = std::numeric_limits<std::int32_t>::max();
  std::size_t best_block = 0;
};
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
KeyScan scan_keys(const float* logits, std::size_t size) {
  constexpr std::size_t kBlock = 256;
  KeyScan scan;
  for (std::size_t begin = 0; begin < size; begin += kBlock) {
    const std::size_t end = std::min(begin + kBlock, size);
    std::int32_t block_high = std::numeric_limits<std::int32_t>::min(), low = scan.low;
    for (std::size_t i = begin; i < end; ++i) {
      const std::int32_t key = ordered(logits[i]);
      block_high = std::max(block_high, key);
      low = std::min(low, key);
    }
    scan.low = low;
    if (block_high > scan.high) {
      scan.high = block_high;
      scan.best_block = begin;
    }
  }
  return scan;
}

// The first arg-max of a row, after checked_max's checks: greedy decoding runs it over every
// sequence's row of the vocabulary at every step, where checked_max then argmax took two scalar
// passes, a compare and branch per logit each. One vectorised pass over blocks notes the first
// block that holds the maximum; only that block is searched again.
std::int32_t checked_argmax(std::span<const float> logits) {
  const auto [high, low, best_block] = scan_keys(logits.data(), logits.size());
  constexpr float kInfinity = std::numeric_limits<float>::infinity();
  // +inf or a NaN at the top, a NaN with its sign set at the bottom, or nothing above -inf:
  // checked_max throws for each, naming the first offending token.
  if (high >= ordered(kInfinity) || low < ordered(-kInfinity) || high == ordered(-kInfinity)) checked_max(logits);
  // The first of the maxima (of either zero's sign where the maximum is 0, as argmax has it).
  const float best = from_ordered(high);
  std::size_t i = best_block;
  while (logits[i] != best) ++i;
  return static_cast<std::int32_t>(i);
}

struct Candidate {
  float weight;
  std::int32_t token;
};

// A total order (heavier first, then lower id) so every filter's result is reproducible.
bool heavier(const Candidate& a, const Candidate& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.token < b.token);
}

// The length of the smallest prefix, in `heavier` order, whose weight reaches `target`; leaves that
// prefix at the front. A quickselect on the cumulative weight: each round partitions the undecided
// range around its middle and keeps the half holding the boundary, so the cost is linear however
// large the nucleus is (a sort would be O(n log n) on the flat distributions of high temperatures).
std::size_t nucleus_size(std::span<Candidate> candidates, double target) {
  std::size_t low = 0, high = candidates.size();
  double weight_before_low = 0.0;  // everything in [0, low) is heavier than [low, high) and kept
  while (high - low > 64) {
    const std::size_t middle = low + (high - low) / 2;
    std::nth_element(candidates.begin() + low, candidates.begin() + middle, candidates.begin() + high, heavier);
    double weight = weight_before_low;
    for (std::size_t i = low; i <= middle; ++i) weight += candidates[i].weight;
    if (weight >= target) {
      high = middle + 1;
    } else {
      weight_before_low = weight;
      low = middle + 1;
    }
  }
  std::sort(candidates.begin() + low, candidates.begin() + high, heavier);
  double cumulative = weight_before_low;
  for (std::size_t i = low; i < high; ++i) {
    cumulative += candidates[i].weight;
    if (cumulative >= target) return i + 1;
  }
  return high;
}

// out holds exp((logit - max) / T), so the most likely token has weight exactly 1. Applies top-k,
// top-p and min-p and writes the renormalised survivors back into out.
void filter_and_normalise(const SamplingParams& params, std::span<float> out) {
  thread_local std::vector<Candidate> candidates;
  candidates.clear();
  candidates.reserve(out.size());  // once per thread: later rows never grow it
  for (std::size_t i = 0; i < out.size(); ++i)
    if (out[i] > 0.0f) candidates.push_back({out[i], static_cast<std::int32_t>(i)});
  std::size_t kept = candidates.size();

  if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < kept) {
    const auto k = static_cast<std::size_t>(params.top_k);
    std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(), heavier);
    // Tokens tied with the k-th weight stay, as in Hugging Face and vLLM (`logits < kth` is masked).
    const float kth = candidates[k - 1].weight;
    kept = std::partition(candidates.begin() + k, candidates.end(), [&](const Candidate& c) { return c.weight >= kth; }) -
           candidates.begin();
  }
  // top-p measures mass against the top-k survivors; min-p is relative to the maximum, so it is the
  // same whichever comes first, and applying it before the nucleus search shrinks what is searched.
  double top_k_mass = 0.0;
  for (std::size_t i = 0; i < kept; ++i) top_k_mass += candidates[i].weight;
  if (params.min_p > 0.0f) {
    kept = std::partition(candidates.begin(), candidates.begin() + kept,
                          [&](const Candidate& c) { return c.weight >= params.min_p; }) -
           candidates.begin();
  }
  if (params.top_p < 1.0f)
    kept = nucleus_size(std::span(candidates).first(kept), static_cast<double>(params.top_p) * top_k_mass);

  double kept_mass = 0.0;
  for (std::size_t i = 0; i < kept; ++i) kept_mass += candidates[i].weight;
  std::fill(out.begin(), out.end(), 0.0f);
  for (std::size_t i = 0; i < kept; ++i)
    out[candidates[i].token] = static_cast<float>(candidates[i].weight / kept_mass);
}

double log_sum_exp(std::span<const float> logits) {
  const float max = checked_max(logits);
  double sum = 0.0;
  for (const float logit : logits) sum += std::exp(static_cast<double>(logit) - max);
  return max + std::log(sum);
}

}  // namespace

void SamplingParams::validate(std::int64_t vocab_size) const {
  if (vocab_size <= 0) fail("sampling: vocabulary size must be positive, got {}", vocab_size);
  if (!std::isfinite(temperature) || temperature < 0.0f)
    fail("sampling: temperature must be finite and >= 0 (0 = greedy), got {}", temperature);
  if (top_k < 0) fail("sampling: top_k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("sampling: top_p must be in (0, 1] (1 = off), got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("sampling: min_p must be in [0, 1] (0 = off), got {}", min_p);
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f)
    fail("sampling: repetition_penalty must be finite and > 0 (1 = off), got {}", repetition_penalty);
  if (!std::isfinite(presence_penalty)) fail("sampling: presence_penalty must be finite, got {}", presence_penalty);
  if (!std::isfinite(frequency_penalty)) fail("sampling: frequency_penalty must be finite, got {}", frequency_penalty);
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0 || token >= vocab_size)
      fail("sampling: logit_bias token id {} is outside the vocabulary of {} tokens", token, vocab_size);
    if (!std::isfinite(bias)) fail("sampling: logit_bias for token {} must be finite, got {}", token, bias);
  }
  if (max_tokens && *max_tokens < 1) fail("sampling: max_tokens must be >= 1, got {}", *max_tokens);
  for (const std::int32_t token : stop_token_ids)
    if (token < 0 || token >= vocab_size)
      fail("sampling: stop_token_ids entry {} is outside the vocabulary of {} tokens", token, vocab_size);
  for (std::size_t i = 0; i < stop.size(); ++i)
    if (stop[i].empty()) fail("sampling: stop string {} is empty", i);
  if (logprobs < 0 || logprobs > vocab_size)
    fail("sampling: logprobs must be in [0, {}] (0 = off), got {}", vocab_size, logprobs);
}

PenaltyCounts::PenaltyCounts(const TokenHistory& history, std::size_t capacity) {
  entries_.reserve(std::max(capacity, history.prompt.size() + history.output.size()));
  for (const std::int32_t token : history.prompt) entries_.push_back({token, 0, true});
  for (const std::int32_t token : history.output) entries_.push_back({token, 1, false});
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.token < b.token; });
  // Merge each token's entries into its first.
  std::size_t kept = 0;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    if (kept > 0 && entries_[kept - 1].token == entries_[i].token) {
      entries_[kept - 1].output_count += entries_[i].output_count;
      entries_[kept - 1].in_prompt = entries_[kept - 1].in_prompt || entries_[i].in_prompt;
    } else {
      entries_[kept++] = entries_[i];
    }
  }
  entries_.resize(kept);
}

void PenaltyCounts::add(std::int32_t token) {
  const auto it = std::lower_bound(entries_.begin(), entries_.end(), token,
                                   [](const Entry& entry, std::int32_t t) { return entry.token < t; });
  if (it != entries_.end() && it->token == token) {
    ++it->output_count;
  } else {
    entries_.insert(it, {token, 1, false});
  }
}

void PenaltyCounts::remove(std::int32_t token) {
  const auto it = std::lower_bound(entries_.begin(), entries_.end(), token,
                                   [](const Entry& entry, std::int32_t t) { return entry.token < t; });
  if (it == entries_.end() || it->token != token || it->output_count == 0)
    fail("sampling: token {} is taken back from the penalty counts but was never added", token);
  if (--it->output_count == 0 && !it->in_prompt) entries_.erase(it);
}

bool uses_history(const SamplingParams& params) {
  return params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f;
}

bool plain_argmax(const SamplingParams& params) {
  return params.greedy() && !uses_history(params) && params.logit_bias.empty();
}

void apply_penalties(std::span<float> logits, const PenaltyCounts& counts, const SamplingParams& params) {
  if (params.repetition_penalty != 1.0f) {
    for (const PenaltyCounts::Entry& entry : counts.entries()) {
      check_token(entry.token, logits.size(), "history");
      // CTRL (Keskar et al. 2019) as Hugging Face applies it: dividing a negative logit would
      // make the token more likely, so negative logits are multiplied instead.
      float& logit = logits[entry.token];
      logit = logit > 0.0f ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (const PenaltyCounts::Entry& entry : counts.entries()) {
      if (entry.output_count == 0) continue;
      check_token(entry.token, logits.size(), "output");
      const auto count = static_cast<float>(entry.output_count);
      logits[entry.token] -= params.frequency_penalty * count + params.presence_penalty;
    }
  }
  for (const auto& [token, bias] : params.logit_bias) {
    check_token(token, logits.size(), "logit_bias");
    logits[token] += bias;
  }
}

void apply_penalties(std::span<float> logits, const TokenHistory& history, const SamplingParams& params) {
  apply_penalties(logits, uses_history(params) ? PenaltyCounts(history) : PenaltyCounts(), params);
}

std::int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) fail("sampling: argmax of an empty row");
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<std::int32_t>(best);
}

void target_distribution(std::span<const float> logits, const PenaltyCounts& counts, const SamplingParams& params,
                         std::span<float> out) {
  if (logits.empty()) fail("sampling: empty logits row");
  if (out.size() != logits.size())
    fail("sampling: output row has {} entries, the logits row {}", out.size(), logits.size());
  std::copy(logits.begin(), logits.end(), out.begin());
  apply_penalties(out, counts, params);
  if (params.greedy()) {
    const std::int32_t best = checked_argmax(out);
    std::fill(out.begin(), out.end(), 0.0f);
    out[best] = 1.0f;
    return;
  }
  const float max = checked_max(out);
  // Subtracting the maximum before dividing keeps tiny temperatures from overflowing.
  for (float& value : out) value = std::exp((value - max) / params.temperature);
  const bool filtered = (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < out.size()) ||
                        params.top_p < 1.0f || params.min_p > 0.0f;
  if (filtered) {
    filter_and_normalise(params, out);
    return;
  }
  double total = 0.0;
  for (const float value : out) total += value;
  for (float& value : out) value = static_cast<float>(value / total);
}

void target_distribution(std::span<const float> logits, const TokenHistory& history, const SamplingParams& params,
                         std::span<float> out) {
  target_distribution(logits, uses_history(params) ? PenaltyCounts(history) : PenaltyCounts(), params, out);
}

std::vector<float> target_distribution(std::span<const float> logits, const TokenHistory& history,
                                       const SamplingParams& params) {
  std::vector<float> out(logits.size());
  target_distribution(logits, history, params, out);
  return out;
}

std::int32_t draw(std::span<const float> distribution, Rng& rng) {
  double total = 0.0;
  for (std::size_t i = 0; i < distribution.size(); ++i) {
    if (!(distribution[i] >= 0.0f) || std::isinf(distribution[i]))
      fail("sampling: weight of token {} is {}, expected a finite value >= 0", i, distribution[i]);
    total += distribution[i];
  }
  if (!(total > 0.0)) fail("sampling: cannot draw from a distribution of {} zero weights", distribution.size());
  const double target = rng.uniform() * total;
  double cumulative = 0.0;
  std::int32_t last_positive = -1;
  for (std::size_t i = 0; i < distribution.size(); ++i) {
    if (distribution[i] == 0.0f) continue;
    cumulative += distribution[i];
    last_positive = static_cast<std::int32_t>(i);
    if (target < cumulative) return last_positive;
  }
  // Only reachable when rounding leaves the running sum a hair below the total.
  return last_positive;
}

std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, std::int32_t count) {
  std::vector<TokenLogprob> best;
  top_logprobs(logits, count, best);
  return best;
}

void top_logprobs(std::span<const float> logits, std::int32_t count, std::vector<TokenLogprob>& best) {
  if (count < 0) fail("sampling: top_logprobs count must be >= 0, got {}", count);
  best.clear();
  const auto wanted = std::min<std::size_t>(static_cast<std::size_t>(count), logits.size());
  if (wanted == 0) return;
  const double normaliser = log_sum_exp(logits);
  // A heap of the best `wanted` seen so far, worst on top: one pass, no copy of the row.
  const auto better = [](const TokenLogprob& a, const TokenLogprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
  };
  best.reserve(wanted);
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const TokenLogprob entry{static_cast<std::int32_t>(i), logits[i]};
    if (best.size() < wanted) {
      best.push_back(entry);
      std::push_heap(best.begin(), best.end(), better);
    } else if (better(entry, best.front())) {
      std::pop_heap(best.begin(), best.end(), better);
      best.back() = entry;
      std::push_heap(best.begin(), best.end(), better);
    }
  }
  std::sort_heap(best.begin(), best.end(), better);
  for (auto& entry : best) entry.logprob = static_cast<float>(entry.logprob - normaliser);
}

float token_logprob(std::span<const float> logits, std::int32_t token) {
  check_token(token, logits.size(), "logprob");
  return static_cast<float>(logits[token] - log_sum_exp(logits));
}

std::int32_t sample_token(std::span<const float> logits, const PenaltyCounts& counts, const SamplingParams& params,
                          Rng& rng, std::span<float> scratch) {
  if (plain_argmax(params)) {
    // The arg-max of the logits themselves: target_distribution's one-hot row without writing it.
    if (logits.empty()) fail("sampling: empty logits row");
    if (scratch.size() != logits.size())
      fail("sampling: output row has {} entries, the logits row {}", scratch.size(), logits.size());
    return checked_argmax(logits);
  }
  target_distribution(logits, counts, params, scratch);
  return params.greedy() ? argmax(scratch) : draw(scratch, rng);
}

SampledToken sample(std::span<const float> logits, const TokenHistory& history, const SamplingParams& params,
                    Rng& rng) {
  thread_local std::vector<float> distribution;
  distribution.resize(logits.size());
  SampledToken result;
  result.token = sample_token(logits, uses_history(params) ? PenaltyCounts(history) : PenaltyCounts(), params, rng,
                              distribution);
  result.logprob = token_logprob(logits, result.token);
  if (params.logprobs > 0) result.top_logprobs = top_logprobs(logits, params.logprobs);
  return result;
}

}  // namespace dsv3
