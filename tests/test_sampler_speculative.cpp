// Speculative sampling must emit tokens distributed exactly as the target model's p, whatever the
// draft distribution q: checked by chi-square over many trials, one position and a two-token chain.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "chi_square.h"
#include "core/error.h"
#include "engine/sampler.h"

namespace dsv3 {
namespace {

// A random distribution over `size` tokens with the listed tokens forced to probability zero.
std::vector<float> random_distribution(Rng& rng, std::size_t size, std::vector<std::size_t> zeros = {}) {
  std::vector<float> p(size);
  double total = 0.0;
  for (std::size_t i = 0; i < size; ++i) {
    const bool zero = std::find(zeros.begin(), zeros.end(), i) != zeros.end();
    p[i] = zero ? 0.0f : static_cast<float>(0.2 + rng.uniform());
    total += p[i];
  }
  for (float& value : p) value = static_cast<float>(value / total);
  return p;
}

std::vector<double> as_double(const std::vector<float>& values) { return {values.begin(), values.end()}; }

TEST(Speculative, EmittedTokenIsDistributedAsTheTargetAtOnePosition) {
  Rng make(17);
  // Zeros where p has mass and q has none and the reverse, the cases the residual exists for.
  const std::vector<std::pair<std::vector<std::size_t>, std::vector<std::size_t>>> zero_sets{
      {{5}, {0}}, {{}, {}}, {{1, 2}, {3}}};
  for (const auto& [p_zeros, q_zeros] : zero_sets) {
    const auto p = random_distribution(make, 6, p_zeros);
    const auto q = random_distribution(make, 6, q_zeros);
    Rng rng(1000 + p_zeros.size());
    std::vector<std::int64_t> emitted(6), drafted(6);
    std::int64_t accepted = 0;
    const int trials = 200000;
    for (int t = 0; t < trials; ++t) {
      const std::int32_t draft = draw(q, rng);
      const Acceptance result = speculative_accept(p, q, draft, rng);
      ++emitted[result.token];
      ++drafted[draft];
      accepted += result.accepted;
      if (result.accepted) {
        ASSERT_EQ(result.token, draft);
      }
    }
    const auto fit = test::chi_square(emitted, as_double(p));
    EXPECT_TRUE(fit.passes()) << "chi-square " << fit.statistic << " with " << fit.degrees_of_freedom
                              << " dof, impossible hits " << fit.impossible_hits;
    // The same check rejects the drafts themselves, which follow q, not p.
    EXPECT_FALSE(test::chi_square(drafted, as_double(p)).passes());
    // Theory: the acceptance rate is Σ min(p, q); its standard error here is under 0.0012.
    double expected_rate = 0.0;
    for (std::size_t i = 0; i < p.size(); ++i) expected_rate += std::min(p[i], q[i]);
    EXPECT_NEAR(static_cast<double>(accepted) / trials, expected_rate, 0.006);
  }
}

TEST(Speculative, GreedyTargetAcceptsExactlyTheArgMax) {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<float> logits{0.5f, 1.0f, 4.0f, 2.0f};
  const auto p = target_distribution(logits, {}, greedy);
  Rng make(3);
  for (int round = 0; round < 50; ++round) {
    const auto q = random_distribution(make, 4);
    for (std::int32_t draft = 0; draft < 4; ++draft) {
      Rng rng(round);
      const Rng before = rng;
      const Acceptance result = speculative_accept(p, q, draft, rng);
      EXPECT_EQ(result.accepted, draft == 2);
      EXPECT_EQ(result.token, 2);
      if (draft == 2) {
        EXPECT_EQ(rng, before) << "accepting the arg-max needs no randomness";
      }
    }
  }
}

TEST(Speculative, AcceptanceRejectsInconsistentInputs) {
  Rng rng(1);
  const std::vector<float> p{0.5f, 0.5f}, q{1.0f, 0.0f};
  EXPECT_THROW(speculative_accept(p, q, 1, rng), Error);  // q(x) = 0: x was not drawn from q
  EXPECT_THROW(speculative_accept(p, q, 2, rng), Error);
  EXPECT_THROW(speculative_accept(p, std::vector<float>{1.0f}, 0, rng), Error);
}

TEST(Speculative, VerifyDraftsAppendsTheBonusTokenWhenEveryDraftIsAccepted) {
  // p = q at both drafted positions: always accepted; the bonus row is one-hot at token 1.
  const std::vector<float> rows_p{0.25f, 0.25f, 0.5f, 0.7f, 0.3f, 0.0f, 0.0f, 1.0f, 0.0f};
  const std::vector<float> rows_q{0.25f, 0.25f, 0.5f, 0.7f, 0.3f, 0.0f};
  const std::vector<std::int32_t> drafts{2, 0};
  Rng rng(8);
  const Verification result = verify_drafts(rows_p, rows_q, drafts, 3, rng);
  EXPECT_EQ(result.accepted_drafts, 2);
  EXPECT_EQ(result.tokens, (std::vector<std::int32_t>{2, 0, 1}));

  // A draft the target gives probability zero is rejected; nothing after it is used.
  const std::vector<std::int32_t> bad_first{1, 0};
  const std::vector<float> rows_p_reject{0.0f, 0.0f, 1.0f, 0.7f, 0.3f, 0.0f, 0.0f, 1.0f, 0.0f};
  const Verification rejected = verify_drafts(rows_p_reject, rows_q, bad_first, 3, rng);
  EXPECT_EQ(rejected.accepted_drafts, 0);
  EXPECT_EQ(rejected.tokens, (std::vector<std::int32_t>{2}));

  EXPECT_THROW(verify_drafts(rows_q, rows_q, drafts, 3, rng), Error);  // bonus row missing
}

// Two-token chains over 4 tokens, with p and q at the second position depending on the first token.
// Decoding runs until two tokens are emitted: a round drafts two tokens; if it emits fewer, the
// next round drafts from the new context. The first two tokens must follow p1(a) * p2(b | a).
TEST(Speculative, ChainedVerificationPreservesTheJointDistribution) {
  constexpr std::size_t vocab = 4;
  Rng make(29);
  const auto p1 = random_distribution(make, vocab, {3});
  const auto q1 = random_distribution(make, vocab, {0});
  std::vector<std::vector<float>> p2, q2;
  for (std::size_t a = 0; a < vocab; ++a) {
    p2.push_back(random_distribution(make, vocab, {a}));
    q2.push_back(random_distribution(make, vocab));
  }
  const auto p3 = random_distribution(make, vocab);  // the bonus row; its token is not scored
  const auto concat = [](std::initializer_list<const std::vector<float>*> rows) {
    std::vector<float> out;
    for (const auto* row : rows) out.insert(out.end(), row->begin(), row->end());
    return out;
  };

  Rng rng(4242);
  std::vector<std::int64_t> counts(vocab * vocab);
  std::int64_t bonus_rounds = 0;
  for (int trial = 0; trial < 200000; ++trial) {
    const std::int32_t x1 = draw(q1, rng);
    const std::int32_t x2 = draw(q2[x1], rng);
    const std::vector<std::int32_t> drafts{x1, x2};
    auto tokens = verify_drafts(concat({&p1, &p2[x1], &p3}), concat({&q1, &q2[x1]}), drafts, vocab, rng).tokens;
    bonus_rounds += tokens.size() == 3;
    if (tokens.size() < 2) {
      const std::int32_t a = tokens[0];
      const std::vector<std::int32_t> next_draft{draw(q2[a], rng)};
      const auto more = verify_drafts(concat({&p2[a], &p3}), q2[a], next_draft, vocab, rng).tokens;
      tokens.push_back(more[0]);
    }
    ++counts[tokens[0] * vocab + tokens[1]];
  }
  std::vector<double> joint(vocab * vocab);
  for (std::size_t a = 0; a < vocab; ++a)
    for (std::size_t b = 0; b < vocab; ++b) joint[a * vocab + b] = static_cast<double>(p1[a]) * p2[a][b];
  const auto fit = test::chi_square(counts, joint);
  EXPECT_TRUE(fit.passes()) << "chi-square " << fit.statistic << " with " << fit.degrees_of_freedom
                            << " dof, impossible hits " << fit.impossible_hits;
  EXPECT_GT(bonus_rounds, 0);
}

}  // namespace
}  // namespace dsv3
