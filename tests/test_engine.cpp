// The generation engine: greedy continuation against the fixture, with and without MTP speculative
// decoding and with either cache dtype; batching; speculative sampling keeps the distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "chi_square.h"
#include "engine/engine.h"
#include "fast_arithmetic.h"
#include "kernels/cpu/ops.h"
#include "support.h"

namespace dsv3 {
namespace {

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

std::vector<std::int32_t> to_int32(const std::vector<std::int64_t>& values) {
  return {values.begin(), values.end()};
}

// Runs every queued sequence to completion; returns each one's tokens in the order added.
std::vector<std::vector<std::int32_t>> run_all(Engine& engine, std::int64_t sequences) {
  std::map<SequenceId, std::vector<std::int32_t>> outputs;
  while (engine.has_work())
    for (const TokenEvent& event : engine.step()) outputs[event.sequence].push_back(event.sampled.token);
  std::vector<std::vector<std::int32_t>> ordered;
  for (auto& [id, tokens] : outputs) ordered.push_back(std::move(tokens));
  EXPECT_EQ(static_cast<std::int64_t>(ordered.size()), sequences);
  return ordered;
}

struct GreedyCase {
  DType cache;
  std::int64_t mtp;
};

TEST(Engine, GreedyContinuationMatchesTheFixtureWithAndWithoutMtpAndForBothCacheDtypes) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto prompt = to_int32(test::read_i64(reference->tensors().at("gen_prompt")));
  const auto expected = to_int32(test::read_i64(reference->tensors().at("gen_tokens")));
  const auto margins = test::read_f32(reference->tensors().at("gen_margin"));
  std::size_t comparable = 0;  // up to the first step whose top-1/top-2 margin may flip in float32
  while (comparable < margins.size() && margins[comparable] >= 1e-2f) ++comparable;
  ASSERT_GE(comparable, 10u);

  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 40;
  std::vector<std::int32_t> without_mtp;
  for (const GreedyCase& c : {GreedyCase{DType::F32, 0}, GreedyCase{DType::BF16, 0}, GreedyCase{DType::F32, 1},
                              GreedyCase{DType::BF16, 1}, GreedyCase{DType::F32, 3}}) {
    SCOPED_TRACE(fmt::format("cache {}, mtp {}", dtype_name(c.cache), c.mtp));
    Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = c.cache, .block_tokens = 16, .mtp_drafts = c.mtp});
    engine.add(prompt, greedy);
    const auto tokens = run_all(engine, 1).at(0);
    ASSERT_EQ(tokens.size(), 40u);
    EXPECT_EQ(std::vector(tokens.begin(), tokens.begin() + comparable),
              std::vector(expected.begin(), expected.begin() + comparable));
    // Speculation is lossless: greedy output equals the non-speculative output token for token.
    if (c.cache == DType::F32 && c.mtp == 0) without_mtp = tokens;
    if (c.cache == DType::F32 && c.mtp > 0) {
      EXPECT_EQ(tokens, without_mtp);
    }
    if (c.mtp > 0) {
      const auto& stats = engine.speculation();
      EXPECT_GT(stats.drafted.at(0), 0);
      std::printf("cache %s, mtp %lld: first-draft acceptance %.2f over %lld drafts\n",
                  std::string(dtype_name(c.cache)).c_str(), static_cast<long long>(c.mtp), stats.acceptance(0),
                  static_cast<long long>(stats.drafted[0]));
    }
  }
}

// Three prompts of 3, 80 and 17 tokens from the fixture's longest sequence, for the batching tests.
std::vector<std::vector<std::int32_t>> batch_prompts() {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto long_ids = to_int32(test::read_i64(reference->tensors().at("input_ids_3")));
  return {{long_ids.begin(), long_ids.begin() + 3},
          {long_ids.begin() + 10, long_ids.begin() + 90},
          {long_ids.begin() + 100, long_ids.begin() + 117}};
}

SamplingParams greedy_12_tokens() {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 12;
  return greedy;
}

// The same in fast mode with BF16 products over a BF16 cache (the default on AMD's AVX512-BF16
// CPUs): below the GEMM's 64 rows every linear and the latent attention round their activations
// to BF16 for dot products whose sums keep their order whatever the batch, so a sequence's tokens
// are bitwise those it gets alone, and MTP's verification rows (2 or 3 a sequence) leave greedy
// output as it is without drafts. Every step stays under 64 rows: prefills go 16 tokens at a time.
TEST(Engine, FastBf16BatchedSequencesGiveTheSameGreedyTokensAsAloneAndWithoutDrafts) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  const std::vector<std::vector<std::int32_t>> prompts = batch_prompts();
  const SamplingParams greedy = greedy_12_tokens();
  std::vector<std::vector<std::int32_t>> without_drafts;
  for (std::int64_t mtp : {0, 2}) {
    std::vector<std::vector<std::int32_t>> alone;
    for (const auto& prompt : prompts) {
      Engine engine(tiny_model(),
                    {.cache_tokens = 256, .cache_dtype = DType::BF16, .prefill_chunk = 16, .mtp_drafts = mtp});
      engine.add(prompt, greedy);
      alone.push_back(run_all(engine, 1).at(0));
    }
    Engine engine(tiny_model(), {.cache_tokens = 512, .cache_dtype = DType::BF16, .prefill_chunk = 16, .mtp_drafts = mtp});
    for (const auto& prompt : prompts) engine.add(prompt, greedy);
    EXPECT_EQ(run_all(engine, 3), alone) << "mtp " << mtp;
    if (mtp == 0) without_drafts = alone;
    EXPECT_EQ(alone, without_drafts) << "mtp " << mtp;
  }
}

TEST(Engine, BatchedSequencesGiveTheSameGreedyTokensAsAlone) {
  const std::vector<std::vector<std::int32_t>> prompts = batch_prompts();
  const SamplingParams greedy = greedy_12_tokens();
  for (std::int64_t mtp : {0, 2}) {
    std::vector<std::vector<std::int32_t>> alone;
    for (const auto& prompt : prompts) {
      Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = DType::F32, .mtp_drafts = mtp});
      engine.add(prompt, greedy);
      alone.push_back(run_all(engine, 1).at(0));
    }
    // Together, with a prefill chunk small enough that prefills and decodes share steps.
    Engine engine(tiny_model(), {.cache_tokens = 512, .cache_dtype = DType::F32, .prefill_chunk = 16, .mtp_drafts = mtp});
    for (const auto& prompt : prompts) engine.add(prompt, greedy);
    EXPECT_EQ(run_all(engine, 3), alone) << "mtp " << mtp;
    EXPECT_EQ(engine.free_tokens(), engine.cache().capacity_tokens()) << "pages are returned (or kept, evictable)";
    EXPECT_EQ(engine.prefix_cache().used_blocks, 0);
  }
}

// A batch's greedy decode rows take their arg-max over the thread pool, the others are sampled in
// order: greedy and seeded sampled sequences of every kind (top-k, top-p, min-p, penalties, a logit
// bias) side by side get the tokens each gets alone.
TEST(Engine, BatchedSampledSequencesGetTheirOwnTokensWhateverTheirNeighbours) {
  const std::vector<std::vector<std::int32_t>> prompts = batch_prompts();
  std::vector<SamplingParams> kinds(6, greedy_12_tokens());  // 0 and 5 greedy
  kinds[1].temperature = 0.8f;
  kinds[1].top_k = 20;
  kinds[1].seed = 11;
  kinds[2].temperature = 1.2f;
  kinds[2].top_p = 0.9f;
  kinds[2].presence_penalty = 0.5f;
  kinds[2].seed = 12;
  kinds[3].temperature = 0.7f;
  kinds[3].repetition_penalty = 1.2f;
  kinds[3].logit_bias = {{5, 3.0f}, {7, -100.0f}};
  kinds[3].seed = 13;
  kinds[4].temperature = 1.0f;
  kinds[4].min_p = 0.05f;
  kinds[4].seed = 14;
  std::vector<std::vector<std::int32_t>> alone;
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = DType::F32});
    engine.add(prompts[i % prompts.size()], kinds[i]);
    alone.push_back(run_all(engine, 1).at(0));
  }
  Engine engine(tiny_model(), {.cache_tokens = 1024, .cache_dtype = DType::F32});
  for (std::size_t i = 0; i < kinds.size(); ++i) engine.add(prompts[i % prompts.size()], kinds[i]);
  EXPECT_EQ(run_all(engine, static_cast<std::int64_t>(kinds.size())), alone);
}

// Speculative sampling must not change what is sampled. Draw the first three generated tokens of
// many seeded sequences with and without MTP drafts and compare the distributions of the 2nd and
// 3rd tokens (the 1st is never speculative) with a chi-square homogeneity test at the 0.1% level.
// Two regimes: at temperature 0.7 with top-k 6 the tiny model's random MTP head is almost always
// rejected (residual sampling at work); at temperature 3 the distributions are flat enough that
// most drafts are accepted. Cells are runs of consecutive token ids holding about 1/12 of the
// pooled draws each (any fixed partition of the outcomes is a valid test of equal distributions).
struct Regime {
  float temperature;
  std::int32_t top_k;
};

std::vector<std::map<std::int32_t, std::int64_t>> sample_first_tokens(std::int64_t mtp, Regime regime, int runs,
                                                                      double* acceptance) {
  const std::vector<std::int32_t> prompt = {255, 624, 590, 983, 591, 173, 380, 286};
  std::vector<std::map<std::int32_t, std::int64_t>> counts(3);
  Engine engine(tiny_model(), {.cache_tokens = runs * 16 + 64, .cache_dtype = DType::F32, .mtp_drafts = mtp});
  for (int i = 0; i < runs; ++i) {
    SamplingParams params;
    params.temperature = regime.temperature;
    params.top_k = regime.top_k;
    params.max_tokens = 3;
    params.seed = 1000 + i + (mtp ? 1000000 : 0);  // independent streams for the two samples
    engine.add(prompt, params);
  }
  std::map<SequenceId, int> produced;
  while (engine.has_work())
    for (const TokenEvent& event : engine.step()) {
      int& index = produced[event.sequence];
      counts.at(static_cast<std::size_t>(index++))[event.sampled.token] += 1;
    }
  if (mtp) *acceptance = engine.speculation().acceptance(0);
  return counts;
}

double homogeneity_statistic(const std::map<std::int32_t, std::int64_t>& a, const std::map<std::int32_t, std::int64_t>& b,
                             int* degrees) {
  std::map<std::int32_t, std::pair<std::int64_t, std::int64_t>> pooled;
  std::int64_t total = 0;
  for (const auto& [token, count] : a) pooled[token].first += count, total += count;
  for (const auto& [token, count] : b) pooled[token].second += count, total += count;
  std::vector<std::pair<std::int64_t, std::int64_t>> cells{{0, 0}};
  for (const auto& [token, pair] : pooled) {
    if (cells.back().first + cells.back().second >= total / 12) cells.emplace_back(0, 0);
    cells.back().first += pair.first;
    cells.back().second += pair.second;
  }
  double statistic = 0.0;
  for (const auto& [x, y] : cells) {
    const double expected = (x + y) / 2.0;  // equal sample sizes
    statistic += (x - expected) * (x - expected) / expected + (y - expected) * (y - expected) / expected;
  }
  *degrees = static_cast<int>(cells.size()) - 1;
  return statistic;
}

TEST(Engine, SpeculativeSamplingKeepsTheDistributionOfSampledTokens) {
  const int runs = 2000;
  for (const Regime regime : {Regime{0.7f, 6}, Regime{3.0f, 0}}) {
    double acceptance = 0.0;
    const auto plain = sample_first_tokens(0, regime, runs, &acceptance);
    const auto speculative = sample_first_tokens(2, regime, runs, &acceptance);
    std::printf("temperature %.1f top-k %d: first-draft acceptance %.3f\n", regime.temperature, regime.top_k, acceptance);
    if (regime.temperature > 1.0f) {
      EXPECT_GT(acceptance, 0.3) << "this regime should accept drafts";
    }
    for (std::size_t position : {1u, 2u}) {
      int degrees = 0;
      const double statistic = homogeneity_statistic(plain[position], speculative[position], &degrees);
      ASSERT_GE(degrees, 2);
      ASSERT_LE(degrees, 20);
      std::printf("  token %zu: chi-square %.2f with %d degrees of freedom (0.1%% critical %.2f)\n", position + 1,
                  statistic, degrees, test::chi_square_critical_0_001(degrees));
      EXPECT_LT(statistic, test::chi_square_critical_0_001(degrees));
    }
  }
}

// Each event carries its sequence's MTP drafts so far: a verification step drafts k tokens and
// yields accepted + 1 of them (fewer only when the sequence ends in it); the first token comes from
// the prompt, before any draft. Summed over sequences, the counts are the engine's own totals.
TEST(Engine, EventsCarryTheirSequencesDraftsAndAcceptances) {
  const std::int64_t k = 2;
  Engine engine(tiny_model(), {.cache_tokens = 1024, .cache_dtype = DType::F32, .prefill_chunk = 8, .mtp_drafts = k});
  for (int i = 0; i < 8; ++i) {
    SamplingParams params;
    params.temperature = 3.0f;  // flat enough that most drafts are accepted (see above)
    params.max_tokens = 20;
    params.seed = 50 + i;
    engine.add({255, 624, 590, 983, 591, 173, 380, 286, static_cast<std::int32_t>(300 + i)}, params);
  }
  struct Seen {
    std::int64_t drafted = 0, accepted = 0, tokens = 0;
  };
  std::map<SequenceId, Seen> seen;
  while (engine.has_work()) {
    std::map<SequenceId, std::vector<TokenEvent>> by_sequence;
    for (const TokenEvent& event : engine.step()) by_sequence[event.sequence].push_back(event);
    for (const auto& [id, events] : by_sequence) {
      Seen& before = seen[id];
      const TokenEvent& last = events.back();
      for (const TokenEvent& event : events) {
        EXPECT_EQ(event.drafted, last.drafted);  // one verification per step
        EXPECT_EQ(event.accepted, last.accepted);
      }
      if (before.tokens == 0) {
        EXPECT_EQ(events.size(), 1u);
        EXPECT_EQ(last.drafted, 0);
        EXPECT_EQ(last.accepted, 0);
      } else {
        EXPECT_EQ(last.drafted - before.drafted, k);
        const std::int64_t accepted = last.accepted - before.accepted;
        EXPECT_GE(accepted, 0);
        EXPECT_LE(accepted, k);
        if (!last.finished) {
          EXPECT_EQ(static_cast<std::int64_t>(events.size()), accepted + 1);
        } else {
          EXPECT_LE(static_cast<std::int64_t>(events.size()), accepted + 1);
        }
      }
      before = {last.drafted, last.accepted, before.tokens + static_cast<std::int64_t>(events.size())};
    }
  }
  std::int64_t drafted = 0, accepted = 0, engine_drafted = 0, engine_accepted = 0;
  for (const auto& [id, s] : seen) {
    EXPECT_EQ(s.tokens, 20);
    drafted += s.drafted;
    accepted += s.accepted;
  }
  for (std::size_t i = 0; i < static_cast<std::size_t>(k); ++i) {
    engine_drafted += engine.speculation().drafted[i];
    engine_accepted += engine.speculation().accepted[i];
  }
  EXPECT_EQ(seen.size(), 8u);
  EXPECT_EQ(drafted, engine_drafted);
  EXPECT_EQ(accepted, engine_accepted);
  EXPECT_GT(accepted, 0);
}

// The chosen token's log-probability costs a pass over the vocabulary: only sequences that ask for
// it get it; for a greedy token it is the best entry of top_logprobs (computed on its own path).
TEST(Engine, GivesTheChosenTokensLogprobOnlyWhenAsked) {
  Engine engine(tiny_model(), {.cache_tokens = 256, .cache_dtype = DType::F32});
  SamplingParams plain, asked, top;
  plain.max_tokens = asked.max_tokens = top.max_tokens = 6;
  plain.temperature = asked.temperature = top.temperature = 0.0f;  // greedy
  asked.token_logprob = true;
  top.logprobs = 1;
  const std::vector<std::int32_t> prompt = {255, 624, 590, 983};
  const SequenceId a = engine.add(prompt, plain), b = engine.add(prompt, asked), c = engine.add(prompt, top);
  std::map<SequenceId, std::vector<SampledToken>> got;
  while (engine.has_work())
    for (const TokenEvent& event : engine.step()) got[event.sequence].push_back(event.sampled);
  ASSERT_EQ(got[a].size(), 6u);
  ASSERT_EQ(got[b].size(), 6u);
  ASSERT_EQ(got[c].size(), 6u);
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_TRUE(std::isnan(got[a][i].logprob)) << i;
    ASSERT_EQ(got[c][i].top_logprobs.size(), 1u);
    EXPECT_EQ(got[b][i].token, got[c][i].top_logprobs[0].token) << i;
    EXPECT_NEAR(got[b][i].logprob, got[c][i].top_logprobs[0].logprob, 1e-5) << i;
    EXPECT_NEAR(got[c][i].logprob, got[c][i].top_logprobs[0].logprob, 1e-5) << i;
    EXPECT_LE(got[b][i].logprob, 0.0f);
  }
}

TEST(Engine, RejectsBadPromptsAndOptions) {
  Engine engine(tiny_model(), {.cache_tokens = 64});
  SamplingParams params;
  EXPECT_THROW(engine.add({}, params), Error);
  EXPECT_THROW(engine.add({1, 5000}, params), Error);  // outside the 1024-token vocabulary
  params.max_tokens = 2000;                            // beyond max_position_embeddings = 1024
  EXPECT_THROW(engine.add({1, 2}, params), Error);
  params.max_tokens = 8;
  params.temperature = -1.0f;
  EXPECT_THROW(engine.add({1, 2}, params), Error);
  // A prompt larger than the whole cache fails the step with a clear error and no crash.
  Engine small(tiny_model(), {.cache_tokens = 16, .block_tokens = 16});
  SamplingParams ok;
  ok.max_tokens = 4;
  small.add(std::vector<std::int32_t>(40, 7), ok);
  EXPECT_THROW(small.step(), CacheFullError);
}

}  // namespace
}  // namespace dsv3
