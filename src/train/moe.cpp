// SwiGLU MLPs and DeepSeekMoE for training. Expert choice is piecewise constant, so gradients reach
// the router only through the gate weights g = rsf · s_k / Σ_{chosen} s (sigmoid scores s, without
// the correction bias) and through the sequence-wise balance loss; the bias gets none.
#include <algorithm>
#include <cmath>
#include <vector>

#include "train/blocks.h"

namespace dsv3::train {
namespace {

std::size_t count(std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); }

// For each expert, the route slots (token * top_k + k) that chose it, in token order.
std::vector<std::vector<std::int64_t>> assignments(const Routes& routes, std::int64_t experts) {
  std::vector<std::vector<std::int64_t>> slots(static_cast<std::size_t>(experts));
  for (std::size_t i = 0; i < routes.experts.size(); ++i) slots[routes.experts[i]].push_back(static_cast<std::int64_t>(i));
  return slots;
}

// f_i = N_r / (K_r T) · #{t : i among token t's chosen experts} (the paper's eq. 18).
std::vector<double> load_fractions(const Routes& routes, std::int64_t experts, std::int64_t top_k, std::int64_t tokens) {
  std::vector<double> f(static_cast<std::size_t>(experts), 0.0);
  const double unit = static_cast<double>(experts) / static_cast<double>(top_k * tokens);
  for (std::int32_t e : routes.experts) f[e] += unit;
  return f;
}

}  // namespace

void mlp_forward(const MlpParameters& w, const float* x, std::int64_t tokens, MlpSaved& saved, float* out) {
  const std::int64_t intermediate = w.gate_proj->rows();
  saved.gate.resize(count(tokens, intermediate));
  saved.up.resize(saved.gate.size());
  linear(x, tokens, *w.gate_proj, saved.gate.data());
  linear(x, tokens, *w.up_proj, saved.up.data());
  mlp_output(w, saved, tokens, out);
}

void mlp_output(const MlpParameters& w, const MlpSaved& saved, std::int64_t tokens, float* out) {
  std::vector<float> act(saved.gate.size());
  kernels::silu_mul(saved.gate.data(), saved.up.data(), static_cast<std::int64_t>(act.size()), act.data());
  linear(act.data(), tokens, *w.down_proj, out);
}

void mlp_backward(const MlpParameters& w, const float* x, std::int64_t tokens, const MlpSaved& saved,
                  const float* d_out, float* d_x) {
  const auto size = static_cast<std::int64_t>(saved.gate.size());
  std::vector<float> act(saved.gate.size()), d_act(saved.gate.size(), 0.0f);
  kernels::silu_mul(saved.gate.data(), saved.up.data(), size, act.data());
  linear_backward(act.data(), tokens, *w.down_proj, d_out, d_act.data());
  std::vector<float> d_gate(act.size()), d_up(act.size());
  silu_mul_backward(saved.gate.data(), saved.up.data(), d_act.data(), size, d_gate.data(), d_up.data());
  linear_backward(x, tokens, *w.gate_proj, d_gate.data(), d_x);
  linear_backward(x, tokens, *w.up_proj, d_up.data(), d_x);
}

double moe_forward(const MoeParameters& w, const ModelConfig& c, const float* x, std::int64_t tokens, double alpha,
                   MoeSaved& saved, float* out) {
  const std::int64_t hidden = c.hidden_size, experts = c.n_routed_experts, top_k = c.num_experts_per_tok;
  saved.scores.resize(count(tokens, experts));
  linear(x, tokens, *w.router, saved.scores.data());
  saved.routes.experts.resize(count(tokens, top_k));
  saved.routes.weights.resize(count(tokens, top_k));
  kernels::default_backend().route(kernels::Tensor(saved.scores.data(), tokens, experts), w.e_score_correction_bias,
                                   {.n_group = c.n_group, .topk_group = c.topk_group, .top_k = top_k,
                                    .norm_topk_prob = c.norm_topk_prob, .routed_scaling_factor = c.routed_scaling_factor},
                                   saved.routes.experts, saved.routes.weights);
  for (float& s : saved.scores) s = 1.0f / (1.0f + std::exp(-s));  // as route() computes them

  if (w.shared_experts) {
    mlp_forward(*w.shared_experts, x, tokens, saved.shared, out);
  } else {
    std::fill_n(out, tokens * hidden, 0.0f);
  }
  const auto slots = assignments(saved.routes, experts);
  saved.experts.assign(static_cast<std::size_t>(experts), MlpSaved{});
  std::vector<float> rows, expert_out;
  for (std::int64_t e = 0; e < experts; ++e) {
    const auto n = static_cast<std::int64_t>(slots[e].size());
    if (n == 0) continue;
    rows.resize(count(n, hidden));
    expert_out.resize(rows.size());
    for (std::int64_t r = 0; r < n; ++r) std::copy_n(x + (slots[e][r] / top_k) * hidden, hidden, rows.data() + r * hidden);
    mlp_forward(w.experts[e], rows.data(), n, saved.experts[e], expert_out.data());
    for (std::int64_t r = 0; r < n; ++r) {
      float* target = out + (slots[e][r] / top_k) * hidden;
      const float gate = saved.routes.weights[slots[e][r]];
      for (std::int64_t i = 0; i < hidden; ++i) target[i] += gate * expert_out[r * hidden + i];
    }
  }

  if (alpha == 0.0) return 0.0;
  // L_bal = alpha Σ_i f_i P_i with P_i = 1/T Σ_t s'_{i,t}, s' the scores normalised over all experts.
  const std::vector<double> f = load_fractions(saved.routes, experts, top_k, tokens);
  double loss = 0.0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* s = saved.scores.data() + t * experts;
    double total = 0.0, weighted = 0.0;
    for (std::int64_t i = 0; i < experts; ++i) {
      total += s[i];
      weighted += f[i] * s[i];
    }
    loss += weighted / total;
  }
  return alpha * loss / static_cast<double>(tokens);
}

void moe_backward(const MoeParameters& w, const ModelConfig& c, const float* x, std::int64_t tokens, double alpha,
                  const MoeSaved& saved, const float* d_out, float* d_x) {
  const std::int64_t hidden = c.hidden_size, experts = c.n_routed_experts, top_k = c.num_experts_per_tok;
  if (w.shared_experts) mlp_backward(*w.shared_experts, x, tokens, saved.shared, d_out, d_x);

  // Experts: d y_e = g · d_out for each of its rows, and d g = d_out · y_e.
  std::vector<double> d_gate(count(tokens, top_k), 0.0);
  const auto slots = assignments(saved.routes, experts);
  std::vector<float> rows, expert_out, d_expert_out, d_rows;
  for (std::int64_t e = 0; e < experts; ++e) {
    const auto n = static_cast<std::int64_t>(slots[e].size());
    if (n == 0) continue;
    rows.resize(count(n, hidden));
    expert_out.resize(rows.size());
    d_expert_out.resize(rows.size());
    d_rows.assign(rows.size(), 0.0f);
    for (std::int64_t r = 0; r < n; ++r) std::copy_n(x + (slots[e][r] / top_k) * hidden, hidden, rows.data() + r * hidden);
    mlp_output(w.experts[e], saved.experts[e], n, expert_out.data());
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t slot = slots[e][r];
      const float* d_row = d_out + (slot / top_k) * hidden;
      const float gate = saved.routes.weights[slot];
      double dot = 0.0;
      for (std::int64_t i = 0; i < hidden; ++i) {
        dot += static_cast<double>(d_row[i]) * expert_out[r * hidden + i];
        d_expert_out[r * hidden + i] = gate * d_row[i];
      }
      d_gate[slot] = dot;
    }
    mlp_backward(w.experts[e], rows.data(), n, saved.experts[e], d_expert_out.data(), d_rows.data());
    for (std::int64_t r = 0; r < n; ++r) {
      float* target = d_x + (slots[e][r] / top_k) * hidden;
      for (std::int64_t i = 0; i < hidden; ++i) target[i] += d_rows[r * hidden + i];
    }
  }

  // Router: d s from the gate weights (through the top-k normalisation) and the balance loss, then
  // through the sigmoid.
  const std::vector<double> f =
      alpha != 0.0 ? load_fractions(saved.routes, experts, top_k, tokens) : std::vector<double>{};
  std::vector<float> d_logits(count(tokens, experts));
  std::vector<double> d_scores(static_cast<std::size_t>(experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* s = saved.scores.data() + t * experts;
    std::fill(d_scores.begin(), d_scores.end(), 0.0);
    const std::int32_t* chosen = saved.routes.experts.data() + t * top_k;
    const double* d_g = d_gate.data() + t * top_k;
    if (c.norm_topk_prob) {
      // g_k = rsf s_k / S, S = Σ_chosen s + 1e-20:  d s_j = rsf (d g_j - Σ_k d g_k s_k / S) / S.
      double total = 0.0, weighted = 0.0;
      for (std::int64_t k = 0; k < top_k; ++k) total += s[chosen[k]];
      total += 1e-20;
      for (std::int64_t k = 0; k < top_k; ++k) weighted += d_g[k] * s[chosen[k]];
      for (std::int64_t k = 0; k < top_k; ++k)
        d_scores[chosen[k]] += c.routed_scaling_factor * (d_g[k] - weighted / total) / total;
    } else {
      for (std::int64_t k = 0; k < top_k; ++k) d_scores[chosen[k]] += c.routed_scaling_factor * d_g[k];
    }
    if (alpha != 0.0) {
      // d/d s_j of alpha/T Σ_i f_i s_i / Σ s  =  alpha/T (f_j - Σ_i f_i s'_i) / Σ s.
      double total = 0.0, weighted = 0.0;
      for (std::int64_t i = 0; i < experts; ++i) {
        total += s[i];
        weighted += f[i] * s[i];
      }
      const double mean_f = weighted / total;
      for (std::int64_t j = 0; j < experts; ++j)
        d_scores[j] += alpha / static_cast<double>(tokens) * (f[j] - mean_f) / total;
    }
    for (std::int64_t j = 0; j < experts; ++j)
      d_logits[t * experts + j] = static_cast<float>(d_scores[j] * s[j] * (1.0 - s[j]));
  }
  linear_backward(x, tokens, *w.router, d_logits.data(), d_x);
}

}  // namespace dsv3::train
