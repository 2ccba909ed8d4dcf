// FP8 checkpoints: quantise the fixture's weights to E4M3 with 128x128 block scales in the official
// layout (weight F8_E4M3 + weight_scale_inv F32) and check the model they give.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/numeric.h"
#include "kernels/cpu/ops.h"
#include "io/fp8_blocks.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

// The Linear weights of attention and MLP/experts, as DeepSeek-V3 ships them in FP8; embedding,
// output head, router, norms and bias stay in higher precision.
bool quantised_in_fp8_checkpoints(const std::string& name) {
  return name.ends_with("_proj.weight") || name.ends_with("_proj_with_mqa.weight");
}

struct QuantisedCopies {
  std::filesystem::path fp8_dir;      // official layout: F8_E4M3 + weight_scale_inv
  std::filesystem::path dequant_dir;  // the same weights, dequantised to F32
  double weight_relative_error = 0.0; // ||W_fp8 - W|| / ||W|| over all quantised matrices
  int quantised = 0;
  int partial_edge_blocks = 0;
};

QuantisedCopies make_copies(const std::filesystem::path& root) {
  const TensorStore store = TensorStore::open(test::tiny_model_dir());
  QuantisedCopies copies{root / "fp8", root / "dequant"};
  std::filesystem::create_directories(copies.fp8_dir);
  std::filesystem::create_directories(copies.dequant_dir);

  std::vector<std::vector<std::byte>> buffers;  // keeps written bytes alive until written
  auto keep = [&buffers](const void* data, std::size_t bytes) {
    buffers.emplace_back(static_cast<const std::byte*>(data), static_cast<const std::byte*>(data) + bytes);
    return std::span<const std::byte>(buffers.back());
  };
  std::vector<TensorToWrite> fp8_tensors, dequant_tensors;
  double error_squares = 0.0, norm_squares = 0.0;
  for (const auto& name : store.names()) {
    const TensorView& view = store.require(name);
    if (!quantised_in_fp8_checkpoints(name)) {
      const TensorToWrite same{name, view.dtype, view.shape, {view.data, view.nbytes}};
      fp8_tensors.push_back(same);
      dequant_tensors.push_back(same);
      continue;
    }
    const std::int64_t rows = view.shape[0], cols = view.shape[1];
    std::vector<float> weight(static_cast<std::size_t>(rows * cols));
    Matrix original;
    original.name = name;
    original.dtype = view.dtype;
    original.rows = rows;
    original.cols = cols;
    original.data = view.data;
    kernels::dequantize_rows(original, 0, rows, weight.data());
    const Fp8Blocks blocks = quantize_fp8_blocks(weight.data(), rows, cols);
    std::vector<float> dequantised(weight.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = static_cast<std::size_t>(r * cols + c);
        dequantised[i] = fp8_e4m3_to_float(blocks.codes[i]) * blocks.scales[(r / 128) * blocks.scale_cols + c / 128];
        error_squares += std::pow(static_cast<double>(dequantised[i]) - weight[i], 2);
        norm_squares += std::pow(static_cast<double>(weight[i]), 2);
      }
    copies.quantised += 1;
    copies.partial_edge_blocks += (rows % 128 != 0) + (cols % 128 != 0);
    fp8_tensors.push_back({name, DType::F8_E4M3, view.shape, keep(blocks.codes.data(), blocks.codes.size())});
    fp8_tensors.push_back({name + "_scale_inv", DType::F32, {blocks.scale_rows, blocks.scale_cols},
                           keep(blocks.scales.data(), blocks.scales.size() * sizeof(float))});
    dequant_tensors.push_back({name, DType::F32, view.shape, keep(dequantised.data(), dequantised.size() * 4)});
  }
  copies.weight_relative_error = std::sqrt(error_squares / norm_squares);
  write_safetensors(copies.fp8_dir / "model.safetensors", fp8_tensors);
  write_safetensors(copies.dequant_dir / "model.safetensors", dequant_tensors);

  nlohmann::json config;
  std::ifstream(test::tiny_model_dir() / "config.json") >> config;
  std::ofstream(copies.dequant_dir / "config.json") << config.dump(2);
  config["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                                   {"weight_block_size", {128, 128}}};
  std::ofstream(copies.fp8_dir / "config.json") << config.dump(2);
  return copies;
}

TEST(Fp8, QuantisedCheckpointMatchesItsDequantisedWeightsAndStaysWithinRoundingError) {
  const auto root = test::temp_dir("fp8");
  const QuantisedCopies copies = make_copies(root);
  ASSERT_GT(copies.quantised, 20);
  ASSERT_GT(copies.partial_edge_blocks, 0) << "the fixture's shapes should exercise partial edge blocks";

  const Model fp8(Weights::load(copies.fp8_dir));
  ASSERT_EQ(fp8.weights().layers[0].attention.q_a_proj.dtype, DType::F8_E4M3);
  const Model dequantised(Weights::load(copies.dequant_dir));
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto ids = test::read_i64(reference->tensors().at("input_ids_3"));
  const auto expected = test::read_f32(reference->tensors().at("logits_3"));
  const auto tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t vocab = fp8.config().vocab_size;

  // 1. Reading FP8 + scales is exact: the same logits as the same weights stored in F32
  //    (only float32 summation order may differ).
  const ForwardOutput from_fp8 = fp8.forward(ids);
  const ForwardOutput from_dequantised = dequantised.forward(ids);
  const double loader_error =
      test::relative_l2(from_fp8.logits.data(), from_dequantised.logits.data(), tokens * vocab);
  EXPECT_LE(loader_error, 1e-5);

  // 2. Against the BF16 reference the difference is FP8's own rounding. E4M3 keeps 3 mantissa
  //    bits: round-to-nearest perturbs each weight by at most 2^-4 of its binade, and the measured
  //    relative error of the quantised matrices is eps_w = ||W_fp8 - W|| / ||W|| (~2-3%). A linear
  //    layer with independent rounding errors perturbs its output by ~eps_w relative; the errors of
  //    the k quantised linears a token's residual stream passes through add in quadrature, and
  //    the pre-norm residual blocks pass them on with gain ~1, so logits move by ~eps_w * sqrt(k).
  //    Here k = 7 per layer (q_a, q_b, kv_a, kv_b, o, and the MLP's up/gate then down counted as
  //    two), 3 layers: sqrt(21) ~ 4.6. We allow that bound, and require the error to be of
  //    FP8's size at all (> eps_w / 10): a wrong scale index or a lost block would be far off.
  const double logits_error = test::relative_l2(from_fp8.logits.data(), expected.data(), tokens * vocab);
  const double bound = copies.weight_relative_error * std::sqrt(21.0);
  std::printf("fp8: weight relative error %.4f, logits relative error %.4f (bound %.4f), loader %.2g\n",
              copies.weight_relative_error, logits_error, bound, loader_error);
  EXPECT_LT(copies.weight_relative_error, 0.0625);
  EXPECT_LE(logits_error, bound);
  EXPECT_GT(logits_error, copies.weight_relative_error / 10);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace dsv3
