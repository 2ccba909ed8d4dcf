// The one checkpoint-layout table and its users: the parameter count is the sum over it, the
// trainable model holds exactly its parameters, export writes exactly its tensors. (The loader and
// random init are checked against it in test_weights.cpp and test_init.cpp.)
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/numeric.h"
#include "io/checkpoint_layout.h"
#include "model/weights.h"
#include "support.h"
#include "train_support.h"

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

// A stored tensor's values as float32 (the fixture holds BF16, its router biases F32).
std::vector<float> values_of(const TensorView& view) {
  std::vector<float> values(static_cast<std::size_t>(view.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (view.dtype == DType::F32) {
      std::memcpy(&values[i], view.data + 4 * i, 4);
    } else {
      EXPECT_EQ(view.dtype, DType::BF16) << view.name;
      std::uint16_t bits;
      std::memcpy(&bits, view.data + 2 * i, 2);
      values[i] = bf16_to_float(bits);
    }
  }
  return values;
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

TEST(CheckpointLayout, TrainableModelHasExactlyTheTablesParameters) {
  const ModelConfig c = ModelConfig::from_json(test::tiny_config_json(64));
  auto model = train::TrainableModel::initialise(c, 1);
  model.set_fp8_gemms(true);
  std::set<std::string> expected, biases;
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    if (!t.copy_of.empty()) continue;  // shared with the main embedding and head
    if (t.kind == Kind::router_bias) {
      const auto& layer = t.mtp_depth >= 0 ? model.mtp[t.mtp_depth].layer : model.layers[t.layer];
      ASSERT_TRUE(layer.moe) << t.name;
      EXPECT_EQ(static_cast<std::int64_t>(layer.moe->e_score_correction_bias.size()), t.numel()) << t.name;
      biases.insert(t.name);
      continue;
    }
    expected.insert(t.name);
    const train::Parameter& p = model.parameter(t.name);
    EXPECT_EQ(p.shape, t.shape) << t.name;
    EXPECT_EQ(p.fp8_gemm, t.fp8_in_official_checkpoints) << t.name;
  }
  std::set<std::string> ours;
  for (const auto& [name, p] : model.parameters) ours.insert(name);
  EXPECT_EQ(ours, expected);
  EXPECT_EQ(biases.size(), 2u);  // layer 1 and the MTP layer 2
}

// from_weights fills every parameter from the tensor of the same name, and export writes the
// table back: every tensor of the layout, nothing else, the MTP copies included.
TEST(CheckpointLayout, TrainingReadsAndWritesExactlyTheTable) {
  const Weights weights = Weights::load(test::tiny_model_dir());
  const auto model = train::TrainableModel::from_weights(weights);
  const auto layout = checkpoint_layout(weights.config);
  for (const CheckpointTensor& t : layout) {
    if (!t.copy_of.empty()) continue;
    const TensorView& stored = weights.store.require(t.name);
    const std::vector<float> values = values_of(stored);
    if (t.kind == Kind::router_bias) {
      const auto& layer = t.mtp_depth >= 0 ? model.mtp[t.mtp_depth].layer : model.layers[t.layer];
      EXPECT_EQ(layer.moe->e_score_correction_bias, values) << t.name;
    } else {
      EXPECT_EQ(model.parameters.at(t.name).value, values) << t.name;
    }
  }
  const auto dir = test::temp_dir("export");
  train::export_model(model, dir, DType::F32);
  const TensorStore exported = TensorStore::open(dir);
  const std::vector<std::string> stored_names = exported.names();
  const std::set<std::string> names(stored_names.begin(), stored_names.end());
  std::set<std::string> expected;
  for (const CheckpointTensor& t : layout) {
    expected.insert(t.name);
    if (const TensorView* view = exported.find(t.name)) {
      EXPECT_EQ(view->shape, t.shape) << t.name;
    }
  }
  EXPECT_EQ(names, expected);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv3
