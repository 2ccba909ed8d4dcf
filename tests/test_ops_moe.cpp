// Op tests for routing and the MoE: route, dispatch, experts, combine.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "op_harness.h"

namespace dsv3::op_harness {
namespace {

struct Routed {
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
};

Routed route_on(const Backend& backend, const std::vector<float>& logits, std::int64_t tokens, std::int64_t n_experts,
                const std::vector<float>& bias, const kernels::RouteParams& params) {
  DeviceTensor logits_tensor(backend, logits, tokens, n_experts);
  Routed routed{std::vector<std::int32_t>(static_cast<std::size_t>(tokens * params.top_k)),
                std::vector<float>(static_cast<std::size_t>(tokens * params.top_k))};
  backend.route(logits_tensor.view, bias, params, routed.experts, routed.weights);
  return routed;
}

// Ties must be exact to have one answer: equal (logit, bias) pairs tie on every device, but values
// that are only nearly equal would be ordered by rounding. The inputs below are drawn so that, per
// token, distinct experts' choices and distinct groups' scores are at least 1e-4 apart.
void expect_ties_are_exact(const std::vector<float>& logits, const std::vector<float>& bias, std::int64_t tokens,
                           std::int64_t n_experts, std::int64_t n_group) {
  const std::int64_t group_size = n_experts / n_group;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<double> choice(static_cast<std::size_t>(n_experts));
    for (std::int64_t e = 0; e < n_experts; ++e)
      choice[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[t * n_experts + e]))) + bias[e];
    for (std::int64_t a = 0; a < n_experts; ++a)
      for (std::int64_t b = 0; b < a; ++b)
        if (choice[a] != choice[b]) {
          ASSERT_GT(std::fabs(choice[a] - choice[b]), 1e-4) << "token " << t;
        }
    if (n_group == 1) continue;
    std::vector<double> group_score;
    for (std::int64_t g = 0; g < n_group; ++g) {
      std::vector<double> members(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
      std::sort(members.rbegin(), members.rend());
      group_score.push_back(members[0] + members[1]);
    }
    for (std::size_t a = 0; a < group_score.size(); ++a)
      for (std::size_t b = 0; b < a; ++b)
        if (group_score[a] != group_score[b]) {
          ASSERT_GT(std::fabs(group_score[a] - group_score[b]), 1e-4) << "token " << t;
        }
  }
}

TEST_P(OpHarness, RoutingWithTiesMaskedGroupsNormalisationAndScaling) {
  struct Case {
    std::int64_t experts;
    kernels::RouteParams params;
  };
  // DeepSeek-V3's shape scaled down (8 groups, 3 kept), one group (norm off), and 4 groups of 5.
  for (const Case& c : {Case{64, {8, 3, 6, true, 2.5}}, Case{24, {1, 1, 5, false, 1.0}}, Case{20, {4, 2, 4, false, 1.5}},
                        Case{20, {4, 2, 4, true, 1.0}}})
    for (std::int64_t tokens : kRows) {
      const std::string what = describe("route", {{"tokens", tokens},
                                                  {"experts", c.experts},
                                                  {"n_group", c.params.n_group},
                                                  {"topk_group", c.params.topk_group},
                                                  {"top_k", c.params.top_k},
                                                  {"norm", c.params.norm_topk_prob}});
      // Logits on a grid of 9 levels (0.37 apart, none opposite another: sigmoid(x) + sigmoid(-x)
      // = 1 would tie group sums only up to rounding) and biases of three levels: many exact ties.
      std::mt19937_64 generator(tokens * 131 + c.experts);
      std::vector<float> logits(static_cast<std::size_t>(tokens * c.experts)), bias(static_cast<std::size_t>(c.experts));
      for (float& l : logits) l = 0.37f * static_cast<float>(static_cast<int>(generator() % 9) - 4) + 0.11f;
      for (float& b : bias) b = 0.03125f * static_cast<float>(static_cast<int>(generator() % 3) - 1);
      std::fill_n(logits.begin(), c.experts, 0.11f);  // token 0: every expert ties
      if (tokens > 1) std::fill_n(logits.begin() + c.experts, c.experts, 0.48f);
      expect_ties_are_exact(logits, bias, tokens, c.experts, c.params.n_group);
      if (HasFatalFailure()) return;
      const Routed got = route_on(device(), logits, tokens, c.experts, bias, c.params);
      const Routed want = route_on(reference(), logits, tokens, c.experts, bias, c.params);
      EXPECT_EQ(got.experts, want.experts) << what;
      // A sigmoid, a sum of top_k scores, a division and the scaling factor.
      expect_within(got.weights, want.weights, absolute(want.weights), (c.params.top_k + 16) * kUnit, c.params.top_k, what);
    }
}

TEST(OpsReference, RoutingFollowsTheDefinitionOnAWorkedExample) {
  // 8 experts in 4 groups of 2, keep 2 groups, top 3, normalised, scaled by 2. Token 0's biased
  // choices: group 0 {0.5, 0.5} scores 1; group 1 {0.5 + 1/8, 0.5 - 1/8} also exactly 1; group 2
  // {σ(2), σ(-3) + 1/2} 1.43; group 3 {σ(0.6), σ(-3)} 0.69. Groups 2 and 0 are kept (0 wins the
  // tie with 1 by its lower index), so expert 2 (0.625) and expert 6 (0.646) are out despite
  // beating expert 0 (0.5): the choice is 4, 5, then 0 over 1 (a tie). Weights use the unbiased
  // scores. Token 1: every logit 0, so group 2 (bias 1/2) then group 0 (ties with 1 and 3), and
  // experts 5, 0, 1 (4 ties with 0 and 1 and loses on index), each weighted 2/3.
  const std::vector<float> bias = {0.0f, 0.0f, 0.125f, -0.125f, 0.0f, 0.5f, 0.0f, 0.0f};
  std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f, 2.0f, -3.0f, 0.6f, -3.0f,  // token 0
                               0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};   // token 1
  const kernels::RouteParams params{4, 2, 3, true, 2.0};
  std::vector<std::int32_t> experts(6);
  std::vector<float> weights(6);
  kernels::reference_backend().route(Tensor(logits.data(), 2, 8), bias, params, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{4, 5, 0, 5, 0, 1}));
  const double s4 = 1.0 / (1.0 + std::exp(-2.0)), s5 = 1.0 / (1.0 + std::exp(3.0)), s0 = 0.5;
  EXPECT_NEAR(weights[0], 2.0 * s4 / (s4 + s5 + s0), 1e-6);
  EXPECT_NEAR(weights[1], 2.0 * s5 / (s4 + s5 + s0), 1e-6);
  EXPECT_NEAR(weights[2], 2.0 * s0 / (s4 + s5 + s0), 1e-6);
  for (int k = 3; k < 6; ++k) EXPECT_NEAR(weights[k], 2.0 / 3.0, 1e-6);
  const kernels::RouteParams unnormalised{4, 2, 3, false, 2.0};
  kernels::reference_backend().route(Tensor(logits.data(), 2, 8), bias, unnormalised, experts, weights);
  EXPECT_NEAR(weights[0], 2.0 * s4, 1e-6);
}

// A MoE layer's routes: each token picks top_k distinct experts, in a choice order that is not
// expert order; experts in `unused` get no rows, expert 0 gets many.
std::vector<std::int32_t> crafted_routes(std::int64_t tokens, std::int64_t top_k, std::int64_t n_experts,
                                         const std::vector<std::int32_t>& unused, std::uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<std::int32_t> candidates;
  for (std::int32_t e = 0; e < n_experts; ++e)
    if (std::find(unused.begin(), unused.end(), e) == unused.end()) candidates.push_back(e);
  std::vector<std::int32_t> routes;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::shuffle(candidates.begin(), candidates.end(), generator);
    std::vector<std::int32_t> chosen(candidates.begin(), candidates.begin() + top_k);
    if (t % 2 == 0 && std::find(chosen.begin(), chosen.end(), 0) == chosen.end()) chosen[generator() % top_k] = 0;
    routes.insert(routes.end(), chosen.begin(), chosen.end());
  }
  return routes;
}

// The dispatch row serving each route slot.
std::vector<std::int64_t> row_of_slot(const kernels::Dispatch& dispatch) {
  std::vector<std::int64_t> rows(dispatch.slots.size(), -1);
  for (std::size_t i = 0; i < dispatch.slots.size(); ++i) rows[static_cast<std::size_t>(dispatch.slots[i])] = static_cast<std::int64_t>(i);
  return rows;
}

TEST_P(OpHarness, MoeDispatchGroupsRowsByExpert) {
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 37;
  for (std::int64_t tokens : kRows) {
    const std::string what = describe("moe_dispatch", {{"tokens", tokens}});
    const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens);
    const std::vector<float> x = random_values(static_cast<std::size_t>(tokens * hidden), tokens);
    DeviceTensor x_device(device(), x, tokens, hidden, hidden + 3);
    kernels::Workspace workspace(device());
    const kernels::Dispatch got = device().moe_dispatch(x_device.view, routes, n_experts, top_k, workspace);
    DeviceTensor x_reference(reference(), x, tokens, hidden);
    kernels::Workspace reference_workspace(reference());
    const kernels::Dispatch want = reference().moe_dispatch(x_reference.view, routes, n_experts, top_k, reference_workspace);
    ASSERT_EQ(got.top_k, top_k) << what;
    ASSERT_EQ(std::vector<std::int64_t>(got.offsets.begin(), got.offsets.end()),
              std::vector<std::int64_t>(want.offsets.begin(), want.offsets.end()))
        << what << ": rows per expert";
    ASSERT_EQ(got.slots.size(), routes.size()) << what;
    // Within an expert a token appears once, so the order of its rows is the device's choice.
    for (std::int64_t e = 0; e < n_experts; ++e) {
      std::vector<std::int64_t> got_slots(got.slots.begin() + got.offsets[e], got.slots.begin() + got.offsets[e + 1]);
      std::vector<std::int64_t> want_slots(want.slots.begin() + want.offsets[e], want.slots.begin() + want.offsets[e + 1]);
      std::sort(got_slots.begin(), got_slots.end());
      EXPECT_EQ(got_slots, want_slots) << what << ": expert " << e;
    }
    const std::vector<float> rows = download(got.rows);
    std::vector<float> expected(rows.size());
    for (std::size_t i = 0; i < got.slots.size(); ++i)
      std::copy_n(x.begin() + (got.slots[i] / top_k) * hidden, hidden, expected.begin() + static_cast<std::ptrdiff_t>(i) * hidden);
    expect_identical(rows, expected, hidden, what + ": rows");
  }
}

TEST_P(OpHarness, MoeExpertsOfEveryDtypeWithIdleExpertsKeepingGateAndUp) {
  // Expert e in kWeightDtypes[e % 4]; [130, 136] and [136, 130] matrices: FP8 blocks partial in
  // both dimensions. Experts 4 and 8 get no rows.
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 136, intermediate = 130;
  std::vector<std::array<HostWeight, 3>> weights;
  for (std::int64_t e = 0; e < n_experts; ++e) {
    const DType dtype = kWeightDtypes[e % 4];
    weights.push_back({random_weight(dtype, intermediate, hidden, 100 + e), random_weight(dtype, intermediate, hidden, 200 + e),
                       random_weight(dtype, hidden, intermediate, 300 + e)});
  }
  auto experts_on = [&](const Backend& backend, bool absolute_values) {
    std::vector<MlpWeights> experts;
    for (const auto& w : weights) {
      auto on = [&](const HostWeight& h) { return absolute_values ? h.absolute().on(backend) : h.on(backend); };
      experts.push_back({on(w[0]), on(w[1]), on(w[2])});
    }
    return experts;
  };
  const std::vector<MlpWeights> device_experts = experts_on(device(), false), reference_experts = experts_on(reference(), false);
  const std::vector<MlpWeights> absolute_experts = experts_on(reference(), true);
  for (std::int64_t tokens : {1, 7, 129}) {
    for (bool save : {false, true}) {
      const std::string what = describe(save ? "moe_experts keeping gate and up" : "moe_experts", {{"tokens", tokens}});
      const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens + 5);
      const std::vector<float> x = random_values(static_cast<std::size_t>(tokens * hidden), tokens + 6);
      struct Result {
        std::vector<float> out, saved;
        std::vector<std::int64_t> row_of_slot;
      };
      auto run = [&](const Backend& backend, const std::vector<MlpWeights>& experts) {
        DeviceTensor x_tensor(backend, x, tokens, hidden);
        kernels::Workspace workspace(backend);
        const kernels::Dispatch dispatch = backend.moe_dispatch(x_tensor.view, routes, n_experts, top_k, workspace);
        DeviceTensor out(backend, tokens * top_k, hidden), gate(backend, tokens * top_k, intermediate),
            up(backend, tokens * top_k, intermediate);
        backend.moe_experts(dispatch, experts, out.view, workspace, save ? gate.view : Tensor{}, save ? up.view : Tensor{});
        std::vector<float> saved;  // [rows, gate | up]
        for (std::int64_t r = 0; save && r < tokens * top_k; ++r) {
          const std::vector<float> gate_row = download(gate.view.row_range(r, r + 1)), up_row = download(up.view.row_range(r, r + 1));
          saved.insert(saved.end(), gate_row.begin(), gate_row.end());
          saved.insert(saved.end(), up_row.begin(), up_row.end());
        }
        return Result{out.values(), saved, row_of_slot(dispatch)};
      };
      // Rows compared by the route slot they serve; a device orders rows within an expert itself.
      auto by_slot = [&](const Result& result, const std::vector<float>& values, std::int64_t cols) {
        std::vector<float> ordered(values.size());
        for (std::size_t slot = 0; slot < result.row_of_slot.size(); ++slot)
          std::copy_n(values.begin() + result.row_of_slot[slot] * cols, cols, ordered.begin() + static_cast<std::ptrdiff_t>(slot) * cols);
        return ordered;
      };
      const Result got = run(device(), device_experts);
      const auto& [want_out, want_saved, out_magnitude, saved_magnitude] = reference_once(what, [&] {
        const Result want = run(reference(), reference_experts);
        // Magnitudes: M_g = Σ|x||W_gate|, M_u likewise; |silu'| <= 1.1 and |silu(g)| <= |g|, so
        // the activation is off by at most 2.1 (hidden + 4) u M_g M_u, and the output by
        // (2.1 (hidden + 4) + intermediate + 6) u Σ|W_down| M_g M_u.
        std::vector<float> out_magnitude, saved_magnitude;
        for (std::int64_t slot = 0; slot < tokens * top_k; ++slot) {
          const MlpWeights& w = absolute_experts[routes[slot]];
          const std::vector<float> x_row(x.begin() + (slot / top_k) * hidden, x.begin() + (slot / top_k + 1) * hidden);
          DeviceTensor x_absolute(reference(), absolute(x_row), 1, hidden);
          DeviceTensor gate(reference(), 1, intermediate), up(reference(), 1, intermediate), out(reference(), 1, hidden);
          reference().linear(x_absolute.view, w.gate_proj, gate.view);
          reference().linear(x_absolute.view, w.up_proj, up.view);
          std::vector<float> product = gate.values();
          const std::vector<float> up_values = up.values();
          for (std::int64_t i = 0; i < intermediate; ++i) product[i] *= up_values[i];
          DeviceTensor product_tensor(reference(), product, 1, intermediate);
          reference().linear(product_tensor.view, w.down_proj, out.view);
          const std::vector<float> gate_values = gate.values(), out_values = out.values();
          out_magnitude.insert(out_magnitude.end(), out_values.begin(), out_values.end());
          saved_magnitude.insert(saved_magnitude.end(), gate_values.begin(), gate_values.end());
          saved_magnitude.insert(saved_magnitude.end(), up_values.begin(), up_values.end());
        }
        return std::tuple{by_slot(want, want.out, hidden), save ? by_slot(want, want.saved, 2 * intermediate) : std::vector<float>{},
                          out_magnitude, saved_magnitude};
      });
      expect_within(by_slot(got, got.out, hidden), want_out, out_magnitude, (2.1 * (hidden + 4) + intermediate + 6) * kUnit,
                    hidden, what);
      if (save)
        expect_within(by_slot(got, got.saved, 2 * intermediate), want_saved, saved_magnitude, (hidden + 4) * kUnit,
                      2 * intermediate, what + ": gate | up");
    }
  }
}

// Runs moe_combine on `backend` with expert outputs given per route slot.
std::vector<float> combine_on(const Backend& backend, std::int64_t tokens, std::int64_t hidden, std::int64_t n_experts,
                              const std::vector<std::int32_t>& routes, const std::vector<float>& weights,
                              const std::vector<float>& out_by_slot, const std::vector<float>& y0) {
  const std::int64_t top_k = static_cast<std::int64_t>(routes.size()) / tokens;
  DeviceTensor x(backend, std::vector<float>(static_cast<std::size_t>(tokens * hidden), 0.0f), tokens, hidden);
  kernels::Workspace workspace(backend);
  const kernels::Dispatch dispatch = backend.moe_dispatch(x.view, routes, n_experts, top_k, workspace);
  std::vector<float> out(out_by_slot.size());
  for (std::size_t i = 0; i < dispatch.slots.size(); ++i)
    std::copy_n(out_by_slot.begin() + dispatch.slots[i] * hidden, hidden, out.begin() + static_cast<std::ptrdiff_t>(i) * hidden);
  DeviceTensor out_tensor(backend, out, tokens * top_k, hidden), y(backend, y0, tokens, hidden, hidden + 2);
  backend.moe_combine(dispatch, weights, out_tensor.view, y.view);
  EXPECT_TRUE(y.spare_columns_intact()) << "moe_combine wrote outside its view";
  return y.values();
}

TEST_P(OpHarness, MoeCombineAddsWeightedRowsToTheResidual) {
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 37;
  for (std::int64_t tokens : kRows) {
    const std::string what = describe("moe_combine", {{"tokens", tokens}});
    const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens + 9);
    const std::vector<float> weights = absolute(random_values(routes.size(), tokens + 10));
    const std::vector<float> out = random_values(routes.size() * hidden, tokens + 11);
    const std::vector<float> y0 = random_values(static_cast<std::size_t>(tokens * hidden), tokens + 12);
    const std::vector<float> got = combine_on(device(), tokens, hidden, n_experts, routes, weights, out, y0);
    const std::vector<float> want = combine_on(reference(), tokens, hidden, n_experts, routes, weights, out, y0);
    // y + Σ_k w_k o_k: top_k products and sums, relative to |y| + Σ |w| |o|.
    std::vector<float> magnitude = absolute(y0);
    for (std::int64_t slot = 0; slot < tokens * top_k; ++slot)
      for (std::int64_t c = 0; c < hidden; ++c) magnitude[(slot / top_k) * hidden + c] += weights[slot] * std::fabs(out[slot * hidden + c]);
    expect_within(got, want, magnitude, (2 * top_k + 2) * kUnit, hidden, what);
  }
}

TEST_P(OpHarness, MoeCombineSumsInExpertOrder) {
  // Each token's terms, in expert order, are +B, -B and 1 (B = 2^25, where float32's spacing is
  // 4), with power-of-two gate weights so every product is exact and FMA changes nothing. In
  // expert order (B - B) + 1 = 1; in any order that adds the 1 before either B it is lost (B + 1
  // rounds to B) and the sum is 0. The choice (slot) order differs from expert order for most
  // tokens, so only the promised order reproduces the reference bit for bit.
  // The second size is split over the thread pool by columns, 1029 of them (no multiple of a block).
  constexpr std::int64_t n_experts = 9, top_k = 3;
  for (const auto& [tokens, hidden] : {std::pair<std::int64_t, std::int64_t>{7, 5}, {515, 1029}}) {
    const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, 17);
    std::vector<float> weights(routes.size()), out(routes.size() * hidden);
    for (std::int64_t t = 0; t < tokens; ++t) {
      const auto begin = routes.begin() + t * top_k;
      const std::int32_t low = *std::min_element(begin, begin + top_k), high = *std::max_element(begin, begin + top_k);
      for (std::int64_t k = 0; k < top_k; ++k) {
        const std::int64_t slot = t * top_k + k;
        weights[slot] = std::ldexp(1.0f, static_cast<int>(k) - 1);
        const float term = routes[slot] == low ? 0x1p25f : routes[slot] == high ? 1.0f : -0x1p25f;
        for (std::int64_t c = 0; c < hidden; ++c)
          out[slot * hidden + c] = term / weights[slot] * static_cast<float>(c + 1);
      }
    }
    const std::vector<float> y0(static_cast<std::size_t>(tokens * hidden), 0.0f);
    const std::vector<float> got = combine_on(device(), tokens, hidden, n_experts, routes, weights, out, y0);
    const std::vector<float> want = combine_on(reference(), tokens, hidden, n_experts, routes, weights, out, y0);
    ASSERT_EQ(want[0], 1.0f) << "the reference no longer sums in expert order";
    expect_identical(got, want, hidden, describe("moe_combine order", {{"tokens", tokens}, {"hidden", hidden}}));
  }
}

}  // namespace
}  // namespace dsv3::op_harness
