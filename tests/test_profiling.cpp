// The profiling backend behind `dsv3 bench --profile`: it must compute exactly what the backend it
// wraps computes, and count each op where it was called.
#include <gtest/gtest.h>

#include <map>

#include "fast_arithmetic.h"
#include "kernels/cpu/ops.h"
#include "kernels/profiling.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

// Prefill of `ids` then one decode step, returning the last logits row of each step.
std::vector<float> prefill_and_decode(const Model& model, const std::vector<std::int64_t>& ids) {
  LatentCache cache(model.config(), {.capacity_tokens = 64, .dtype = DType::F32, .block_tokens = 16},
                    model.backend());
  kernels::Workspace workspace(model.backend());
  LatentCache::Table table;
  std::vector<float> logits;
  const std::int64_t prompt = static_cast<std::int64_t>(ids.size()) - 1;
  for (const auto& [start, count] : {std::pair<std::int64_t, std::int64_t>{0, prompt}, {prompt, 1}}) {
    cache.reserve(table, start + count);
    const StepSegment segment{&table, start, std::span(ids).subspan(static_cast<std::size_t>(start),
                                                                    static_cast<std::size_t>(count))};
    const StepOutput out = model.step(std::span(&segment, 1), cache, workspace);
    const std::vector<float> row = kernels::read(model.backend(), out.logits);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  cache.release(table);
  return logits;
}

TEST(Profiling, ComputesWhatTheWrappedBackendComputesAndCountsEachOp) {
  kernels::ProfilingBackend profiler(kernels::default_backend());
  const Model plain(Weights::load(test::tiny_model_dir()));
  const Model timed(Weights::load(test::tiny_model_dir()), profiler);
  const std::vector<std::int64_t> ids = {5, 17, 230, 41, 9, 77};
  const std::vector<float> expected = prefill_and_decode(plain, ids);
  const std::vector<float> got = prefill_and_decode(timed, ids);
  EXPECT_EQ(got, expected);  // the same ops in the same order: bit for bit

  std::map<std::string, kernels::OpProfile> by_op;
  for (const kernels::OpProfile& entry : profiler.entries()) by_op[entry.op] = entry;
  const ModelConfig& c = plain.config();
  const std::int64_t steps = 2, moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  ASSERT_TRUE(by_op.contains("linear lm_head"));
  EXPECT_EQ(by_op["linear lm_head"].calls, steps);
  EXPECT_EQ(by_op["linear lm_head"].rows, steps);  // only the last row of each step
  EXPECT_DOUBLE_EQ(by_op["linear lm_head"].weight_bytes,
                   static_cast<double>(steps * plain.weights().lm_head.bytes()));
  ASSERT_TRUE(by_op.contains("moe_experts"));
  EXPECT_EQ(by_op["moe_experts"].calls, steps * moe_layers);
  // Linears are named by role, summed over the layers: one q_b_proj call per layer and step.
  ASSERT_TRUE(by_op.contains("linear self_attn.q_b_proj"));
  EXPECT_EQ(by_op["linear self_attn.q_b_proj"].calls, steps * c.num_hidden_layers);
  EXPECT_EQ(by_op["linear self_attn.q_b_proj"].rows, (static_cast<std::int64_t>(ids.size()) - 1 + 1) * c.num_hidden_layers);
  double total = 0.0;
  for (const auto& [op, entry] : by_op) {
    EXPECT_GT(entry.seconds, 0.0) << op;
    total += entry.seconds;
  }
  EXPECT_DOUBLE_EQ(profiler.total_seconds(), total);
  profiler.reset();
  EXPECT_TRUE(profiler.entries().empty());
}

// The head's pair tiles are made through the backend the model is loaded with: under the profiler
// (dsv3 bench --profile) they must still be made, or the profile times another kernel.
TEST(Profiling, PreparesADecodeWeightAsTheWrappedBackendDoes) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  kernels::ProfilingBackend profiler(kernels::default_backend());
  std::vector<std::uint16_t> values(40 * 24, 0x3f80);
  Matrix plain;
  plain.name = "lm_head.weight";
  plain.dtype = DType::BF16;
  plain.rows = 40;
  plain.cols = 24;
  plain.data = reinterpret_cast<const std::byte*>(values.data());
  Matrix timed = plain;
  const std::size_t bytes = kernels::default_backend().prepare_decode_weight(plain);
  EXPECT_EQ(bytes, 48u * 12 * 4);  // 3 tiles of 16 rows x 12 column pairs
  EXPECT_EQ(profiler.prepare_decode_weight(timed), bytes);
  EXPECT_NE(timed.packed_copy(), nullptr);
}

TEST(Profiling, NamesAWeightByItsRoleInEveryLayer) {
  EXPECT_EQ(kernels::weight_role("model.layers.7.mlp.shared_experts.up_proj.weight"), "mlp.shared_experts.up_proj");
  EXPECT_EQ(kernels::weight_role("model.layers.61.self_attn.kv_b_proj.weight"), "self_attn.kv_b_proj");
  EXPECT_EQ(kernels::weight_role("lm_head.weight"), "lm_head");
  EXPECT_EQ(kernels::weight_role("model.embed_tokens.weight"), "embed_tokens");
  EXPECT_EQ(kernels::weight_role(""), "(unnamed)");
}

}  // namespace
}  // namespace dsv3
