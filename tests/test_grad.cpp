// `dsv3 grad` against the PyTorch-autograd gradients of the fixture (float64 transformers), the
// primary ground truth for train/, plus the properties of the objective the fixture cannot show.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "support.h"
#include "train/train.h"

namespace dsv3 {
namespace {

double read_f64(const TensorView& view) {
  EXPECT_EQ(view.dtype, DType::F64) << view.name;
  double value = 0.0;
  std::memcpy(&value, view.data, sizeof value);
  return value;
}

std::vector<std::int64_t> fixture_ids() {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  return test::read_i64(reference->tensors().at("input_ids_2"));
}

TEST(Grad, CliMatchesAutogradGradientsOfTheFixture) {
  const auto dir = test::temp_dir("grad");
  const auto fixture = test::tiny_model_dir();
  std::string output;
  const int code = test::run_dsv3("grad --model " + fixture.string() + " --input " + (fixture / "reference.safetensors").string() +
                           " --seq 2 --mtp-weight 0.3 --output " + (dir / "grads.safetensors").string(),
                       output);
  ASSERT_EQ(code, 0) << output;
  const auto ours = SafetensorsFile::open(dir / "grads.safetensors");
  const auto reference = SafetensorsFile::open(fixture / "grads.safetensors");

  // Same tensor names, dtypes and shapes: the file is a contract.
  ASSERT_EQ(ours->tensors().size(), reference->tensors().size());
  for (const char* loss : {"loss_main", "loss_mtp"}) {
    const double expected = read_f64(reference->tensors().at(loss));
    const double got = read_f64(ours->tensors().at(loss));
    std::printf("%s: ours %.10f, autograd %.10f, relative error %.2e\n", loss, got, expected,
                std::abs(got - expected) / std::abs(expected));
    EXPECT_LE(std::abs(got - expected), 1e-6 * std::abs(expected)) << loss;
  }
  std::vector<std::pair<double, std::string>> errors;
  for (const auto& [name, view] : reference->tensors()) {
    if (!name.starts_with("grad:")) continue;
    SCOPED_TRACE(name);
    ASSERT_TRUE(ours->tensors().contains(name));
    const TensorView& mine = ours->tensors().at(name);
    ASSERT_EQ(mine.dtype, DType::F32);
    ASSERT_EQ(mine.shape, view.shape);
    const auto a = test::read_f32(mine), b = test::read_f32(view);
    double norm = 0.0;
    for (float x : b) norm += static_cast<double>(x) * x;
    // An expert no token chose has an exactly zero gradient; anything else is compared relatively.
    double error = 0.0;
    if (norm > 0.0) {
      error = test::relative_l2(a.data(), b.data(), static_cast<std::int64_t>(a.size()));
    } else {
      for (float x : a) error = std::max(error, static_cast<double>(std::abs(x)));
    }
    errors.emplace_back(error, name);
  }
  std::sort(errors.rbegin(), errors.rend());
  std::printf("%zu gradients compared; worst relative L2 errors:\n", errors.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(5, errors.size()); ++i)
    std::printf("  %.3e  %s\n", errors[i].first, errors[i].second.c_str());
  EXPECT_EQ(errors.size(), reference->tensors().size() - 2);
  for (const auto& [error, name] : errors) EXPECT_LE(error, 1e-3) << name;
  EXPECT_FALSE(ours->tensors().contains("grad:model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_FALSE(ours->tensors().contains("grad:model.layers.3.embed_tokens.weight"));
  EXPECT_FALSE(ours->tensors().contains("grad:model.layers.3.shared_head.head.weight"));
  std::filesystem::remove_all(dir);
}

TEST(Grad, RouterBiasOnlyChoosesExpertsSoTheLossIgnoresSmallChanges) {
  // The bias enters only the top-k choice, which is piecewise constant: nudging it without changing
  // any choice leaves the loss bit-identical, so its true gradient is 0 (and it has no Parameter).
  train::TrainableModel model = train::TrainableModel::from_weights(Weights::load(test::tiny_model_dir()));
  const auto ids = fixture_ids();
  const train::ObjectiveOptions options{.mtp_weight = 0.3, .balance_alpha = 0.01};
  const double before = train::accumulate_gradients(model, ids, options).total;
  std::mt19937 generator(7);
  std::uniform_real_distribution<float> nudge(-1e-6f, 1e-6f);
  for (auto& layer : model.layers)
    if (layer.moe)
      for (float& b : layer.moe->e_score_correction_bias) b += nudge(generator);
  const double after = train::accumulate_gradients(model, ids, options).total;
  EXPECT_EQ(before, after);
  for (const auto& [name, p] : model.parameters) EXPECT_EQ(name.find("e_score_correction_bias"), std::string::npos);
}

TEST(Grad, StoredActivationsMatchTheFormulaAndRecomputationSavesMemory) {
  train::TrainableModel model = train::TrainableModel::from_weights(Weights::load(test::tiny_model_dir()));
  const auto ids = fixture_ids();
  const auto tokens = static_cast<std::int64_t>(ids.size());
  const train::LossReport report = train::accumulate_gradients(model, ids, {});
  const train::ActivationMemory memory = train::activation_memory(model.config, tokens);
  EXPECT_EQ(report.stored_activation_bytes, memory.stored);
  std::printf("tiny-dsv3, sequence 2 (T=%lld): stored %lld B; storing norms/up-projections/SwiGLU too: %lld B "
              "(+%.0f%%); also the attention probabilities: %lld B\n",
              static_cast<long long>(tokens), static_cast<long long>(memory.stored),
              static_cast<long long>(memory.stored + memory.norms_and_up_projections),
              100.0 * static_cast<double>(memory.norms_and_up_projections) / static_cast<double>(memory.stored),
              static_cast<long long>(memory.stored + memory.norms_and_up_projections + memory.attention_probabilities));
  EXPECT_GT(memory.norms_and_up_projections, 0);

  const ModelConfig bench = ModelConfig::load(test::shared_dir() / "bench" / "bench-1b.json");
  const train::ActivationMemory big = train::activation_memory(bench, 4096);
  const double mib = 1024.0 * 1024.0;
  std::printf("bench-1b, T=4096: stored %.1f MiB; without recomputing norms/up-projections/SwiGLU %.1f MiB "
              "(+%.0f%%); also storing attention probabilities %.1f MiB\n",
              static_cast<double>(big.stored) / mib, static_cast<double>(big.stored + big.norms_and_up_projections) / mib,
              100.0 * static_cast<double>(big.norms_and_up_projections) / static_cast<double>(big.stored),
              static_cast<double>(big.stored + big.norms_and_up_projections + big.attention_probabilities) / mib);
  EXPECT_GT(big.norms_and_up_projections, big.stored / 4);
}

}  // namespace
}  // namespace dsv3
