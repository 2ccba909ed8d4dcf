// The one checkpoint-layout table, and the parameter count as the sum over it. (Random init is
// checked against it in test_init.cpp.)
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/checkpoint_layout.h"
#include "support.h"

namespace dsv3 {
namespace {

using Kind = CheckpointTensor::Kind;
using Role = CheckpointTensor::Role;

ModelConfig bench_config(const std::string& name) {
  return ModelConfig::load(test::shared_dir() / "bench" / (name + ".json"));
}

// The tiny fixture's shape turned every way the layout branches: tied embeddings, plain q_proj,
// two MTP modules, no shared experts.
ModelConfig tiny_variant() {
  nlohmann::json config;
  std::ifstream(test::tiny_model_dir() / "config.json") >> config;
  config["tie_word_embeddings"] = true;
  config["q_lora_rank"] = nullptr;
  config["num_nextn_predict_layers"] = 2;
  config["n_shared_experts"] = 0;
  return ModelConfig::from_json(config);
}

std::vector<ModelConfig> configs() {
  return {ModelConfig::load(test::tiny_model_dir()), tiny_variant(), bench_config("bench-1b"),
          bench_config("moonlight-16b-a3b"), bench_config("deepseek-v3-671b")};
}

TEST(CheckpointLayout, NamesAreUniqueAndCopiesFollowTheirOriginals) {
  for (const ModelConfig& c : configs()) {
    std::map<std::string, const CheckpointTensor*> seen;
    for (const CheckpointTensor& t : checkpoint_layout(c)) {
      EXPECT_TRUE(seen.emplace(t.name, &t).second) << t.name << " twice";
      EXPECT_EQ(t.shape.size(), t.kind == Kind::matrix ? 2u : 1u) << t.name;
      EXPECT_TRUE(!t.fp8_in_official_checkpoints || t.kind == Kind::matrix) << t.name;
      EXPECT_EQ(t.mtp_depth >= 0, t.layer >= c.num_hidden_layers) << t.name;
      if (t.copy_of.empty()) continue;
      EXPECT_GE(t.mtp_depth, 0) << t.name;
      ASSERT_TRUE(seen.contains(t.copy_of)) << t.name << " copies " << t.copy_of << ", not listed before it";
      EXPECT_EQ(seen.at(t.copy_of)->shape, t.shape) << t.name;
    }
    EXPECT_EQ(seen.contains("lm_head.weight"), !c.tie_word_embeddings);
  }
}

TEST(CheckpointLayout, CountParametersIsTheSumOverTheTable) {
  for (const ModelConfig& c : configs()) {
    ParameterCount sum;
    for (const CheckpointTensor& t : checkpoint_layout(c)) {
      if (!t.copy_of.empty()) continue;
      (t.mtp_depth >= 0 ? sum.mtp : sum.total) += t.numel();
      if (t.role == Role::embed_tokens || t.role == Role::lm_head) sum.embedding += t.numel();
      if (t.mtp_depth < 0 && t.mlp == CheckpointTensor::Mlp::routed_expert) {
        sum.routed_expert_total += t.numel();
        // Routed experts a token does not use: all of a layer's but num_experts_per_tok.
        if (t.expert >= c.num_experts_per_tok) sum.activated -= t.numel();
      }
    }
    sum.activated += sum.total;
    const ParameterCount count = count_parameters(c);
    EXPECT_EQ(count.total, sum.total) << c.num_hidden_layers;
    EXPECT_EQ(count.mtp, sum.mtp);
    EXPECT_EQ(count.embedding, sum.embedding);
    EXPECT_EQ(count.routed_expert_total, sum.routed_expert_total);
    EXPECT_EQ(count.activated, sum.activated);
    EXPECT_EQ(count.read_per_token, count.activated - (c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size));
  }
}

// DeepSeek-V3's counts from its shapes, written out by hand: MLA with q_lora_rank 1536 and
// kv_lora_rank 512 over 128 heads (qk 128 + 64, v 128), 3 dense layers (intermediate 18432), 58 MoE
// layers (256 routed experts of intermediate 2048, 8 active, 1 shared), the MTP module one more MoE
// layer with eh_proj and three norms; embedding and head 129280 x 7168.
TEST(CheckpointLayout, DeepSeekV3CountsFromItsShapes) {
  const std::int64_t h = 7168, vocab = 129280, heads = 128;
  const std::int64_t attention = h * 1536 + 1536 + 1536 * heads * 192 + h * 576 + 512 + 512 * heads * 256 +
                                 heads * 128 * h + 2 * h;  // + input and post-attention norms
  const std::int64_t expert = 3 * h * 2048, router = 256 * h + 256;
  const std::int64_t dense_layer = attention + 3 * h * 18432;
  const std::int64_t moe_layer_total = attention + router + expert + 256 * expert;
  const std::int64_t moe_layer_activated = attention + router + expert + 8 * expert;
  const ParameterCount count = count_parameters(bench_config("deepseek-v3-671b"));
  EXPECT_EQ(count.total, 2 * vocab * h + h + 3 * dense_layer + 58 * moe_layer_total);
  EXPECT_EQ(count.total, 671'026'419'200);
  EXPECT_EQ(count.activated, 2 * vocab * h + h + 3 * dense_layer + 58 * moe_layer_activated);
  EXPECT_EQ(count.activated, 37'552'297'472);
  EXPECT_EQ(count.read_per_token, count.activated - vocab * h);
  EXPECT_EQ(count.mtp, moe_layer_total + 2 * h * h + 3 * h);
  EXPECT_EQ(count.mtp, 11'610'068'224);
}

}  // namespace
}  // namespace dsv3
