#include <algorithm>
#include <vector>

#include "core/error.h"
#include "engine/sampler.h"

namespace dsv3 {

Acceptance speculative_accept(std::span<const float> target, std::span<const float> draft_distribution,
                              std::int32_t draft, Rng& rng) {
  thread_local std::vector<float> residual;
  residual.resize(target.size());
  return speculative_accept(target, draft_distribution, draft, rng, residual);
}

Acceptance speculative_accept(std::span<const float> target, std::span<const float> draft_distribution,
                              std::int32_t draft, Rng& rng, std::span<float> residual) {
  if (target.size() != draft_distribution.size())
    fail("speculative_accept: target distribution has {} entries, draft distribution {}", target.size(),
         draft_distribution.size());
  if (draft < 0 || static_cast<std::size_t>(draft) >= target.size())
    fail("speculative_accept: draft token {} is outside the vocabulary of {} tokens", draft, target.size());
  const double p = target[draft];
  const double q = draft_distribution[draft];
  if (!(q > 0.0))
    fail("speculative_accept: draft token {} has probability {} under the draft distribution, so it was not "
         "drawn from it",
         draft, q);
  // A ratio of at least 1 accepts for certain; skipping the uniform keeps greedy verification
  // free of randomness.
  if (p >= q || rng.uniform() < p / q) return {true, draft};

  if (residual.size() < target.size())
    fail("speculative_accept: a residual buffer of {} entries for {} tokens", residual.size(), target.size());
  residual = residual.first(target.size());
  double residual_mass = 0.0;
  for (std::size_t i = 0; i < target.size(); ++i) {
    residual[i] = std::max(0.0f, target[i] - draft_distribution[i]);
    residual_mass += residual[i];
  }
  // With p == q the draft is always accepted; an empty residual can only come from rounding when
  // p and q differ by a few ulps, and then p itself is the right fallback.
  if (!(residual_mass > 0.0)) return {false, draw(target, rng)};
  return {false, draw(residual, rng)};
}

Verification verify_drafts(std::span<const float> target_rows, std::span<const float> draft_rows,
                           std::span<const std::int32_t> drafts, std::int64_t vocab_size, Rng& rng) {
  thread_local std::vector<float> residual;
  residual.resize(static_cast<std::size_t>(std::max<std::int64_t>(vocab_size, 0)));
  Verification result;
  verify_drafts(target_rows, draft_rows, drafts, vocab_size, rng, residual, result);
  return result;
}

void verify_drafts(std::span<const float> target_rows, std::span<const float> draft_rows,
                   std::span<const std::int32_t> drafts, std::int64_t vocab_size, Rng& rng, std::span<float> residual,
                   Verification& result) {
  if (vocab_size <= 0) fail("verify_drafts: vocabulary size must be positive, got {}", vocab_size);
  const auto vocab = static_cast<std::size_t>(vocab_size);
  if (target_rows.size() != (drafts.size() + 1) * vocab)
    fail("verify_drafts: expected {} target rows of {} (one per draft plus the bonus row), got {} values",
         drafts.size() + 1, vocab, target_rows.size());
  if (draft_rows.size() != drafts.size() * vocab)
    fail("verify_drafts: expected {} draft rows of {}, got {} values", drafts.size(), vocab, draft_rows.size());
  result.tokens.clear();
  result.accepted_drafts = 0;
  for (std::size_t i = 0; i < drafts.size(); ++i) {
    const Acceptance step = speculative_accept(target_rows.subspan(i * vocab, vocab),
                                               draft_rows.subspan(i * vocab, vocab), drafts[i], rng, residual);
    result.tokens.push_back(step.token);
    if (!step.accepted) return;
    ++result.accepted_drafts;
  }
  result.tokens.push_back(draw(target_rows.subspan(drafts.size() * vocab, vocab), rng));
}

}  // namespace dsv3
