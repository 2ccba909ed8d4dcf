// dsv3 plan: its figures against the parameter count (io/checkpoint_layout) and the formulas worked
// from the config by hand.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "fast_arithmetic.h"
#include "io/checkpoint_layout.h"
#include "io/model_config.h"
#include "model/weights.h"
#include "support.h"

namespace dsv3 {
namespace {

using namespace test;
using ::testing::HasSubstr;

nlohmann::json plan(const std::string& arguments) {
  std::string output;
  const int status = run_dsv3("plan --json " + arguments, output);
  EXPECT_EQ(status, 0) << output;
  return status == 0 ? nlohmann::json::parse(output) : nlohmann::json();
}

std::string tiny_config() { return (tiny_model_dir() / "config.json").string(); }

double streamed(const nlohmann::json& p, int rank_index, int batch_index) {
  return p["ranks"][rank_index]["batches"][batch_index]["streamed_bytes_per_step"].get<double>();
}

TEST(Plan, OneRankStreamsWhatTheParameterCountSays) {
  const ModelConfig c = ModelConfig::load(tiny_model_dir());
  const ParameterCount params = count_parameters(c);
  const nlohmann::json p = plan("--config " + tiny_config() +
                                " --ranks 1 --bandwidth 100 --link 10 --latency 5 --dtype bf16 --batch 1,1000000");
  ASSERT_FALSE(p.is_null());
  // Batch 1: the activated weights less the embedding table, two bytes each.
  EXPECT_DOUBLE_EQ(streamed(p, 0, 0), 2.0 * static_cast<double>(params.read_per_token));
  // A huge batch touches every expert: every weight but the embedding table.
  EXPECT_NEAR(streamed(p, 0, 1), 2.0 * static_cast<double>(params.total - c.vocab_size * c.hidden_size), 1.0);
  EXPECT_DOUBLE_EQ(p["ranks"][0]["resident_weight_bytes"].get<double>(),
                   2.0 * static_cast<double>(params.total + params.mtp));
  // One rank talks to nobody; its speed is bandwidth / bytes.
  const auto& step = p["ranks"][0]["batches"][0];
  EXPECT_EQ(step["communication_seconds"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(step["tokens_per_second"].get<double>(), 100e9 / streamed(p, 0, 0));
}

TEST(Plan, BatchTouchesExpertsAsIndependentChoicesPredict) {
  const ModelConfig c = ModelConfig::load(tiny_model_dir());
  const ParameterCount params = count_parameters(c);
  const nlohmann::json p =
      plan("--config " + tiny_config() + " --ranks 1 --bandwidth 100 --link 10 --latency 5 --dtype bf16 --batch 1,3");
  ASSERT_FALSE(p.is_null());
  // 16 experts, 4 chosen: one token reads 4/16 of each layer's experts, three read 1 - (12/16)^3.
  const double one = 4.0 / 16.0, three = 1.0 - std::pow(12.0 / 16.0, 3);
  EXPECT_NEAR(streamed(p, 0, 1) - streamed(p, 0, 0),
              2.0 * static_cast<double>(params.routed_expert_total) * (three - one), 1e-6);
}

TEST(Plan, SplitBytesShrinkAsOneOverRanksAndCommunicationFollowsTheRing) {
  const ModelConfig c = ModelConfig::load(tiny_model_dir());
  const nlohmann::json p =
      plan("--config " + tiny_config() + " --ranks 1,2,4 --bandwidth 100 --link 10 --latency 5 --batch 1,32");
  ASSERT_FALSE(p.is_null());
  for (int b = 0; b < 2; ++b) {
    // streamed(N) = replicated + split / N: halving twice removes split/2, then split/4.
    const double s1 = streamed(p, 0, b), s2 = streamed(p, 1, b), s4 = streamed(p, 2, b);
    EXPECT_LT(s2, s1);
    EXPECT_NEAR(s1 - s2, 2.0 * (s2 - s4), 1e-6 * s1);
  }
  const double r1 = p["ranks"][0]["resident_weight_bytes"], r2 = p["ranks"][1]["resident_weight_bytes"],
               r4 = p["ranks"][2]["resident_weight_bytes"];
  EXPECT_NEAR(r1 - r2, 2.0 * (r2 - r4), 1e-6 * r1);
  // Two ranks, batch 32: 1 + 2 * layers all-reduces of 32 x hidden F32 rows, each
  // 2 (1/2) bytes / 10 GB/s + 2 x 5 us, and a gather of the logits: (1/2) bytes / 10 GB/s + 5 us.
  const double rows = 32.0 * c.hidden_size * 4, logits = 32.0 * c.vocab_size * 4;
  const double expected = (1 + 2 * c.num_hidden_layers) * (rows / 10e9 + 10e-6) + (0.5 * logits / 10e9 + 5e-6);
  const auto& step = p["ranks"][1]["batches"][1];
  EXPECT_NEAR(step["communication_seconds"].get<double>(), expected, 1e-12);
  EXPECT_NEAR(step["tokens_per_second"].get<double>(),
              32.0 / (streamed(p, 1, 1) / 100e9 + step["communication_seconds"].get<double>()), 1e-6);
}

TEST(Plan, EveryRankStreamsTheReplicatedWeightsWhole) {
  const nlohmann::json p =
      plan("--config " + tiny_config() + " --ranks 1,2 --bandwidth 100 --link 10 --latency 5 --dtype bf16 --batch 1");
  ASSERT_FALSE(p.is_null());
  // streamed(N) = replicated + rest / N, so replicated = 2 streamed(2) - streamed(1). By hand for
  // tiny-dsv3 (hidden 256, q_lora 96, kv_lora 64 + rope 16, 3 layers, 2 of them MoE with 16 experts):
  // per layer q_a_proj 96x256, its norm 96, kv_a_proj_with_mqa 80x256, its norm 64, two layer norms
  // 256 each; per MoE layer the router 16x256 and its bias 16; the final norm 256. BF16: 2 bytes.
  const double per_layer = 96 * 256 + 96 + 80 * 256 + 64 + 2 * 256;
  const double replicated = 2.0 * (3 * per_layer + 2 * (16 * 256 + 16) + 256);
  EXPECT_DOUBLE_EQ(2 * streamed(p, 1, 0) - streamed(p, 0, 0), replicated);
}

double copies(const nlohmann::json& p, int rank_index) {
  return p["ranks"][rank_index]["decode_copy_bytes"].get<double>();
}

TEST(Plan, DecodeCopiesAreWhatALoadMakesAndSplitAsTheirMatrices) {
  const nlohmann::json p =
      plan("--config " + tiny_config() + " --ranks 1,2 --bandwidth 100 --link 10 --latency 5 --dtype bf16 --batch 1");
  ASSERT_FALSE(p.is_null());
  // Replicated as their matrices: q_a_proj (96 x 256) and kv_a_proj_with_mqa (80 x 256) of each of
  // the 3 layers, in whole tiles of 16 rows, BF16 pairs of columns: 2 bytes an element.
  EXPECT_DOUBLE_EQ(2 * copies(p, 1) - copies(p, 0), 3.0 * (96 + 80) * 256 * 2);
  // FP8 matrices get none: the head alone (vocabulary x hidden, BF16 in the official checkpoints).
  const ModelConfig c = ModelConfig::load(tiny_model_dir());
  const nlohmann::json fp8 =
      plan("--config " + tiny_config() + " --ranks 1 --bandwidth 100 --link 10 --latency 5 --dtype fp8 --batch 1");
  ASSERT_FALSE(fp8.is_null());
  EXPECT_DOUBLE_EQ(copies(fp8, 0), static_cast<double>(kernels::pair_tile_copy_bytes(c.vocab_size, c.hidden_size)));
  // On paper as at load: the copies a load of the tiny model makes where this CPU makes them.
  if (!kernels::gemm_bf16_supported()) GTEST_SKIP() << "this CPU makes no decode copies (no AVX512-BF16)";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  ASSERT_TRUE(kernels::few_row_bf16_dot_products());
  Weights weights = Weights::load(tiny_model_dir());
  const std::size_t made = prepare_decode_weights(weights, kernels::default_backend());
  EXPECT_GT(made, 0u);
  EXPECT_EQ(decode_copy_bytes(weights), made);
  EXPECT_DOUBLE_EQ(copies(p, 0), static_cast<double>(made));
}

TEST(Plan, TheReleasedModelInFp8IsAboutItsCheckpointSize) {
  // DeepSeek-V3's FP8 checkpoint (main model and MTP module) is about 690 GB on disk.
  const nlohmann::json p = plan("--config " + (shared_dir() / "bench" / "deepseek-v3-671b.json").string() +
                                " --ranks 1,8 --bandwidth 100 --link 10 --latency 5");
  ASSERT_FALSE(p.is_null());
  EXPECT_EQ(p["dtype"], "fp8");
  const double one = p["ranks"][0]["resident_weight_bytes"];
  EXPECT_GT(one, 680e9);
  EXPECT_LT(one, 700e9);
  EXPECT_LT(p["ranks"][1]["resident_weight_bytes"].get<double>(), one / 7);
}

TEST(Plan, RankCountsThatDoNotSplitTheModelAreClearErrors) {
  std::string output;
  EXPECT_EQ(run_dsv3("plan --config " + tiny_config() + " --ranks 3 --bandwidth 100 --link 10 --latency 5", output), 1);
  EXPECT_THAT(output, HasSubstr("--ranks 3: the 4 attention heads do not split evenly over 3 ranks"));
  output.clear();
  EXPECT_NE(run_dsv3("plan --config " + tiny_config() + " --ranks 2 --bandwidth 0 --link 10 --latency 5", output), 0);
  EXPECT_THAT(output, HasSubstr("--bandwidth"));
  output.clear();
  EXPECT_EQ(run_dsv3("plan --config " + tiny_config() + " --ranks 2,x --bandwidth 1 --link 10 --latency 5", output), 1);
  EXPECT_THAT(output, HasSubstr("--ranks: x is not an integer"));
}

}  // namespace
}  // namespace dsv3
