#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "model/blocks.h"

namespace dsv3 {

void mlp_forward(const MlpWeights& w, const float* x, std::int64_t tokens, float* out) {
  const std::int64_t intermediate = w.gate_proj.rows;
  std::vector<float> gate(static_cast<std::size_t>(tokens * intermediate));
  std::vector<float> up(gate.size());
  kernels::linear(x, tokens, w.gate_proj, gate.data());
  kernels::linear(x, tokens, w.up_proj, up.data());
  kernels::silu_mul(gate.data(), up.data(), tokens * intermediate, gate.data());
  kernels::linear(gate.data(), tokens, w.down_proj, out);
}

Routes route(const MoeWeights& w, const ModelConfig& c, const float* x, std::int64_t tokens) {
  const std::int64_t experts = c.n_routed_experts, top_k = c.num_experts_per_tok;
  const std::int64_t group_size = experts / c.n_group;
  std::vector<float> logits(static_cast<std::size_t>(tokens * experts));
  kernels::linear(x, tokens, w.router, logits.data());

  Routes routes;
  routes.experts.resize(static_cast<std::size_t>(tokens * top_k));
  routes.weights.resize(routes.experts.size());
  std::vector<float> scores(static_cast<std::size_t>(experts)), choice(scores.size());
  std::vector<float> group_scores(static_cast<std::size_t>(c.n_group));
  std::vector<std::int32_t> order(static_cast<std::size_t>(std::max(experts, c.n_group)));
  for (std::int64_t t = 0; t < tokens; ++t) {
    // Sigmoid affinities; the bias only steers the choice (auxiliary-loss-free balancing).
    for (std::int64_t e = 0; e < experts; ++e) {
      scores[e] = 1.0f / (1.0f + std::exp(-logits[t * experts + e]));
      choice[e] = scores[e] + w.e_score_correction_bias[e];
    }
    // Group score = sum of the group's two best biased scores; keep the topk_group best groups.
    if (c.n_group > 1) {
      for (std::int64_t g = 0; g < c.n_group; ++g) {
        const float* begin = choice.data() + g * group_size;
        float best = -std::numeric_limits<float>::infinity(), second = best;
        for (std::int64_t i = 0; i < group_size; ++i) {
          if (begin[i] > best) {
            second = best;
            best = begin[i];
          } else if (begin[i] > second) {
            second = begin[i];
          }
        }
        group_scores[g] = best + second;
      }
      std::iota(order.begin(), order.begin() + c.n_group, 0);
      std::stable_sort(order.begin(), order.begin() + c.n_group,
                       [&](std::int32_t a, std::int32_t b) { return group_scores[a] > group_scores[b]; });
      for (std::int64_t rank = c.topk_group; rank < c.n_group; ++rank)  // masked with -inf, as DeepSeek does
        std::fill_n(choice.begin() + order[rank] * group_size, group_size, -std::numeric_limits<float>::infinity());
    }
    std::iota(order.begin(), order.begin() + experts, 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.begin() + experts,
                      [&](std::int32_t a, std::int32_t b) { return choice[a] > choice[b] || (choice[a] == choice[b] && a < b); });
    // Gate weights are the unbiased scores of the chosen experts.
    double total = 0.0;
    for (std::int64_t k = 0; k < top_k; ++k) total += scores[order[k]];
    const double normaliser = c.norm_topk_prob ? total + 1e-20 : 1.0;
    for (std::int64_t k = 0; k < top_k; ++k) {
      routes.experts[t * top_k + k] = order[k];
      routes.weights[t * top_k + k] =
          static_cast<float>(scores[order[k]] / normaliser * c.routed_scaling_factor);
    }
  }
  return routes;
}

void moe_forward(const MoeWeights& w, const ModelConfig& c, const float* x, std::int64_t tokens, float* out) {
  const std::int64_t hidden = c.hidden_size, top_k = c.num_experts_per_tok;
  const Routes routes = route(w, c, x, tokens);

  if (w.shared_experts) {
    mlp_forward(*w.shared_experts, x, tokens, out);
  } else {
    std::fill_n(out, tokens * hidden, 0.0f);
  }
  // Tokens grouped by expert, so each expert runs once over all its rows.
  struct ExpertJob {
    std::int64_t expert = 0;
    std::vector<std::int64_t> slots;  // indices into routes (token * top_k + k)
    std::vector<float> out;           // [slots, hidden]
  };
  std::vector<ExpertJob> jobs(static_cast<std::size_t>(c.n_routed_experts));
  for (std::int64_t i = 0; i < tokens * top_k; ++i) jobs[routes.experts[i]].slots.push_back(i);
  for (std::int64_t e = 0; e < c.n_routed_experts; ++e) jobs[e].expert = e;
  std::erase_if(jobs, [](const ExpertJob& job) { return job.slots.empty(); });
  auto run_expert = [&](ExpertJob& job) {
    const auto count = static_cast<std::int64_t>(job.slots.size());
    std::vector<float> rows(static_cast<std::size_t>(count * hidden));
    for (std::int64_t r = 0; r < count; ++r) std::copy_n(x + (job.slots[r] / top_k) * hidden, hidden, rows.data() + r * hidden);
    job.out.resize(rows.size());
    mlp_forward(w.experts[job.expert], rows.data(), count, job.out.data());
  };
  // With several experts per core, one task per expert (its small matrices on one core) beats
  // splitting each small matrix across the cores and meeting three times per expert.
  ThreadPool& pool = ThreadPool::global();
  if (static_cast<std::int64_t>(jobs.size()) >= 2 * pool.size()) {
    pool.parallel_for(static_cast<std::int64_t>(jobs.size()), 1, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t j = first; j < last; ++j) run_expert(jobs[j]);
    });
  } else {
    for (auto& job : jobs) run_expert(job);
  }
  // Summed in expert order, so the result does not depend on how the work was scheduled.
  for (const auto& job : jobs)
    for (std::size_t r = 0; r < job.slots.size(); ++r) {
      float* target = out + (job.slots[r] / top_k) * hidden;
      const float gate = routes.weights[job.slots[r]];
      for (std::int64_t i = 0; i < hidden; ++i) target[i] += gate * job.out[r * hidden + i];
    }
}

}  // namespace dsv3
