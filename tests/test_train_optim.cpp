// The optimiser, schedules, clipping, bias update and FP8 quantiser against hand-worked values.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <numbers>

#include "core/numeric.h"
#include "core/error.h"
#include "train_support.h"

namespace dsv3 {
namespace {

using train::Parameter;

// A model whose every value and gradient is set by formula, for checking element-wise updates.
train::TrainableModel filled_model(float grad_scale = 1.0f) {
  auto model = train::TrainableModel::initialise(ModelConfig::from_json(test::tiny_config_json(64)), 3);
  std::int64_t k = 0;
  for (auto& [name, p] : model.parameters)
    for (std::size_t i = 0; i < p.value.size(); ++i, ++k)
      p.grad[i] = grad_scale * static_cast<float>(std::sin(0.37 * static_cast<double>(k)));
  return model;
}

TEST(Optim, AdamWMatchesTwoHandComputedSteps) {
  auto model = filled_model();
  train::AdamWOptions options;
  options.moment_dtype = train::MomentDType::f32;
  train::AdamW adam(model, options);
  EXPECT_TRUE(adam.decays(model.parameter("model.layers.0.self_attn.o_proj.weight")));
  EXPECT_FALSE(adam.decays(model.parameter("model.layers.0.input_layernorm.weight")));
  EXPECT_FALSE(adam.decays(model.parameter("model.embed_tokens.weight")));
  for (const char* name : {"model.layers.0.self_attn.o_proj.weight", "model.layers.0.input_layernorm.weight",
                           "model.embed_tokens.weight"}) {
    model = filled_model();  // fresh values and moments for each parameter's two steps
    adam = train::AdamW(model, options);
    const Parameter* p = &model.parameter(name);
    SCOPED_TRACE(p->name);
    const std::size_t i = 5;
    const double p0 = p->value[i], g = p->grad[i], lr1 = 1e-2, lr2 = 5e-3;
    const double wd = adam.decays(*p) ? 0.1 : 0.0;
    // Step 1: m = 0.1 g, v = 0.05 g²; m̂ = g, v̂ = g²; p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
    const double m1 = 0.1 * g, v1 = 0.05 * g * g;
    const double p1 = p0 * (1 - lr1 * wd) - lr1 * (m1 / 0.1) / (std::sqrt(v1 / 0.05) + 1e-8);
    // Step 2 with the same gradient: m = 0.19 g, v = 0.0975 g²; corrections 1 - 0.81, 1 - 0.9025.
    const double m2 = 0.9 * m1 + 0.1 * g, v2 = 0.95 * v1 + 0.05 * g * g;
    const double p2 = p1 * (1 - lr2 * wd) - lr2 * (m2 / (1 - 0.81)) / (std::sqrt(v2 / (1 - 0.9025)) + 1e-8);
    adam.step(model, lr1);
    EXPECT_NEAR(p->value[i], p1, 1e-6 * std::abs(p1) + 1e-9);
    adam.step(model, lr2);
    EXPECT_NEAR(p->value[i], p2, 1e-6 * std::abs(p2) + 1e-9);
    EXPECT_NEAR(adam.first_moment(p->name, i), m2, 1e-6 * std::abs(m2));
    EXPECT_NEAR(adam.second_moment(p->name, i), v2, 1e-6 * std::abs(v2));
    EXPECT_EQ(adam.steps(), 2);
  }
}

TEST(Optim, Bf16MomentsAreRoundedToNearestEvenAndUsedAsStored) {
  auto model = filled_model();
  train::AdamWOptions options;
  options.moment_dtype = train::MomentDType::bf16;
  options.weight_decay = 0.0;
  train::AdamW adam(model, options);
  Parameter& p = model.parameter("lm_head.weight");
  p.grad[0] = 1.3f;  // m = 0.1 g = 0.13 is not a BF16 value
  const float p0 = p.value[0];
  adam.step(model, 1e-3);
  const float m = adam.first_moment(p.name, 0), v = adam.second_moment(p.name, 0);
  EXPECT_EQ(m, bf16_to_float(float_to_bf16(0.1f * p.grad[0])));
  EXPECT_EQ(v, bf16_to_float(float_to_bf16(0.05f * p.grad[0] * p.grad[0])));
  EXPECT_NE(m, 0.1f * p.grad[0]);
  // The update reads the stored (rounded) moments.
  const double expected = p0 - 1e-3 * (m / 0.1) / (std::sqrt(v / 0.05) + 1e-8);
  EXPECT_NEAR(p.value[0], expected, 1e-7);
  // Round to nearest even on a tie: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  // Half the bytes of FP32 moments in a checkpoint.
  for (const TensorToWrite& t : adam.state_tensors()) EXPECT_EQ(t.dtype, DType::BF16) << t.name;
}

TEST(Optim, LearningRateScheduleWarmupConstantCosineFloor) {
  const train::LearningRateSchedule s{.peak = 1.0, .floor = 0.1, .warmup_steps = 10, .decay_start = 20, .decay_steps = 40};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(4), 0.5);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_DOUBLE_EQ(s.at(19), 1.0);
  EXPECT_DOUBLE_EQ(s.at(20), 1.0);
  EXPECT_NEAR(s.at(40), 0.55, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(s.at(30), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-12);
  EXPECT_DOUBLE_EQ(s.at(60), 0.1);
  EXPECT_DOUBLE_EQ(s.at(1000), 0.1);
  const train::LearningRateSchedule constant{.peak = 2.0, .floor = 0.0, .warmup_steps = 0};
  EXPECT_DOUBLE_EQ(constant.at(0), 2.0);
  EXPECT_DOUBLE_EQ(constant.at(12345), 2.0);
  const train::GammaSchedule gamma{.gamma = 0.001, .change_step = 100, .gamma_after = 0.0};
  EXPECT_DOUBLE_EQ(gamma.at(99), 0.001);
  EXPECT_DOUBLE_EQ(gamma.at(100), 0.0);
  EXPECT_DOUBLE_EQ(train::GammaSchedule{.gamma = 0.01}.at(1000000), 0.01);
}

TEST(Optim, ClippingScalesTheGlobalNormToTheLimit) {
  auto model = filled_model(3.0f);
  double sum = 0.0;
  for (const auto& [name, p] : model.parameters)
    for (float g : p.grad) sum += static_cast<double>(g) * g;
  const float before = model.parameter("lm_head.weight").grad[7];
  const double norm = train::clip_gradient_norm(model, 1.0);
  EXPECT_NEAR(norm, std::sqrt(sum), 1e-9 * std::sqrt(sum));
  double after = 0.0;
  for (const auto& [name, p] : model.parameters)
    for (float g : p.grad) after += static_cast<double>(g) * g;
  EXPECT_NEAR(std::sqrt(after), 1.0, 1e-5);
  EXPECT_NEAR(model.parameter("lm_head.weight").grad[7], before / norm, 1e-6);
  // Below the limit nothing changes; 0 disables clipping.
  const float kept = model.parameter("lm_head.weight").grad[7];
  EXPECT_NEAR(train::clip_gradient_norm(model, 2.0), 1.0, 1e-5);
  EXPECT_EQ(model.parameter("lm_head.weight").grad[7], kept);
  train::scale_gradients(model, 10.0);
  train::clip_gradient_norm(model, 0.0);
  EXPECT_FLOAT_EQ(model.parameter("lm_head.weight").grad[7], 10.0f * kept);
}

TEST(Balance, SignRuleRaisesUnderloadedAndLowersOverloadedExperts) {
  auto model = train::TrainableModel::initialise(ModelConfig::from_json(test::tiny_config_json(64)), 3);
  // Layer 0 is dense; layer 1 and the MTP layer (index 2) are MoE with 8 experts.
  std::vector<std::vector<std::int64_t>> load = {{}, {0, 1, 2, 3, 4, 5, 6, 3}, {3, 3, 3, 3, 3, 3, 3, 3}};
  const auto stats = train::update_router_biases(model, load, 0.25);
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].layer, 1);
  EXPECT_EQ(stats[0].max_load, 6);
  EXPECT_DOUBLE_EQ(stats[0].mean_load, 3.0);
  EXPECT_DOUBLE_EQ(stats[0].max_over_mean(), 2.0);
  EXPECT_EQ(stats[0].dropped_tokens, 0);
  const std::vector<float> expected = {0.25f, 0.25f, 0.25f, 0.0f, -0.25f, -0.25f, -0.25f, 0.0f};
  EXPECT_EQ(model.layers[1].moe->e_score_correction_bias, expected);
  EXPECT_EQ(model.mtp[0].layer.moe->e_score_correction_bias, std::vector<float>(8, 0.0f));  // all at the mean
  EXPECT_DOUBLE_EQ(stats[1].max_over_mean(), 1.0);

  // accumulate_gradients reports the per-layer loads the rule reads: top_k per token.
  std::vector<std::int64_t> ids(16);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(i * 7 % 64);
  const auto report = train::accumulate_gradients(model, ids, {});
  ASSERT_EQ(report.expert_load.size(), 3u);
  EXPECT_TRUE(report.expert_load[0].empty());
  std::int64_t main_total = 0, mtp_total = 0;
  for (std::int64_t n : report.expert_load[1]) main_total += n;
  for (std::int64_t n : report.expert_load[2]) mtp_total += n;
  EXPECT_EQ(main_total, 16 * 2);
  EXPECT_EQ(mtp_total, 15 * 2);  // the MTP layer sees T - 1 rows
}

TEST(Fp8Train, QuantizerMatchesHandWorkedTiles) {
  // One row of 130 values: a full 1x128 tile and a partial one of 2.
  std::vector<float> row(130, 0.0f), out(130);
  row[0] = 896.0f;    // amax of tile 0: scale 896 / 448 = 2
  row[1] = 3.0f;      // 1.5 in E4M3 units: exact
  row[2] = 2.125f;    // 1.0625 lies halfway between 1 and 1.125: ties to even -> 1 -> 2
  row[3] = -2.375f;   // 1.1875 halfway between 1.125 and 1.25: ties to even (1.25) -> -2.5
  row[4] = 1e-3f;     // 5e-4 units: below half the smallest subnormal 2^-9 -> 0
  row[128] = 0.5f;    // tile 1: scale 0.5 / 448
  row[129] = -0.1f;   // -89.6 units; spacing 8 in [64, 128) -> -88
  train::fp8_quantize_dequantize(row.data(), 1, 130, 1, train::kFp8Tile, out.data());
  EXPECT_EQ(out[0], 896.0f);
  EXPECT_EQ(out[1], 3.0f);
  EXPECT_EQ(out[2], 2.0f);
  EXPECT_EQ(out[3], -2.5f);
  EXPECT_EQ(out[4], 0.0f);
  EXPECT_EQ(out[5], 0.0f);
  EXPECT_FLOAT_EQ(out[128], 0.5f);
  EXPECT_FLOAT_EQ(out[129], -88.0f * (0.5f / 448.0f));

  // 128x128 blocks over a 130 x 3 matrix: rows 128..129 are a block of their own.
  std::vector<float> m(130 * 3, 1.0f), q(m.size());
  m[0] = 448.0f * 4;     // block 0's scale is 4: 1.0 -> 0.25 units, exactly representable
  m[128 * 3 + 1] = 7.0f;  // block 1's scale is 7 / 448: 1.0 -> 64 units, exact
  m[128 * 3 + 2] = 1.1f;  // 70.4 units -> 72 (spacing 8) -> 72 * 7 / 448
  train::fp8_quantize_dequantize(m.data(), 130, 3, train::kFp8Tile, train::kFp8Tile, q.data());
  EXPECT_EQ(q[0], 1792.0f);
  EXPECT_EQ(q[1], 1.0f);
  EXPECT_EQ(q[128 * 3], 1.0f);
  EXPECT_EQ(q[128 * 3 + 1], 7.0f);
  EXPECT_FLOAT_EQ(q[128 * 3 + 2], 72.0f * 7.0f / 448.0f);

  // 128x1 column tiles (the weight-gradient GEMM's inner dimension is the token axis).
  std::vector<float> c = {448.0f, 1.0f, 1.0f, 3.0f}, cq(4);  // 2 rows x 2 columns
  train::fp8_quantize_dequantize(c.data(), 2, 2, train::kFp8Tile, 1, cq.data());
  EXPECT_EQ(cq[0], 448.0f);
  EXPECT_EQ(cq[2], 1.0f);
  EXPECT_FLOAT_EQ(cq[1], 144.0f * 3.0f / 448.0f);  // column 1: amax 3; 1.0 is 149.3 units -> 144 (spacing 16)
  EXPECT_FLOAT_EQ(cq[3], 3.0f);
  // An all-zero tile stays zero.
  std::vector<float> zeros(5, 0.0f), zq(5, 1.0f);
  train::fp8_quantize_dequantize(zeros.data(), 1, 5, 1, train::kFp8Tile, zq.data());
  EXPECT_EQ(zq, zeros);
}

TEST(Fp8Train, FastRoundingMatchesTheReferenceConversion) {
  // Every 37th float from 0 to past the E4M3 range (both signs), and the edges.
  std::int64_t checked = 0, mismatches = 0;
  for (std::uint32_t bits = 0; bits < 0x44000000u; bits += 37) {
    for (const float v : {std::bit_cast<float>(bits), -std::bit_cast<float>(bits)}) {
      const float expected = fp8_e4m3_to_float(float_to_fp8_e4m3(v));
      const float got = train::round_to_e4m3(v);
      if (std::bit_cast<std::uint32_t>(got) != std::bit_cast<std::uint32_t>(expected) && !(got == 0 && expected == 0)) {
        if (++mismatches < 5) ADD_FAILURE() << v << ": " << got << " vs " << expected;
      }
      ++checked;
    }
  }
  for (const float v : {448.0f, 464.0f, 1e30f, 0x1p-6f, 0x1p-10f, 0x1.8p-10f, 0x1.7p-6f})
    EXPECT_EQ(train::round_to_e4m3(v), fp8_e4m3_to_float(float_to_fp8_e4m3(v))) << v;
  EXPECT_TRUE(std::isnan(train::round_to_e4m3(NAN)));
  EXPECT_EQ(mismatches, 0) << "of " << checked;
}

}  // namespace
}  // namespace dsv3
