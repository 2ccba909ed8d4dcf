// dsv3 init's random checkpoints: the official layout (the fixture's own tensor names), loadable,
// deterministic, and the FP8 variant close to the BF16 one.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

TEST(Init, LayoutHasExactlyTheFixtureCheckpointsTensors) {
  const TensorStore fixture = TensorStore::open(test::tiny_model_dir());
  std::set<std::string> expected, ours;
  for (const auto& name : fixture.names()) expected.insert(name);
  for (const auto& tensor : checkpoint_layout(ModelConfig::load(test::tiny_model_dir()))) {
    ours.insert(tensor.name);
    EXPECT_EQ(fixture.require(tensor.name).shape, tensor.shape) << tensor.name;
  }
  EXPECT_EQ(ours, expected);
}

// dsv3 init writes exactly the layout: its tensors, in their shapes, BF16 (router bias F32), FP8
// with a block scale for the FP8-eligible ones when asked; and the result loads. Checked on the
// fixture's shape and on one turned every way the layout branches (tied embeddings, plain
// q_proj, two MTP modules, no shared experts).
TEST(Init, RandomCheckpointHoldsExactlyTheLayout) {
  nlohmann::json variant;
  std::ifstream(test::tiny_model_dir() / "config.json") >> variant;
  variant["tie_word_embeddings"] = true;
  variant["q_lora_rank"] = nullptr;
  variant["num_nextn_predict_layers"] = 2;
  variant["n_shared_experts"] = 0;
  const auto root = test::temp_dir("layout");
  for (const ModelConfig& config : {ModelConfig::load(test::tiny_model_dir()), ModelConfig::from_json(variant)}) {
    for (const bool fp8 : {false, true}) {
      const auto dir = root / (fp8 ? "fp8" : "bf16");
      write_random_checkpoint(config, dir, {.seed = 1, .fp8 = fp8});
      const TensorStore store = TensorStore::open(dir);
      std::set<std::string> expected, written;
      for (const auto& name : store.names()) written.insert(name);
      for (const CheckpointTensor& t : checkpoint_layout(config)) {
        expected.insert(t.name);
        const TensorView* view = store.find(t.name);
        if (!view) continue;
        EXPECT_EQ(view->shape, t.shape) << t.name;
        const DType dtype = t.kind == CheckpointTensor::Kind::router_bias ? DType::F32
                            : fp8 && t.fp8_in_official_checkpoints      ? DType::F8_E4M3
                                                                        : DType::BF16;
        EXPECT_EQ(view->dtype, dtype) << t.name;
        if (dtype == DType::F8_E4M3) expected.insert(fp8_scale_tensor_name(t.name));
      }
      EXPECT_EQ(written, expected);
      const Weights w = Weights::load(dir);
      EXPECT_EQ(w.mtp.size(), static_cast<std::size_t>(config.num_nextn_predict_layers));
      EXPECT_EQ(w.lm_head.data == w.embed_tokens.data, config.tie_word_embeddings);
    }
  }
  std::filesystem::remove_all(root);
}

std::vector<float> weight_values(const Weights& w, const Matrix& m) {
  std::vector<float> values(static_cast<std::size_t>(m.rows * m.cols));
  kernels::dequantize_rows(m, 0, m.rows, values.data());
  return values;
}

TEST(Init, RandomCheckpointsLoadRunAndAreDeterministic) {
  const auto root = test::temp_dir("init");
  ModelConfig config = ModelConfig::load(test::tiny_model_dir());
  write_random_checkpoint(config, root / "bf16", {.seed = 7});
  write_random_checkpoint(config, root / "again", {.seed = 7, .shard_bytes = 2'000'000});
  write_random_checkpoint(config, root / "fp8", {.seed = 7, .fp8 = true});
  write_random_checkpoint(config, root / "other", {.seed = 8});
  EXPECT_TRUE(std::filesystem::exists(root / "again" / "model.safetensors.index.json"));

  const Model bf16(Weights::load(root / "bf16"));
  const Model sharded(Weights::load(root / "again"));
  const Model fp8(Weights::load(root / "fp8"));
  const Model other(Weights::load(root / "other"));
  EXPECT_EQ(fp8.weights().layers[1].moe->experts[3].up_proj.dtype, DType::F8_E4M3);
  EXPECT_EQ(fp8.weights().layers[1].moe->router.dtype, DType::BF16);

  const std::vector<std::int64_t> ids = {1, 2, 3, 500, 7};
  const auto logits = bf16.forward(ids).logits;
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(sharded.forward(ids).logits, logits) << "same seed, same model, however sharded";
  EXPECT_NE(other.forward(ids).logits, logits) << "another seed, another model";

  const auto& matrix = bf16.weights().layers[0].attention.kv_b_proj;
  const auto values = weight_values(bf16.weights(), matrix);
  double sum = 0.0, squares = 0.0;
  for (float v : values) sum += v, squares += static_cast<double>(v) * v;
  const double mean = sum / values.size(), std = std::sqrt(squares / values.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(std, 0.02, 0.001);
  EXPECT_EQ(bf16.weights().layers[0].input_layernorm, std::vector<float>(256, 1.0f));
  EXPECT_EQ(bf16.weights().layers[1].moe->e_score_correction_bias, std::vector<float>(16, 0.0f));
  // The MTP module's embedding and head are copies of the main ones, as in the released checkpoints.
  EXPECT_EQ(weight_values(bf16.weights(), bf16.weights().mtp[0].embed_tokens),
            weight_values(bf16.weights(), bf16.weights().embed_tokens));

  // FP8 holds the same weights to within E4M3's rounding (3 mantissa bits: 2^-4 relative).
  const auto quantised = weight_values(fp8.weights(), fp8.weights().layers[0].attention.kv_b_proj);
  EXPECT_LE(test::relative_l2(quantised.data(), values.data(), static_cast<std::int64_t>(values.size())), 0.0625);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {

// The shapes of other DeepSeek-V3-architecture models (Moonlight: plain q_proj, one expert
// group, no rope scaling, no MTP) run through the same code: load, forward, and cached decode
// agreeing with the full forward.
TEST(Init, MoonlightShapedModelRunsAndDecodesConsistently) {
  nlohmann::json config;
  std::ifstream(test::tiny_model_dir() / "config.json") >> config;
  config["q_lora_rank"] = nullptr;
  config["n_group"] = 1;
  config["topk_group"] = 1;
  config.erase("rope_scaling");
  config["num_nextn_predict_layers"] = 0;
  const ModelConfig c = ModelConfig::from_json(config);
  const auto root = test::temp_dir("moonlight");
  write_random_checkpoint(c, root, {.seed = 3, .fp8 = true});
  const Model model(Weights::load(root));
  EXPECT_TRUE(model.weights().mtp.empty());
  EXPECT_FALSE(model.weights().layers[0].attention.q_proj.empty());
  const std::vector<std::int64_t> ids = {5, 17, 300, 2, 999, 64, 7, 8, 9, 10};
  const ForwardOutput full = model.forward(ids);
  for (float v : full.logits) ASSERT_TRUE(std::isfinite(v));
  // Prefill half, then decode one token at a time (absorbed attention over the cache).
  LatentCache cache(c, {.capacity_tokens = 32, .dtype = DType::F32});
  LatentCache::Table table;
  cache.reserve(table, static_cast<std::int64_t>(ids.size()));
  const std::int64_t vocab = c.vocab_size;
  kernels::Workspace workspace(model.backend());
  double worst = 0.0;
  for (std::int64_t start = 0; start < static_cast<std::int64_t>(ids.size());) {
    const std::int64_t count = start == 0 ? 5 : 1;
    const StepSegment segment{&table, start, std::span(ids).subspan(start, count), false};
    const StepOutput out = model.step(std::span(&segment, 1), cache, workspace);
    const std::int64_t last = start + count - 1;
    worst = std::max(worst, test::relative_l2(out.logits.data, full.logits.data() + last * vocab, vocab));
    start += count;
  }
  EXPECT_LE(worst, 1e-5);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace dsv3
