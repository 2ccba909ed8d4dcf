// Each block's backward pass against central finite differences of its forward pass.
//
// The check is directional: for a random direction v over the block's input and parameters,
// <grad, v> must match the five-point central difference of L(θ + εv) for L = Σ r·y (r fixed
// random, summed in double). A directional derivative sums many gradient entries, so it stays far
// above the float32 rounding of L (~1e-7 relative); at ε = 1e-3 the measured errors are 1e-6..3e-4
// (they grow as ε^4 above, as 1/ε below), under the 2e-3 tolerance, while a wrong term moves them
// by 1e-1 or more (checked by breaking the RoPE transpose and the balance-loss gradient). The
// fixture test (test_grad.cpp) is the primary ground truth; these pin each block separately,
// including shapes the fixture lacks (plain q_proj, unnormalised gates, the balance loss).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>

#include "core/error.h"
#include "model/blocks.h"
#include "support.h"
#include "train/blocks.h"

namespace dsv3::train {
namespace {

constexpr double kStep = 1e-3;
constexpr double kTolerance = 2e-3;

ModelConfig small_config(bool q_lora = true, bool norm_topk_prob = true) {
  nlohmann::json j = {
      {"vocab_size", 40},         {"hidden_size", 32},       {"intermediate_size", 48},
      {"moe_intermediate_size", 16}, {"num_hidden_layers", 2}, {"first_k_dense_replace", 1},
      {"num_attention_heads", 2}, {"kv_lora_rank", 16},      {"qk_nope_head_dim", 8},
      {"qk_rope_head_dim", 8},    {"v_head_dim", 8},         {"n_routed_experts", 8},
      {"n_shared_experts", 1},    {"num_experts_per_tok", 2}, {"n_group", 4},
      {"topk_group", 2},          {"routed_scaling_factor", 2.5}, {"norm_topk_prob", norm_topk_prob},
      {"max_position_embeddings", 256}, {"num_nextn_predict_layers", 1},
      {"rope_scaling",
       {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 8}, {"beta_fast", 32},
        {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}}};
  j["q_lora_rank"] = q_lora ? nlohmann::json(12) : nlohmann::json(nullptr);
  return ModelConfig::from_json(j, "small test config");
}

// Perturbs each vector (a block input or a Parameter's values) along a random direction and
// compares the central difference of `loss` with the gradients given by the caller.
struct Variable {
  std::vector<float>* value;
  const std::vector<float>* grad;
};

double directional_error(const std::vector<Variable>& variables, const std::function<double()>& loss,
                         double step = kStep) {
  std::vector<std::vector<float>> directions, originals;
  double analytic = 0.0;
  for (std::size_t i = 0; i < variables.size(); ++i) {
    directions.push_back(test::random_values(variables[i].value->size(), 1000 + i));
    originals.push_back(*variables[i].value);
    for (std::size_t j = 0; j < directions[i].size(); ++j)
      analytic += static_cast<double>((*variables[i].grad)[j]) * directions[i][j];
  }
  auto shift = [&](double step) {
    for (std::size_t i = 0; i < variables.size(); ++i)
      for (std::size_t j = 0; j < directions[i].size(); ++j)
        (*variables[i].value)[j] = static_cast<float>(originals[i][j] + step * directions[i][j]);
  };
  auto at = [&](double step) {
    shift(step);
    return loss();
  };
  // Five-point stencil: the h² truncation term of the plain central difference cancels.
  const double near = at(step) - at(-step), far = at(2 * step) - at(-2 * step);
  shift(0.0);
  const double numeric = (8.0 * near - far) / (12.0 * step);
  const double error = std::abs(numeric - analytic) / std::abs(analytic);
  std::printf("directional derivative: analytic %.8g, central difference %.8g, relative error %.2e\n", analytic, numeric,
              error);
  return error;
}

double weighted_sum(const std::vector<float>& r, const std::vector<float>& y) {
  double total = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) total += static_cast<double>(r[i]) * y[i];
  return total;
}

std::vector<Variable> variables_of(std::initializer_list<Parameter*> parameters) {
  std::vector<Variable> variables;
  for (Parameter* p : parameters)
    if (p) variables.push_back({&p->value, &p->grad});
  return variables;
}

TEST(Backward, RmsNormMatchesFiniteDifferences) {
  const std::int64_t rows = 5, dim = 24;
  Parameter weight{"w", {dim}, test::random_values(dim, 1), std::vector<float>(dim, 0.0f)};
  std::vector<float> x = test::random_values(rows * dim, 2), r = test::random_values(rows * dim, 3), y(x.size());
  std::vector<float> d_x(x.size(), 0.0f);
  rmsnorm_backward(x.data(), rows, weight, 1e-6f, r.data(), d_x.data());
  auto variables = variables_of({&weight});
  variables.push_back({&x, &d_x});
  EXPECT_LE(directional_error(variables,
                              [&] {
                                kernels::default_backend().rmsnorm(kernels::Tensor(x.data(), rows, dim), weight.value,
                                                                   1e-6f, kernels::Tensor(y.data(), rows, dim));
                                return weighted_sum(r, y);
                              }),
            kTolerance);
}

TEST(Backward, CrossEntropyMatchesFiniteDifferences) {
  const std::int64_t rows = 4, vocab = 30;
  const std::vector<std::int64_t> targets = {3, 0, 29, 3};
  std::vector<float> logits = test::random_values(rows * vocab, 4, 3.0f), d_logits(logits.size()), scratch(logits.size());
  const double loss = cross_entropy(logits.data(), rows, vocab, targets, 0.5f, d_logits.data());
  EXPECT_GT(loss, 0.0);
  EXPECT_LE(directional_error({{&logits, &d_logits}},
                              [&] { return 0.5 * cross_entropy(logits.data(), rows, vocab, targets, 1.0f, scratch.data()); }),
            kTolerance);
}

TEST(Backward, EmbeddingAddsEveryOccurrenceOfAToken) {
  Parameter table{"embed", {5, 3}, std::vector<float>(15, 0.0f), std::vector<float>(15, 0.0f)};
  const std::vector<std::int64_t> ids = {2, 4, 2};
  const std::vector<float> d_y = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  embedding_backward(table, ids, d_y.data());
  const std::vector<float> expected = {0, 0, 0, 0, 0, 0, 8, 10, 12, 0, 0, 0, 4, 5, 6};
  EXPECT_EQ(table.grad, expected);
  EXPECT_THROW(embedding_backward(table, std::vector<std::int64_t>{5}, d_y.data()), dsv3::Error);
}

// A decoder-layer block (MLA, MLP or MoE) of a randomly initialised small model.
struct BlockCase {
  TrainableModel model;
  std::int64_t tokens = 7;
  std::vector<std::int64_t> positions;
  std::vector<float> x, r;

  explicit BlockCase(ModelConfig config)
      : model(TrainableModel::initialise(config, 11, 0.3f)), positions(static_cast<std::size_t>(tokens)) {
    std::iota(positions.begin(), positions.end(), 0);
    x = test::random_values(static_cast<std::size_t>(tokens * config.hidden_size), 12);
    r = test::random_values(x.size(), 13);
    // Norm weights away from 1 so their gradients are not degenerate.
    for (auto& [name, p] : model.parameters) {
      if (p.shape.size() != 1) continue;
      p.value = test::random_values(p.value.size(), 14, 0.3f);
      for (float& v : p.value) v += 1.0f;
    }
  }

  std::vector<Variable> all_variables(std::vector<float>& d_x) {
    std::vector<Variable> variables{{&x, &d_x}};
    for (auto& [name, p] : model.parameters) variables.push_back({&p.value, &p.grad});
    return variables;
  }
};

// One block of the model's own forward pass (model/blocks.h) over rows at positions 0.., keeping
// what the backward pass reads in `record`. The weights are rebuilt from the parameters at every
// run, since the checks move the parameters' values.
struct BlockForward {
  const ModelConfig& config;
  const kernels::Backend& backend = kernels::default_backend();
  RopeTable rope;
  LatentCache cache;
  LatentCache::Table table;
  kernels::Workspace workspace{backend}, kept{backend};
  StepRecord record{kept};
  std::vector<BatchRows::Run> runs;
  std::vector<std::int64_t> positions;
  std::optional<Weights> weights;

  BlockForward(const ModelConfig& c, std::int64_t tokens)
      : config(c), rope(c), cache(c, {.capacity_tokens = tokens, .dtype = DType::F32}, backend) {
    cache.reserve(table, tokens);
    runs = {{&table, 0, tokens, 0, true}};
    positions.resize(static_cast<std::size_t>(tokens));
    std::iota(positions.begin(), positions.end(), 0);
  }
  Backward backward() const { return {config, backend, rope.params(), static_cast<float>(config.rms_norm_eps)}; }

  // Runs `block(context, weights, layer record)` on fresh weights and an empty record.
  template <typename Block>
  LayerRecord& run(TrainableModel& model, Block&& block) {
    weights.emplace(model.weights());
    kept.reset();
    workspace.reset();
    record.layers.clear();
    Context context{config, backend, workspace, rope.params(), static_cast<float>(config.rms_norm_eps), &record};
    context.layer = &record.layers.emplace_back();
    block(context, *weights, *context.layer);
    return record.layers.back();
  }
  BatchRows batch() { return {runs, positions}; }
};

kernels::Tensor view(std::vector<float>& values, std::int64_t rows) {
  return {values.data(), rows, static_cast<std::int64_t>(values.size()) / rows};
}

void check_mla(const ModelConfig& config) {
  BlockCase b(config);
  BlockForward f(config, b.tokens);
  std::vector<float> y(b.x.size()), d_x(b.x.size(), 0.0f);
  auto forward = [&] {
    return &f.run(b.model, [&](Context& context, const Weights& w, LayerRecord&) {
      mla_forward(context, w.layers[0].attention, 0, view(b.x, b.tokens), f.batch(), f.cache, view(y, b.tokens));
    });
  };
  const LayerRecord* record = forward();
  mla_backward(f.backward(), b.model.layers[0].attention, f.weights->layers[0].attention, b.x.data(), b.tokens,
               b.positions, *record, b.r.data(), d_x.data());
  EXPECT_LE(directional_error(b.all_variables(d_x),
                              [&] {
                                forward();
                                return weighted_sum(b.r, y);
                              }),
            kTolerance);
}

TEST(Backward, MlaWithLowRankQueriesMatchesFiniteDifferences) { check_mla(small_config(true)); }

TEST(Backward, MlaWithPlainQueryProjectionMatchesFiniteDifferences) { check_mla(small_config(false)); }

TEST(Backward, SwigluMlpMatchesFiniteDifferences) {
  const ModelConfig config = small_config();
  BlockCase b(config);
  BlockForward f(config, b.tokens);
  std::vector<float> y(b.x.size()), d_x(b.x.size(), 0.0f);
  auto forward = [&] {
    return &f.run(b.model, [&](Context& context, const Weights& w, LayerRecord& record) {
      mlp_forward(context, *w.layers[0].mlp, view(b.x, b.tokens), view(y, b.tokens), &record.gate, &record.up);
    });
  };
  const LayerRecord* record = forward();
  mlp_backward(f.backward(), *b.model.layers[0].mlp, *f.weights->layers[0].mlp, b.x.data(), b.tokens,
               record->gate.data, record->up.data, b.r.data(), d_x.data());
  EXPECT_LE(directional_error(b.all_variables(d_x),
                              [&] {
                                forward();
                                return weighted_sum(b.r, y);
                              }),
            kTolerance);
}

// output_weight 0 leaves the balance loss alone, whose gradient would otherwise be lost in the
// rounding of the much larger output term.
void check_moe(const ModelConfig& config, double alpha, float output_weight = 1.0f) {
  BlockCase b(config);
  for (float& r : b.r) r *= output_weight;
  BlockForward f(config, b.tokens);
  std::vector<float> y(b.x.size()), d_x(b.x.size(), 0.0f);
  auto forward = [&] {
    return &f.run(b.model, [&](Context& context, const Weights& w, LayerRecord&) {
      moe_forward(context, *w.layers[1].moe, view(b.x, b.tokens), view(y, b.tokens));
    });
  };
  const LayerRecord* record = forward();
  const double balance = balance_loss(config, *record, b.tokens, alpha);
  EXPECT_EQ(balance == 0.0, alpha == 0.0);
  moe_backward(f.backward(), *b.model.layers[1].moe, *f.weights->layers[1].moe, b.x.data(), b.tokens, alpha, *record,
               b.r.data(), d_x.data());
  const std::vector<std::int32_t> chosen(record->experts.begin(), record->experts.end());
  EXPECT_LE(directional_error(b.all_variables(d_x),
                              [&] {
                                const LayerRecord* again = forward();
                                // A different choice would make the loss jump: the check needs the same experts.
                                EXPECT_EQ(std::vector<std::int32_t>(again->experts.begin(), again->experts.end()), chosen);
                                return weighted_sum(b.r, y) + balance_loss(config, *again, b.tokens, alpha);
                              }),
            kTolerance);
}

TEST(Backward, MoeWithNormalisedGatesMatchesFiniteDifferences) { check_moe(small_config(true, true), 0.0); }

TEST(Backward, MoeWithBalanceLossMatchesFiniteDifferences) { check_moe(small_config(true, true), 0.3); }

TEST(Backward, BalanceLossAloneMatchesFiniteDifferences) { check_moe(small_config(true, true), 0.3, 0.0f); }

TEST(Backward, MoeWithUnnormalisedGatesMatchesFiniteDifferences) { check_moe(small_config(true, false), 0.3); }

TEST(Backward, WholeModelWithMtpAndBalanceLossMatchesFiniteDifferences) {
  const ModelConfig config = small_config();
  TrainableModel model = TrainableModel::initialise(config, 21, 0.3f);
  // Perturbing every weight at once would change some expert choices (the loss jumps there), so
  // the bias pins the choice to experts 0 and 2 (groups 0 and 1); the gate weights and the balance
  // loss still depend on every router score, which the bias does not enter.
  for (LayerParameters* layer : {&model.layers[1], &model.mtp[0].layer}) {
    layer->moe->e_score_correction_bias[0] = 10.0f;
    layer->moe->e_score_correction_bias[2] = 10.0f;
  }
  const std::vector<std::int64_t> ids = {5, 17, 3, 3, 39, 0, 22, 8, 11};
  const ObjectiveOptions options{.mtp_weight = 0.3, .balance_alpha = 0.1};
  model.zero_gradients();
  const LossReport report = accumulate_gradients(model, ids, options);
  EXPECT_GT(report.mtp, 0.0);
  EXPECT_GT(report.balance, 0.0);
  std::vector<std::vector<float>> gradients;
  std::vector<Variable> variables;
  for (auto& [name, p] : model.parameters) gradients.push_back(p.grad);
  std::size_t i = 0;
  for (auto& [name, p] : model.parameters) variables.push_back({&p.value, &gradients[i++]});
  // The whole model is far more curved along a direction that moves every weight: the stencil's
  // error measured 8e-5, 3e-4, 9e-4, 3e-3 at steps 5e-4, 7e-4, 1e-3, 1.5e-3 (truncation, ~h^3.5),
  // while the float32 loss (~4) rounds at ~1e-6, so a smaller step is the right trade here.
  EXPECT_LE(directional_error(
                variables, [&] { return accumulate_gradients(model, ids, options).total; }, 3e-4),
            kTolerance);
}

TEST(Backward, TiedRoutingScoresGiveFiniteGradients) {
  // A zero router makes every score 0.5: every group and expert ties. The choice must still be
  // valid (distinct experts) and the gradient finite.
  const ModelConfig config = small_config();
  TrainableModel model = TrainableModel::initialise(config, 31, 0.3f);
  for (auto& [name, p] : model.parameters)
    if (name.ends_with("mlp.gate.weight")) std::fill(p.value.begin(), p.value.end(), 0.0f);
  model.zero_gradients();
  const LossReport report =
      accumulate_gradients(model, std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}, {.mtp_weight = 0.3, .balance_alpha = 0.1});
  EXPECT_TRUE(std::isfinite(report.total));
  for (const auto& [name, p] : model.parameters)
    for (float g : p.grad) ASSERT_TRUE(std::isfinite(g)) << name;
  const std::vector<float>& router_grad = model.parameter("model.layers.1.mlp.gate.weight").grad;
  EXPECT_TRUE(std::any_of(router_grad.begin(), router_grad.end(), [](float g) { return g != 0.0f; }));

  std::vector<float> x = test::random_values(4 * 32, 5), y(x.size());
  BlockForward f(config, 4);
  const LayerRecord& record = f.run(model, [&](Context& context, const Weights& w, LayerRecord&) {
    moe_forward(context, *w.layers[1].moe, view(x, 4), view(y, 4));
  });
  for (std::int64_t t = 0; t < 4; ++t) EXPECT_NE(record.experts[2 * t], record.experts[2 * t + 1]);
}

}  // namespace
}  // namespace dsv3::train
