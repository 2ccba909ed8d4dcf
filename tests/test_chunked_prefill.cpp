// Chunked prefill past a cached prefix: the 300-token fixture sequence fed through the engine's
// cached step a chunk at a time (every chunk after the first attends to the rows the earlier ones
// cached), against the fixture's full-sequence Hugging Face logits and MTP logits.
//
// Which MLA form runs depends on the chunk size (expanded_is_cheaper in src/model/mla.cpp): on
// tiny-dsv3 (kv_lora_rank 64, qk_rope 16, qk_nope 32, v 32) the expanded form is cheaper for
// q queries when q * (2*64 + 16 - 48 - 32) > 64 * (32 + 32), that is for q > 64. So:
//   chunk   1: 300 steps of 1, absorbed (latent attention over keys [0, position])
//   chunk   7: 42 of 7 + 6, absorbed
//   chunk  64: 4 of 64 + 44, absorbed (64 is the largest absorbed run)
//   chunk 100: 3 of 100, expanded (attention_causal with query_offset 0, 100, 200)
//   chunk 129: 129, 129 expanded (query_offset 0, 129), then 42 absorbed
// and the MTP rows (299) split alike: 100 -> 100, 100, 99 expanded; 129 -> 129, 129, 41.
#include <gtest/gtest.h>

#include <cstdio>

#include "engine/chunked_forward.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

const Model& tiny_model() {
  static const Model model(Weights::load(test::tiny_model_dir()));
  return model;
}

struct Reference {
  std::vector<std::int64_t> ids;
  std::vector<float> logits;      // [T, vocab]
  std::vector<float> mtp_logits;  // [T-1, vocab]
};

// Sequence 3 of the fixture: 300 tokens, longer than every chunk size tried.
const Reference& long_sequence() {
  static const Reference reference = [] {
    const auto file = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
    return Reference{test::read_i64(file->tensors().at("input_ids_3")), test::read_f32(file->tensors().at("logits_3")),
                     test::read_f32(file->tensors().at("mtp_logits_3"))};
  }();
  return reference;
}

struct Errors {
  double logits = 0.0;
  double mtp_logits = 0.0;
};

// Worst row relative L2 error and arg-max agreement, measured as test_parity does (MTP rows p >= 1).
Errors compare_with_reference(const std::vector<float>& logits, const std::vector<float>& mtp_logits) {
  const Reference& reference = long_sequence();
  const std::int64_t vocab = tiny_model().config().vocab_size;
  const auto tokens = static_cast<std::int64_t>(reference.ids.size());
  EXPECT_EQ(logits.size(), reference.logits.size());
  EXPECT_EQ(mtp_logits.size(), reference.mtp_logits.size());
  if (logits.size() != reference.logits.size() || mtp_logits.size() != reference.mtp_logits.size()) return {1.0, 1.0};
  const auto main = test::compare_rows(logits.data(), reference.logits.data(), tokens, vocab);
  const auto mtp = test::compare_rows(mtp_logits.data() + vocab, reference.mtp_logits.data() + vocab, tokens - 2, vocab);
  EXPECT_EQ(main.argmax_mismatches, 0) << "of " << main.argmax_checked << " logits rows checked";
  EXPECT_EQ(mtp.argmax_mismatches, 0) << "of " << mtp.argmax_checked << " MTP rows checked";
  EXPECT_GT(main.argmax_checked, 0);
  return {main.worst_relative_error, mtp.worst_relative_error};
}

// The F32 cache keeps every latent exactly, so chunking changes only float32 rounding: the
// full-sequence forward measures 2.5e-7 (logits) and 2.7e-7 (MTP) on this sequence (test_parity
// prints them; its bound is a loose 1e-3), and every chunk size measures the same. The bound sits
// near the measurement so that a chunking error far smaller than a wrong mask still shows.
constexpr double kF32Tolerance = 1e-6;
// BF16 rounds each cached latent to 8 mantissa bits, as in test_decode.cpp.
constexpr double kBf16Tolerance = 4e-3;

class ChunkedPrefill : public ::testing::TestWithParam<std::int64_t> {};

TEST_P(ChunkedPrefill, MatchesTransformersWithF32Cache) {
  const std::int64_t chunk = GetParam();
  const ChunkedForwardOutput out =
      forward_in_chunks(tiny_model(), long_sequence().ids, {.chunk = chunk, .cache_dtype = DType::F32});
  const Errors errors = compare_with_reference(out.logits, out.mtp_logits);
  std::printf("chunk %lld, F32 cache: logits worst row relative error %.3g, mtp_logits %.3g\n",
              static_cast<long long>(chunk), errors.logits, errors.mtp_logits);
  EXPECT_LE(errors.logits, kF32Tolerance);
  EXPECT_LE(errors.mtp_logits, kF32Tolerance);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ChunkedPrefill, ::testing::Values(1, 7, 64, 100, 129),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

TEST(ChunkedPrefillBf16, StaysWithinTheCacheRounding) {
  for (const std::int64_t chunk : {7, 129}) {  // absorbed only; expanded then absorbed
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const ChunkedForwardOutput out =
        forward_in_chunks(tiny_model(), long_sequence().ids, {.chunk = chunk, .cache_dtype = DType::BF16});
    const Errors errors = compare_with_reference(out.logits, out.mtp_logits);
    std::printf("chunk %lld, BF16 cache: logits worst row relative error %.3g, mtp_logits %.3g\n",
                static_cast<long long>(chunk), errors.logits, errors.mtp_logits);
    EXPECT_LE(errors.logits, kBf16Tolerance);
    EXPECT_LE(errors.mtp_logits, kBf16Tolerance);
  }
}

TEST(ChunkedPrefillErrors, ANonPositiveChunkIsRefused) {
  const std::int64_t ids[] = {1, 2, 3};
  for (const std::int64_t chunk : {0, -4}) {
    const std::string message = test::error_message([&] { forward_in_chunks(tiny_model(), ids, {.chunk = chunk}); });
    EXPECT_NE(message.find("prefill chunk must be positive"), std::string::npos) << message;
  }
}

TEST(ChunkedPrefillCli, ForwardWithPrefillChunkWritesTheSameContract) {
  const auto dir = test::temp_dir("chunked");
  const auto fixture = test::tiny_model_dir();
  const std::string output = (dir / "out.safetensors").string();
  std::string log;
  // 129: the 300-token sequence runs expanded past a cached prefix, then absorbed; the 64-token one
  // runs absorbed in one chunk; the others are shorter than a chunk.
  ASSERT_EQ(test::run_dsv3("forward --model " + fixture.string() + " --input " +
                               (fixture / "reference.safetensors").string() + " --output " + output +
                               " --prefill-chunk 129",
                           log),
            0)
      << log;
  EXPECT_NE(log.find("in chunks of 129 (F32 cache)"), std::string::npos) << log;
  const auto ours = SafetensorsFile::open(output);
  const std::int64_t vocab = tiny_model().config().vocab_size;
  const auto reference = SafetensorsFile::open(fixture / "reference.safetensors");
  for (const char* name : {"logits_0", "logits_1", "logits_2", "mtp_logits_1", "mtp_logits_2"}) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ours->tensors().contains(name));
    EXPECT_EQ(ours->tensors().at(name).shape, reference->tensors().at(name).shape);
  }
  EXPECT_FALSE(ours->tensors().contains("mtp_logits_0"));  // T = 1 has no MTP row
  const Errors errors =
      compare_with_reference(test::read_f32(ours->tensors().at("logits_3")), test::read_f32(ours->tensors().at("mtp_logits_3")));
  EXPECT_LE(errors.logits, kF32Tolerance);
  EXPECT_LE(errors.mtp_logits, kF32Tolerance);
  EXPECT_EQ(ours->tensors().at("logits_3").shape, (std::vector<std::int64_t>{300, vocab}));
  std::filesystem::remove_all(dir);
}

TEST(ChunkedPrefillCli, NonPositiveChunkAndStrayCacheDtypeAreRefusedByName) {
  const auto fixture = test::tiny_model_dir();
  const std::string common = "forward --model " + fixture.string() + " --input " +
                             (fixture / "reference.safetensors").string() + " --output /nonexistent/out.safetensors";
  for (const char* chunk : {"0", "-3"}) {
    std::string log;
    EXPECT_EQ(test::run_dsv3(common + " --prefill-chunk " + chunk, log), 1) << log;
    EXPECT_NE(log.find("--prefill-chunk must be a positive number of tokens"), std::string::npos) << log;
  }
  std::string log;
  EXPECT_NE(test::run_dsv3(common + " --cache-dtype bf16", log), 0) << log;
  EXPECT_NE(log.find("--prefill-chunk"), std::string::npos) << log;
}

}  // namespace
}  // namespace dsv3
