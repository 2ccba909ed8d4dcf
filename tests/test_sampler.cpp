// The sampling pipeline against hand-computed 4- and 5-token examples, a naive full-sort reference
// on a real-size vocabulary, and chi-square tests of the drawn frequencies.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "chi_square.h"
#include "core/error.h"
#include "engine/sampler.h"

namespace dsv3 {
namespace {

std::vector<float> log_of(const std::vector<double>& probabilities) {
  std::vector<float> logits;
  for (const double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

void expect_distribution(const std::vector<float>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(actual[i], 0.0f) << "token " << i;
    } else {
      EXPECT_NEAR(actual[i], expected[i], 1e-6) << "token " << i;
    }
  }
}

std::vector<float> distribution(const std::vector<float>& logits, const SamplingParams& params,
                                const TokenHistory& history = {}) {
  return target_distribution(logits, history, params);
}

void expect_rejected(const SamplingParams& params, std::int64_t vocab_size, const std::string& fragment) {
  try {
    params.validate(vocab_size);
    ADD_FAILURE() << "validate() accepted parameters that should fail with '" << fragment << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
  }
}

TEST(Sampler, ValidateAcceptsDefaultsAndRejectsBadValuesByName) {
  EXPECT_NO_THROW(SamplingParams{}.validate(5));
  const auto with = [](auto change) {
    SamplingParams params;
    change(params);
    return params;
  };
  expect_rejected(with([](auto& p) { p.temperature = -0.5f; }), 5, "temperature");
  expect_rejected(with([](auto& p) { p.temperature = NAN; }), 5, "temperature");
  expect_rejected(with([](auto& p) { p.top_k = -1; }), 5, "top_k");
  expect_rejected(with([](auto& p) { p.top_p = 0.0f; }), 5, "top_p");
  expect_rejected(with([](auto& p) { p.top_p = 1.5f; }), 5, "top_p");
  expect_rejected(with([](auto& p) { p.top_p = NAN; }), 5, "top_p");
  expect_rejected(with([](auto& p) { p.min_p = -0.1f; }), 5, "min_p");
  expect_rejected(with([](auto& p) { p.min_p = 1.1f; }), 5, "min_p");
  expect_rejected(with([](auto& p) { p.repetition_penalty = 0.0f; }), 5, "repetition_penalty");
  expect_rejected(with([](auto& p) { p.presence_penalty = INFINITY; }), 5, "presence_penalty");
  expect_rejected(with([](auto& p) { p.frequency_penalty = NAN; }), 5, "frequency_penalty");
  expect_rejected(with([](auto& p) { p.logit_bias[5] = 1.0f; }), 5, "logit_bias token id 5");
  expect_rejected(with([](auto& p) { p.logit_bias[-1] = 1.0f; }), 5, "logit_bias token id -1");
  expect_rejected(with([](auto& p) { p.logit_bias[2] = NAN; }), 5, "logit_bias for token 2");
  expect_rejected(with([](auto& p) { p.max_tokens = 0; }), 5, "max_tokens");
  expect_rejected(with([](auto& p) { p.stop_token_ids = {7}; }), 5, "stop_token_ids");
  expect_rejected(with([](auto& p) { p.stop = {"ok", ""}; }), 5, "stop string 1");
  expect_rejected(with([](auto& p) { p.logprobs = -1; }), 5, "logprobs");
  expect_rejected(with([](auto& p) { p.logprobs = 6; }), 5, "logprobs");
  expect_rejected(SamplingParams{}, 0, "vocabulary size");
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOncePerToken) {
  std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  SamplingParams params;
  params.repetition_penalty = 2.0f;
  const std::vector<std::int32_t> prompt{0, 1}, output{1, 4, 1};
  apply_penalties(logits, {prompt, output}, params);
  // Tokens 0, 1, 4 were seen (1 three times, penalised once): 2/2, -1*2, -2*2.
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f, -4.0f}));
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountOnlyGeneratedTokens) {
  std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  SamplingParams params;
  params.frequency_penalty = 0.5f;
  params.presence_penalty = 1.0f;
  const std::vector<std::int32_t> prompt{0}, output{3, 3, 2};
  apply_penalties(logits, {prompt, output}, params);
  // Token 3: 3 - (0.5*2 + 1) = 1; token 2: 0.5 - (0.5*1 + 1) = -1; token 0 is only in the prompt.
  EXPECT_EQ(logits, (std::vector<float>{2.0f, -1.0f, -1.0f, 1.0f, -2.0f}));
}

TEST(Sampler, LogitBiasAddsAfterPenalties) {
  std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  SamplingParams params;
  params.repetition_penalty = 2.0f;
  params.logit_bias = {{3, 1.5f}, {4, -0.5f}};
  const std::vector<std::int32_t> output{3};
  apply_penalties(logits, {{}, output}, params);
  EXPECT_EQ(logits, (std::vector<float>{2.0f, -1.0f, 0.5f, 3.0f, -2.5f}));  // 3/2 + 1.5 = 3
}

// What a generating sequence keeps (counts added token by token, drafts tried and taken back)
// penalises exactly as the history it stands for.
TEST(Sampler, PenaltyCountsKeptTokenByTokenMatchTheHistory) {
  SamplingParams params;
  params.repetition_penalty = 1.3f;
  params.presence_penalty = 0.4f;
  params.frequency_penalty = 0.25f;
  const std::vector<std::int32_t> prompt{5, 2, 9, 2, 0};
  std::vector<std::int32_t> output;
  PenaltyCounts counts({prompt, {}}, 12);
  const std::vector<float> logits{0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f, 3.0f, -2.0f, 0.0f, 1.0f, -0.5f, 0.75f};
  for (const std::int32_t token : {3, 9, 3, 11, 0, 3, 7}) {
    output.push_back(token);
    counts.add(token);
    // Two drafts tried on top, then taken back.
    counts.add(4);
    counts.add(token);
    counts.remove(4);
    counts.remove(token);
    std::vector<float> incremental = logits, from_history = logits;
    apply_penalties(incremental, counts, params);
    apply_penalties(from_history, {prompt, output}, params);
    EXPECT_EQ(incremental, from_history) << "after " << output.size() << " tokens";
  }
  EXPECT_EQ(counts.entries().size(), 7u);  // 0 2 3 5 7 9 11
  EXPECT_THROW(counts.remove(4), Error);   // never added
  EXPECT_THROW(counts.remove(2), Error);   // only in the prompt
}

TEST(Sampler, PenaltiesRejectHistoryOutsideTheVocabulary) {
  std::vector<float> logits(5, 0.0f);
  SamplingParams params;
  params.repetition_penalty = 1.5f;
  const std::vector<std::int32_t> prompt{9};
  EXPECT_THROW(apply_penalties(logits, {prompt, {}}, params), Error);
}

TEST(Sampler, GreedyIsTheArgMaxWithTiesToTheLowestIdAndUsesNoRandomness) {
  SamplingParams params;
  params.temperature = 0.0f;
  const std::vector<float> logits{1.0f, 3.0f, 3.0f, 0.0f};
  expect_distribution(distribution(logits, params), {0, 1, 0, 0});
  Rng rng(7);
  const Rng before = rng;
  EXPECT_EQ(sample(logits, {}, params, rng).token, 1);
  EXPECT_EQ(rng, before);
  EXPECT_EQ(argmax(std::vector<float>{-5.0f, -1.0f, -1.0f}), 1);
}

TEST(Sampler, GreedyAppliesPenaltiesFirst) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.frequency_penalty = 2.0f;
  const std::vector<float> logits{1.0f, 3.0f, 2.0f};
  const std::vector<std::int32_t> output{1};
  expect_distribution(distribution(logits, params, {{}, output}), {0, 0, 1});  // 3 - 2 = 1 < 2
}

// Greedy sampling without penalties reads the logits in one pass instead of building the one-hot
// distribution: it must pick what target_distribution's one-hot row holds (the first arg-max, -inf
// entries allowed), reject the same rows, and leave the scratch alone.
TEST(Sampler, GreedySampleTokenIsTheFirstArgMaxAndRejectsWhatTheDistributionRejects) {
  SamplingParams params;
  params.temperature = 0.0f;
  Rng filler(5);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits(4099);
    for (float& logit : logits) logit = static_cast<float>(std::floor(filler.uniform() * 64.0));  // many ties
    for (std::size_t i = 0; i < logits.size(); i += 7) logits[i] = -INFINITY;
    std::size_t first_max = 0;
    for (std::size_t i = 0; i < logits.size(); ++i)
      if (logits[i] > logits[first_max]) first_max = i;
    std::vector<float> scratch(logits.size(), -7.0f);
    Rng rng(trial);
    const Rng before = rng;
    EXPECT_EQ(sample_token(logits, {}, params, rng, scratch), static_cast<std::int32_t>(first_max));
    EXPECT_EQ(rng, before);
    EXPECT_EQ(std::count(scratch.begin(), scratch.end(), -7.0f), static_cast<std::ptrdiff_t>(scratch.size()));
    const std::vector<float> one_hot = distribution(logits, params);
    EXPECT_EQ(one_hot[first_max], 1.0f);
  }
  // Both zeros compare equal: the first of them is the arg-max, whichever its sign.
  for (const float first_zero : {-0.0f, 0.0f}) {
    std::vector<float> logits(1000, -1.0f), scratch(logits.size());
    logits[100] = first_zero;
    logits[700] = -first_zero;
    Rng rng(1);
    EXPECT_EQ(sample_token(logits, {}, params, rng, scratch), 100) << "first zero " << first_zero;
  }
  const auto message = [&](const std::vector<float>& logits) {
    std::vector<float> scratch(logits.size());
    Rng rng(1);
    try {
      sample_token(logits, {}, params, rng, scratch);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message({0.0f, 2.0f, NAN, INFINITY}).find("token 2 is NaN"), std::string::npos);
  EXPECT_NE(message({0.0f, INFINITY, NAN}).find("token 1 is +inf"), std::string::npos);
  EXPECT_NE(message({-INFINITY, -INFINITY}).find("no token has a finite logit"), std::string::npos);
  EXPECT_NE(message({}).find("empty"), std::string::npos);
  std::vector<float> short_scratch(2);
  Rng rng(1);
  EXPECT_THROW(sample_token(std::vector<float>{1.0f, 2.0f, 3.0f}, {}, params, rng, short_scratch), Error);
  // With a bias the scratch holds the one-hot row as before.
  params.logit_bias = {{0, 5.0f}};
  std::vector<float> scratch(3, -7.0f);
  EXPECT_EQ(sample_token(std::vector<float>{1.0f, 3.0f, 2.0f}, {}, params, rng, scratch), 0);
  EXPECT_EQ(scratch, (std::vector<float>{1.0f, 0.0f, 0.0f}));
}

TEST(Sampler, TemperatureScalesLogits) {
  const auto logits = log_of({1, 2, 4});
  SamplingParams params;
  expect_distribution(distribution(logits, params), {1.0 / 7, 2.0 / 7, 4.0 / 7});
  params.temperature = 0.5f;  // weights squared: 1, 4, 16
  expect_distribution(distribution(logits, params), {1.0 / 21, 4.0 / 21, 16.0 / 21});
  params.temperature = 1e-30f;  // tiny but not zero: must not overflow into NaN
  expect_distribution(distribution(logits, params), {0, 0, 1});
}

TEST(Sampler, TopKKeepsTheKLargestAndTheirTies) {
  SamplingParams params;
  params.top_k = 2;
  expect_distribution(distribution(log_of({1, 2, 3, 4, 0.5}), params), {0, 0, 3.0 / 7, 4.0 / 7, 0});
  expect_distribution(distribution(log_of({1, 2, 2, 4}), params), {0, 0.25, 0.25, 0.5});
  params.top_k = 10;  // larger than the vocabulary: no effect
  expect_distribution(distribution(log_of({1, 3}), params), {0.25, 0.75});
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  const auto logits = log_of({0.1, 0.2, 0.3, 0.4});
  SamplingParams params;
  params.top_p = 0.65f;  // 0.4 + 0.3 = 0.7 reaches 0.65
  expect_distribution(distribution(logits, params), {0, 0, 3.0 / 7, 4.0 / 7});
  params.top_p = 0.75f;  // 0.7 falls short, 0.9 reaches it
  expect_distribution(distribution(logits, params), {0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  params.top_p = 0.3f;  // the top token alone reaches it
  expect_distribution(distribution(logits, params), {0, 0, 0, 1});
  params.top_p = 1e-6f;  // always at least one token
  expect_distribution(distribution(logits, params), {0, 0, 0, 1});
}

TEST(Sampler, TopPMeasuresMassAmongTheTopKSurvivors) {
  SamplingParams params;
  params.top_k = 3;
  params.top_p = 0.75f;
  // After top-k: 0.2, 0.3, 0.4 over 0.9 = 0.222, 0.333, 0.444; the top two reach 0.777 >= 0.75.
  expect_distribution(distribution(log_of({0.1, 0.2, 0.3, 0.4}), params), {0, 0, 3.0 / 7, 4.0 / 7});
}

TEST(Sampler, MinPKeepsTokensAtLeastMinPTimesTheMaximum) {
  const auto logits = log_of({0.1, 0.2, 0.3, 0.4});
  SamplingParams params;
  params.min_p = 0.6f;  // threshold 0.24
  expect_distribution(distribution(logits, params), {0, 0, 3.0 / 7, 4.0 / 7});
  params.min_p = 0.45f;  // threshold 0.18
  expect_distribution(distribution(logits, params), {0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  params.min_p = 1.0f;
  expect_distribution(distribution(logits, params), {0, 0, 0, 1});
}

TEST(Sampler, LogitBiasCanForceAToken) {
  SamplingParams params;
  params.logit_bias[0] = 100.0f;
  params.seed = 3;
  const std::vector<float> logits{-2.0f, 5.0f, 4.0f, 3.0f};
  Rng rng = Rng::from_seed_or_entropy(params.seed);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sample(logits, {}, params, rng).token, 0);
  params.logit_bias = {{1, -100.0f}};
  params.temperature = 0.0f;
  EXPECT_EQ(sample(logits, {}, params, rng).token, 2);
}

TEST(Sampler, RejectsNaNAndAllMaskedLogits) {
  SamplingParams params;
  EXPECT_THROW(distribution({0.0f, NAN, 1.0f}, params), Error);
  EXPECT_THROW(distribution({-INFINITY, -INFINITY}, params), Error);
  expect_distribution(distribution({-INFINITY, 0.0f, -INFINITY}, params), {0, 1, 0});
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(1000);
  Rng filler(1);
  for (float& logit : logits) logit = static_cast<float>(filler.uniform());
  SamplingParams params;
  params.top_p = 0.95f;
  const auto run = [&](std::uint64_t seed) {
    Rng rng(seed);
    std::vector<std::int32_t> tokens;
    for (int i = 0; i < 50; ++i) tokens.push_back(sample(logits, {}, params, rng).token);
    return tokens;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, RngCopiesReplayTheSameDraws) {
  Rng rng(123);
  rng.next_u64();
  Rng copy = rng;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(rng.next_u64(), copy.next_u64());
  for (int i = 0; i < 1000; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
  EXPECT_NE(Rng(0).next_u64(), Rng(1).next_u64());
}

TEST(Sampler, DrawNeverPicksZeroWeightsAndRejectsBadWeights) {
  Rng rng(5);
  const std::vector<float> weights{0.0f, 2.0f, 0.0f, 1.0f, 0.0f};
  for (int i = 0; i < 1000; ++i) {
    const auto token = draw(weights, rng);
    ASSERT_TRUE(token == 1 || token == 3) << token;
  }
  EXPECT_THROW(draw(std::vector<float>{0.0f, 0.0f}, rng), Error);
  EXPECT_THROW(draw(std::vector<float>{1.0f, -0.5f}, rng), Error);
  EXPECT_THROW(draw(std::vector<float>{1.0f, NAN}, rng), Error);
}

TEST(Sampler, SampledFrequenciesMatchTheTargetDistribution) {
  const std::vector<double> p{0.05, 0.15, 0.2, 0.25, 0.35};
  const auto logits = log_of(p);
  SamplingParams params;
  Rng rng(2024);
  std::vector<std::int64_t> counts(p.size());
  for (int i = 0; i < 100000; ++i) ++counts[sample(logits, {}, params, rng).token];
  const auto fit = test::chi_square(counts, p);
  EXPECT_TRUE(fit.passes()) << "chi-square " << fit.statistic << " with " << fit.degrees_of_freedom << " dof";
  // The same counts against a distribution 0.02 off in two cells must fail the test.
  const auto wrong = test::chi_square(counts, {0.05, 0.15, 0.2, 0.27, 0.33});
  EXPECT_FALSE(wrong.passes()) << wrong.statistic;
}

TEST(Sampler, FilteredSamplingFrequenciesMatchTheFilteredDistribution) {
  // temperature 0.8, top-k 4, top-p 0.9 and min-p 0.1 together over 6 tokens.
  const auto logits = log_of({0.02, 0.08, 0.1, 0.2, 0.3, 0.3});
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 4;
  params.top_p = 0.9f;
  params.min_p = 0.1f;
  const auto target = distribution(logits, params);
  EXPECT_EQ(target[0], 0.0f);
  EXPECT_EQ(target[1], 0.0f);
  Rng rng(99);
  std::vector<std::int64_t> counts(target.size());
  for (int i = 0; i < 100000; ++i) ++counts[sample(logits, {}, params, rng).token];
  const auto fit = test::chi_square(counts, std::vector<double>(target.begin(), target.end()));
  EXPECT_TRUE(fit.passes()) << "chi-square " << fit.statistic << " with " << fit.degrees_of_freedom << " dof";
}

// The pipeline written the obvious way: full softmax in double, full sort, three filters.
std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplingParams& params) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = std::exp((logits[i] - max) / params.temperature);
  std::vector<std::size_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  std::vector<bool> kept(p.size(), true);
  if (params.top_k > 0)
    for (std::size_t i = 0; i < p.size(); ++i) kept[i] = p[i] >= p[order[params.top_k - 1]];
  double mass = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) mass += kept[i] ? p[i] : 0.0;
  double cumulative = 0.0;
  bool reached = false;
  for (const std::size_t token : order) {
    if (!kept[token]) continue;
    if (reached) kept[token] = false;
    cumulative += p[token];
    reached = reached || cumulative >= params.top_p * mass;
  }
  for (std::size_t i = 0; i < p.size(); ++i) kept[i] = kept[i] && p[i] >= params.min_p * p[order[0]];
  double total = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) total += kept[i] ? p[i] : 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = kept[i] ? p[i] / total : 0.0;
  return p;
}

TEST(Sampler, MatchesAFullSortReferenceOnADeepSeekSizeVocabulary) {
  std::vector<float> logits(129280);
  Rng filler(11);
  for (float& logit : logits) logit = static_cast<float>(12.0 * filler.uniform() - 6.0);
  struct Case {
    float temperature, top_p, min_p;
    std::int32_t top_k;
  };
  for (const Case& c : {Case{1.0f, 0.9f, 0.0f, 0}, Case{0.7f, 0.95f, 0.05f, 50}, Case{1.3f, 0.5f, 0.0f, 1000},
                        Case{0.6f, 1.0f, 0.2f, 0}}) {
    SamplingParams params;
    params.temperature = c.temperature;
    params.top_p = c.top_p;
    params.min_p = c.min_p;
    params.top_k = c.top_k;
    const auto ours = distribution(logits, params);
    const auto reference = reference_distribution(logits, params);
    std::int64_t mismatched_sets = 0;
    double worst = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      mismatched_sets += (ours[i] > 0.0f) != (reference[i] > 0.0);
      worst = std::max(worst, std::abs(ours[i] - reference[i]) / std::max(reference[i], 1e-30));
    }
    EXPECT_EQ(mismatched_sets, 0) << "top_p " << c.top_p << " top_k " << c.top_k;
    EXPECT_LT(worst, 1e-4) << "top_p " << c.top_p << " top_k " << c.top_k;
  }
}

TEST(Sampler, LogprobsComeFromTheRawLogitsMostLikelyFirst) {
  const std::vector<float> logits{1.0f, 2.0f, 3.0f, 0.0f};
  const double normaliser = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + 1.0);
  const auto top = top_logprobs(logits, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].token, 2);
  EXPECT_NEAR(top[0].logprob, 3.0 - normaliser, 1e-6);
  EXPECT_EQ(top[1].token, 1);
  EXPECT_NEAR(top[1].logprob, 2.0 - normaliser, 1e-6);
  EXPECT_EQ(top_logprobs(logits, 10).size(), 4u);
  const auto tied = top_logprobs(std::vector<float>{1.0f, 1.0f, 0.0f, 1.0f}, 2);
  EXPECT_EQ(tied[0].token, 0);
  EXPECT_EQ(tied[1].token, 1);

  // Temperature, penalties and bias change what is drawn, not the reported log-probabilities.
  SamplingParams params;
  params.temperature = 0.0f;
  params.logit_bias[3] = 10.0f;
  params.logprobs = 3;
  Rng rng(1);
  const auto sampled = sample(logits, {}, params, rng);
  EXPECT_EQ(sampled.token, 3);
  EXPECT_NEAR(sampled.logprob, 0.0 - normaliser, 1e-6);
  ASSERT_EQ(sampled.top_logprobs.size(), 3u);
  EXPECT_EQ(sampled.top_logprobs[0].token, 2);
  EXPECT_EQ(sampled.top_logprobs[2].token, 0);
}

}  // namespace
}  // namespace dsv3
