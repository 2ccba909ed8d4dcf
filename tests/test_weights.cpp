// Weights::load against altered copies of the tiny-dsv3 checkpoint: each missing, misshapen or
// wrongly typed tensor must fail at load naming the tensor (and file and shapes where they apply).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/numeric.h"
#include "model/weights.h"
#include "support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A rewritable copy of the tiny model: its tensors (views into the original file) and config.
class WeightsCopy : public ::testing::Test {
 protected:
  // Also called again within a test, to start over from an unaltered copy.
  void SetUp() override {
    tensors_.clear();
    owned_.clear();
    dir_ = test::temp_dir("model");
    original_ = SafetensorsFile::open(test::tiny_model_dir() / "model.safetensors");
    for (const auto& [name, view] : original_->tensors())
      tensors_.push_back({name, view.dtype, view.shape, {view.data, view.nbytes}});
    std::ifstream in(test::tiny_model_dir() / "config.json");
    config_ = json::parse(in);
  }
  void TearDown() override { fs::remove_all(dir_); }

  TensorToWrite& tensor(const std::string& name) {
    for (auto& t : tensors_)
      if (t.name == name) return t;
    throw std::logic_error("the tiny model has no tensor " + name);
  }
  void remove(const std::string& name) {
    std::erase_if(tensors_, [&](const TensorToWrite& t) { return t.name == name; });
  }
  // Gives `name` a new dtype, with zero bytes of the right size.
  void retype(const std::string& name, DType dtype) {
    TensorToWrite& t = tensor(name);
    std::size_t count = dtype_size(dtype);
    for (auto dim : t.shape) count *= static_cast<std::size_t>(dim);
    owned_.push_back(std::make_unique<std::vector<std::byte>>(count));
    t.dtype = dtype;
    t.bytes = *owned_.back();
  }
  void add_f32(const std::string& name, std::vector<std::int64_t> shape, DType dtype = DType::F32) {
    tensors_.push_back({name, DType::F32, std::move(shape), {}});
    retype(name, dtype);
  }

  fs::path model_file() const { return dir_ / "model.safetensors"; }
  Weights load() {
    write_safetensors(model_file(), tensors_, {{"format", "pt"}});
    std::ofstream(dir_ / "config.json") << config_.dump(2);
    return Weights::load(dir_);
  }
  std::string load_error() {
    return test::error_message([&] { load(); });
  }
  void use_fp8() {
    config_["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}};
  }

  fs::path dir_;
  std::shared_ptr<const SafetensorsFile> original_;
  std::vector<TensorToWrite> tensors_;
  std::vector<std::unique_ptr<std::vector<std::byte>>> owned_;
  json config_;
};

TEST_F(WeightsCopy, UnalteredCopyLoads) {
  const Weights w = load();
  EXPECT_EQ(w.layers.size(), 3u);
  EXPECT_TRUE(w.layers[0].mlp.has_value());
  ASSERT_TRUE(w.layers[1].moe.has_value());
  EXPECT_EQ(w.layers[1].moe->experts.size(), 16u);
  EXPECT_EQ(w.layers[1].moe->e_score_correction_bias.size(), 16u);
  ASSERT_EQ(w.mtp.size(), 1u);
  EXPECT_EQ(w.embed_tokens.dtype, DType::BF16);
  EXPECT_EQ(w.store.names().size(), original_->tensors().size());
}

TEST_F(WeightsCopy, MissingTensorIsNamed) {
  for (const std::string name :
       {"model.layers.1.self_attn.kv_b_proj.weight", "model.layers.2.mlp.gate.e_score_correction_bias",
        "model.layers.2.mlp.experts.15.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.layers.3.eh_proj.weight", "model.norm.weight", "lm_head.weight"}) {
    SetUp();
    remove(name);
    EXPECT_THAT(load_error(), AllOf(HasSubstr(dir_.string()), HasSubstr("tensor " + name + " is missing"))) << name;
  }
}

// Every tensor of checkpoint_layout is required, by name; only the MTP modules' copies of the
// embedding and head may be absent, and then the originals serve.
TEST_F(WeightsCopy, EveryLayoutTensorIsRequiredByName) {
  const auto layout = checkpoint_layout(ModelConfig::from_json(config_));
  for (const CheckpointTensor& t : layout) {
    SetUp();
    remove(t.name);
    if (t.copy_of.empty()) {
      EXPECT_THAT(load_error(), HasSubstr("tensor " + t.name + " is missing")) << t.name;
    } else {
      const Weights w = load();
      EXPECT_EQ(w.slot(t).matrix->name, t.copy_of);
      EXPECT_EQ(w.slot(t).matrix->data, w.store.require(t.copy_of).data);
    }
  }
}

// A stored vector's values as float32 (the fixture's norms are BF16, its router biases F32).
std::vector<float> stored_values(const TensorView& stored) {
  std::vector<float> values(static_cast<std::size_t>(stored.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (stored.dtype == DType::F32) {
      std::memcpy(&values[i], stored.data + 4 * i, 4);
    } else {
      std::uint16_t bits;
      std::memcpy(&bits, stored.data + 2 * i, 2);
      values[i] = bf16_to_float(bits);
    }
  }
  return values;
}

// Each tensor of the layout lands in a field of its own: matrices view the stored tensor of their
// name, vectors hold its values. Vectors carry no name, so the norms are also checked field by
// field against the tensor their field is named after.
TEST_F(WeightsCopy, EveryLayoutTensorFillsItsOwnField) {
  const Weights w = load();
  std::set<const void*> fields;
  for (const CheckpointTensor& t : checkpoint_layout(w.config)) {
    const Weights::Slot slot = w.slot(t);
    ASSERT_TRUE((slot.matrix == nullptr) != (slot.vector == nullptr)) << t.name;
    EXPECT_TRUE(fields.insert(slot.matrix ? static_cast<const void*>(slot.matrix) : slot.vector).second)
        << t.name << " shares a field with another tensor";
    const TensorView& stored = w.store.require(t.name);
    if (slot.matrix) {
      EXPECT_EQ(slot.matrix->name, t.name);
      EXPECT_EQ(slot.matrix->data, stored.data) << t.name;
      EXPECT_EQ((std::vector<std::int64_t>{slot.matrix->rows, slot.matrix->cols}), t.shape) << t.name;
    } else {
      EXPECT_EQ(*slot.vector, stored_values(stored)) << t.name;
    }
  }
  EXPECT_EQ(w.lm_head.name, "lm_head.weight");

  auto values = [&](const std::string& name) { return stored_values(w.store.require(name)); };
  auto expect_layer = [&](const LayerWeights& layer, const std::string& p) {
    EXPECT_EQ(layer.input_layernorm, values(p + ".input_layernorm.weight")) << p;
    EXPECT_EQ(layer.post_attention_layernorm, values(p + ".post_attention_layernorm.weight")) << p;
    EXPECT_EQ(layer.attention.q_a_layernorm, values(p + ".self_attn.q_a_layernorm.weight")) << p;
    EXPECT_EQ(layer.attention.kv_a_layernorm, values(p + ".self_attn.kv_a_layernorm.weight")) << p;
    if (layer.moe) {
      EXPECT_EQ(layer.moe->e_score_correction_bias, values(p + ".mlp.gate.e_score_correction_bias")) << p;
    }
  };
  for (std::size_t i = 0; i < w.layers.size(); ++i) expect_layer(w.layers[i], "model.layers." + std::to_string(i));
  EXPECT_EQ(w.norm, values("model.norm.weight"));
  ASSERT_EQ(w.mtp.size(), 1u);
  expect_layer(w.mtp[0].layer, "model.layers.3");
  EXPECT_EQ(w.mtp[0].enorm, values("model.layers.3.enorm.weight"));
  EXPECT_EQ(w.mtp[0].hnorm, values("model.layers.3.hnorm.weight"));
  EXPECT_EQ(w.mtp[0].shared_head_norm, values("model.layers.3.shared_head.norm.weight"));
}

TEST_F(WeightsCopy, WrongShapeNamesTensorFileAndBothShapes) {
  TensorToWrite& o_proj = tensor("model.layers.2.self_attn.o_proj.weight");
  ASSERT_EQ(o_proj.shape, (std::vector<std::int64_t>{256, 128}));
  o_proj.shape = {128, 256};
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model.layers.2.self_attn.o_proj.weight"), HasSubstr(model_file().string()),
                                  HasSubstr("shape [128,256]"), HasSubstr("expected [256,128]")));
}

TEST_F(WeightsCopy, WrongRankForANormVector) {
  tensor("model.layers.0.input_layernorm.weight").shape = {1, 256};
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model.layers.0.input_layernorm.weight"), HasSubstr("shape [1,256]"),
                                  HasSubstr("expected [256]")));
}

TEST_F(WeightsCopy, UnsupportedDtypeForAMatrixOrAVector) {
  retype("model.layers.0.mlp.up_proj.weight", DType::I32);
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model.layers.0.mlp.up_proj.weight"), HasSubstr(model_file().string()),
                                  HasSubstr("dtype I32 is not supported")));
  SetUp();
  retype("model.norm.weight", DType::F8_E4M3);
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model.norm.weight"), HasSubstr("dtype F8_E4M3 is not supported")));
}

TEST_F(WeightsCopy, ConfigHiddenSizeMismatchIsAShapeError) {
  config_["hidden_size"] = 128;
  EXPECT_THAT(load_error(), AllOf(HasSubstr("model.embed_tokens.weight"), HasSubstr(model_file().string()),
                                  HasSubstr("shape [1024,256]"), HasSubstr("expected [1024,128] from config.json")));
}

// q_b_proj is [heads x qk_head_dim, q_lora_rank] = [192, 96]: with 128 x 128 blocks its scales are
// [ceil(192/128), ceil(96/128)] = [2, 1], partial blocks in both directions.
constexpr const char* kFp8Weight = "model.layers.1.self_attn.q_b_proj.weight";
constexpr const char* kFp8Scale = "model.layers.1.self_attn.q_b_proj.weight_scale_inv";

TEST_F(WeightsCopy, Fp8WeightWithCeilDivBlockScalesLoads) {
  use_fp8();
  retype(kFp8Weight, DType::F8_E4M3);
  add_f32(kFp8Scale, {2, 1});
  const Weights w = load();
  const Matrix& q_b = w.layers[1].attention.q_b_proj;
  EXPECT_EQ(q_b.dtype, DType::F8_E4M3);
  EXPECT_EQ(q_b.rows, 192);
  EXPECT_EQ(q_b.cols, 96);
  ASSERT_TRUE(q_b.scales);
  EXPECT_EQ(q_b.scales->size(), 2u);
}

TEST_F(WeightsCopy, Fp8WeightWithoutItsScaleNamesTheScale) {
  use_fp8();
  retype(kFp8Weight, DType::F8_E4M3);
  EXPECT_THAT(load_error(), AllOf(HasSubstr(dir_.string()), HasSubstr(std::string("tensor ") + kFp8Scale + " is missing")));
}

TEST_F(WeightsCopy, Fp8ScaleWithTheWrongBlockShapeNamesTheScale) {
  use_fp8();
  retype(kFp8Weight, DType::F8_E4M3);
  add_f32(kFp8Scale, {1, 1});  // floor division instead of ceil
  EXPECT_THAT(load_error(), AllOf(HasSubstr(kFp8Scale), HasSubstr(model_file().string()), HasSubstr("shape [1,1]"),
                                  HasSubstr("expected [2,1]")));
}

TEST_F(WeightsCopy, Fp8ScaleInTheWrongDtypeNamesTheScale) {
  use_fp8();
  retype(kFp8Weight, DType::F8_E4M3);
  add_f32(kFp8Scale, {2, 1}, DType::BF16);
  EXPECT_THAT(load_error(), AllOf(HasSubstr(kFp8Scale), HasSubstr("dtype BF16, expected F32")));
}

TEST_F(WeightsCopy, Fp8ScaleShapeFollowsTheConfigBlockSize) {
  use_fp8();
  config_["quantization_config"]["weight_block_size"] = {64, 64};
  retype(kFp8Weight, DType::F8_E4M3);
  add_f32(kFp8Scale, {2, 1});
  EXPECT_THAT(load_error(), AllOf(HasSubstr(kFp8Scale), HasSubstr("expected [3,2]")));
}

}  // namespace
}  // namespace dsv3
