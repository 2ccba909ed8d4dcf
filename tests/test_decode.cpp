// The cached, batched step against the fixture's full-sequence logits: incremental decode (absorbed
// MLA over the latent cache) must reproduce what transformers computes without a cache.
#include <gtest/gtest.h>

#include "fast_arithmetic.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

struct Fixture {
  std::vector<std::int64_t> ids;
  std::vector<float> logits;      // [T, vocab]
  std::vector<float> mtp_logits;  // [T-1, vocab]
};

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

Fixture fixture_sequence(const std::string& name) {
  static const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  Fixture f;
  f.ids = test::read_i64(reference->tensors().at("input_ids_" + name));
  f.logits = test::read_f32(reference->tensors().at("logits_" + name));
  if (reference->tensors().contains("mtp_logits_" + name))
    f.mtp_logits = test::read_f32(reference->tensors().at("mtp_logits_" + name));
  return f;
}

// A sequence being stepped: its pages and how many of its tokens are cached.
struct Stepper {
  Fixture fixture;
  LatentCache::Table table;
  std::int64_t cached = 0;
  double worst = 0.0;
  std::int64_t rows_checked = 0;
  std::vector<float> seen{};  // every logits row, in position order
};

// Steps all sequences together: each contributes `chunk` tokens (or what it has left) per step,
// and every logits row is compared with the reference row of the same position.
void run_batched(std::vector<Stepper>& sequences, LatentCache& cache, const std::vector<std::int64_t>& chunks) {
  const Model& model = tiny_model();
  const std::int64_t vocab = model.config().vocab_size;
  kernels::Workspace workspace(model.backend());
  for (;;) {
    std::vector<StepSegment> segments;
    std::vector<Stepper*> owners;
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      Stepper& seq = sequences[s];
      const auto total = static_cast<std::int64_t>(seq.fixture.ids.size());
      // The first step of each sequence is its prefill chunk, later steps decode one token.
      const std::int64_t count = std::min(seq.cached == 0 ? chunks[s] : 1, total - seq.cached);
      if (count <= 0) continue;
      cache.reserve(seq.table, seq.cached + count);
      segments.push_back({&seq.table, seq.cached, std::span(seq.fixture.ids).subspan(seq.cached, count), true});
      owners.push_back(&seq);
    }
    if (segments.empty()) return;
    const StepOutput out = model.step(segments, cache, workspace);
    for (std::size_t s = 0; s < segments.size(); ++s) {
      Stepper& seq = *owners[s];
      for (std::int64_t r = out.logit_offsets[s]; r < out.logit_offsets[s + 1]; ++r) {
        const std::int64_t position = seq.cached + (r - out.logit_offsets[s]);
        seq.worst = std::max(seq.worst, test::relative_l2(out.logits.data + r * vocab,
                                                          seq.fixture.logits.data() + position * vocab, vocab));
        seq.seen.insert(seq.seen.end(), out.logits.data + r * vocab, out.logits.data + (r + 1) * vocab);
        ++seq.rows_checked;
      }
      seq.cached += static_cast<std::int64_t>(segments[s].tokens.size());
    }
  }
}

void check_incremental(DType cache_dtype, double tolerance) {
  LatentCache cache(tiny_model().config(), {.capacity_tokens = 512, .dtype = cache_dtype, .block_tokens = 16});
  std::vector<Stepper> sequences;
  for (const char* name : {"1", "2", "3"}) sequences.push_back({fixture_sequence(name), {}});
  // Mixed batch: sequence 3 prefills 100 tokens (expanded MLA) while the others prefill a few and
  // then decode (absorbed MLA); after that everyone decodes together at different positions.
  run_batched(sequences, cache, {2, 5, 100});
  for (const auto& seq : sequences) {
    EXPECT_EQ(seq.rows_checked, static_cast<std::int64_t>(seq.fixture.ids.size()));
    EXPECT_LE(seq.worst, tolerance) << "sequence of " << seq.fixture.ids.size() << " tokens";
    std::printf("%s cache, T=%zu: worst incremental-vs-reference row error %.3g\n",
                std::string(dtype_name(cache_dtype)).c_str(), seq.fixture.ids.size(), seq.worst);
  }
  for (auto& seq : sequences) cache.release(seq.table);
  EXPECT_EQ(cache.free_tokens(), cache.capacity_tokens());
}

TEST(Decode, IncrementalBatchedStepsMatchFullSequenceLogitsWithF32Cache) { check_incremental(DType::F32, 1e-3); }

// BF16 rounds each cached latent to 8 mantissa bits (relative 2^-9): the logits move by about
// that much (measured ~7e-4), not more than twice 2^-9.
TEST(Decode, IncrementalStepsWithBf16CacheStayWithinItsRounding) { check_incremental(DType::BF16, 4e-3); }

// Fast mode with BF16 products (the default on AMD's AVX512-BF16 CPUs): every linear's activations
// and, over a BF16 cache, the latent attention's queries and probabilities rounded to BF16 as well;
// the decode steps' dot products and the 100-token prefill's GEMM round alike. Measured (2-vCPU AMD
// EPYC): worst rows 0.0029, 0.0029 and 0.146 for T = 9, 64, 300, where the GEMM's fixture test
// sees its own worst (0.175: a router's near-tie chooses another expert); the attention's rounding
// alone moved the first two by ~1e-4. The GEMM's bound, 2x that worst: a kernel that mixed up
// columns or heads would be off by errors of order 1.
TEST(Decode, FastBf16StepsWithBf16CacheStayWithinTheirRounding) {
  if (!kernels::gemm_bf16_supported()) GTEST_SKIP() << "this CPU has neither AVX512-BF16 nor AMX";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  check_incremental(DType::BF16, 0.35);
}

// Fast mode with BF16 products: every step below the GEMM's 64 rows (prefills of 2, 5 and 16
// tokens, then decoding), each sequence's logits are bitwise those it gets stepped alone, so a
// sequence's output does not depend on its batch.
TEST(Decode, FastBf16LogitsOfABatchAreBitwiseThoseOfEachSequenceAlone) {
  if (!kernels::gemm_bf16_supported()) GTEST_SKIP() << "this CPU has neither AVX512-BF16 nor AMX";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  const std::vector<std::int64_t> chunks = {2, 5, 16};
  const std::vector<std::string> names = {"1", "2", "3"};
  const LatentCache::Options options{.capacity_tokens = 512, .dtype = DType::BF16, .block_tokens = 16};
  std::vector<Stepper> together;
  for (const auto& name : names) together.push_back({fixture_sequence(name), {}});
  LatentCache cache(tiny_model().config(), options);
  run_batched(together, cache, chunks);
  for (std::size_t s = 0; s < names.size(); ++s) {
    std::vector<Stepper> alone;
    alone.push_back({fixture_sequence(names[s]), {}});
    LatentCache own(tiny_model().config(), options);
    run_batched(alone, own, {chunks[s]});
    ASSERT_EQ(alone[0].seen.size(), together[s].seen.size());
    EXPECT_TRUE(alone[0].seen == together[s].seen) << "sequence " << names[s];
    EXPECT_LE(alone[0].worst, 0.35);
  }
}

TEST(Decode, MtpStepIncrementalMatchesReference) {
  const Model& model = tiny_model();
  const std::int64_t vocab = model.config().vocab_size, hidden = model.config().hidden_size;
  const Fixture f = fixture_sequence("2");
  const auto tokens = static_cast<std::int64_t>(f.ids.size());
  const ForwardOutput full = model.forward(f.ids);
  LatentCache cache(model.config(), {.capacity_tokens = 128, .dtype = DType::F32});
  LatentCache::Table table;
  cache.reserve(table, tokens);
  kernels::Workspace workspace(model.backend());
  double worst = 0.0;
  // Prefill MTP rows 0..9 at once, then one row at a time, as speculative decoding does.
  for (std::int64_t start = 0; start < tokens - 1;) {
    const std::int64_t count = start == 0 ? 10 : 1;
    const MtpSegment segment{&table, start,
                             std::span(full.hidden).subspan(static_cast<std::size_t>(start * hidden),
                                                            static_cast<std::size_t>(count * hidden)),
                             std::span(f.ids).subspan(static_cast<std::size_t>(start + 1), static_cast<std::size_t>(count)),
                             false};
    const StepOutput out = model.mtp_step(std::span(&segment, 1), cache, workspace);
    const std::int64_t row = start + count - 1;
    if (row >= 1) worst = std::max(worst, test::relative_l2(out.logits.data, f.mtp_logits.data() + row * vocab, vocab));
    start += count;
  }
  EXPECT_LE(worst, 1e-3);
}

TEST(Decode, ExhaustedCacheSaysHowMuchWasAskedAndIsLeft) {
  LatentCache cache(tiny_model().config(), {.capacity_tokens = 32, .dtype = DType::BF16, .block_tokens = 16});
  LatentCache::Table a, b;
  cache.reserve(a, 20);  // two blocks
  EXPECT_EQ(cache.free_tokens(), 0);
  try {
    cache.reserve(b, 1);
    FAIL() << "expected CacheFullError";
  } catch (const CacheFullError& e) {
    EXPECT_NE(std::string(e.what()).find("0 of 32 tokens are free"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(b.blocks.empty());
  cache.truncate(a, 16);
  EXPECT_EQ(cache.free_tokens(), 16);
  cache.reserve(b, 16);
  EXPECT_EQ(cache.free_tokens(), 0);
  // A step whose pages are too short is refused, not run out of bounds.
  const std::int64_t ids[] = {1, 2};
  const StepSegment segment{&b, 15, ids, false};
  kernels::Workspace workspace(tiny_model().backend());
  EXPECT_THROW(tiny_model().step(std::span(&segment, 1), cache, workspace), Error);
}

}  // namespace
}  // namespace dsv3
