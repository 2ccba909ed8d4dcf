// The backward passes of SwiGLU MLPs and DeepSeekMoE. Expert choice is piecewise constant, so
// gradients reach the router only through the gate weights g = rsf · s_k / Σ_{chosen} s (sigmoid
// scores s, without the correction bias) and through the sequence-wise balance loss; the bias gets
// none. The experts' rows are the model's dispatch (grouped by expert, token order within one).
#include <algorithm>
#include <cmath>
#include <vector>

#include "train/blocks.h"

namespace dsv3::train {
namespace {

std::size_t count(std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); }

// f_i = N_r / (K_r T) · #{t : i among token t's chosen experts} (the paper's eq. 18).
std::vector<double> load_fractions(std::span<const std::int32_t> routes, std::int64_t experts, std::int64_t top_k,
                                   std::int64_t tokens) {
  std::vector<double> f(static_cast<std::size_t>(experts), 0.0);
  const double unit = static_cast<double>(experts) / static_cast<double>(top_k * tokens);
  for (std::int32_t e : routes) f[e] += unit;
  return f;
}

// The sigmoid affinities s = σ(router logits), as the routing computed them.
std::vector<float> scores_of(const LayerRecord& record) {
  std::vector<float> scores(static_cast<std::size_t>(record.router_logits.size()));
  for (std::int64_t t = 0; t < record.router_logits.rows; ++t)
    for (std::int64_t i = 0; i < record.router_logits.cols; ++i)
      scores[static_cast<std::size_t>(t * record.router_logits.cols + i)] =
          1.0f / (1.0f + std::exp(-record.router_logits.row(t)[i]));
  return scores;
}

// down_proj(silu(gate) · up) over `rows` rows, rebuilt from the kept gate and up.
void mlp_output(const Backward& b, const MlpWeights& w, const float* gate, const float* up, std::int64_t rows,
                float* out) {
  const std::int64_t intermediate = w.gate_proj.rows;
  std::vector<float> act(count(rows, intermediate));
  b.backend.swiglu(kernels::Tensor(const_cast<float*>(gate), rows, intermediate),
                   kernels::Tensor(const_cast<float*>(up), rows, intermediate),
                   kernels::Tensor(act.data(), rows, intermediate));
  b.linear(act.data(), rows, w.down_proj, out);
}

}  // namespace

void mlp_backward(const Backward& b, const MlpParameters& p, const MlpWeights& w, const float* x, std::int64_t tokens,
                  const float* gate, const float* up, const float* d_out, float* d_x) {
  const std::int64_t intermediate = w.gate_proj.rows, size = tokens * intermediate;
  std::vector<float> act(static_cast<std::size_t>(size)), d_act(act.size(), 0.0f);
  b.backend.swiglu(kernels::Tensor(const_cast<float*>(gate), tokens, intermediate),
                   kernels::Tensor(const_cast<float*>(up), tokens, intermediate),
                   kernels::Tensor(act.data(), tokens, intermediate));
  linear_backward(act.data(), tokens, *p.down_proj, d_out, d_act.data());
  std::vector<float> d_gate(act.size()), d_up(act.size());
  silu_mul_backward(gate, up, d_act.data(), size, d_gate.data(), d_up.data());
  linear_backward(x, tokens, *p.gate_proj, d_gate.data(), d_x);
  linear_backward(x, tokens, *p.up_proj, d_up.data(), d_x);
}

double balance_loss(const ModelConfig& c, const LayerRecord& record, std::int64_t tokens, double alpha) {
  if (alpha == 0.0) return 0.0;
  const std::int64_t experts = c.n_routed_experts;
  // L_bal = alpha Σ_i f_i P_i with P_i = 1/T Σ_t s'_{i,t}, s' the scores normalised over all experts.
  const std::vector<double> f = load_fractions(record.experts, experts, c.num_experts_per_tok, tokens);
  const std::vector<float> scores = scores_of(record);
  double loss = 0.0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* s = scores.data() + t * experts;
    double total = 0.0, weighted = 0.0;
    for (std::int64_t i = 0; i < experts; ++i) {
      total += s[i];
      weighted += f[i] * s[i];
    }
    loss += weighted / total;
  }
  return alpha * loss / static_cast<double>(tokens);
}

void moe_backward(const Backward& b, const MoeParameters& p, const MoeWeights& w, const float* x, std::int64_t tokens,
                  double alpha, const LayerRecord& saved, const float* d_out, float* d_x) {
  const ModelConfig& c = b.config;
  const std::int64_t hidden = c.hidden_size, experts = c.n_routed_experts, top_k = c.num_experts_per_tok;
  if (p.shared_experts)
    mlp_backward(b, *p.shared_experts, *w.shared_experts, x, tokens, saved.shared_gate.data, saved.shared_up.data, d_out,
                 d_x);

  // Experts: d y_e = g · d_out for each of its rows, and d g = d_out · y_e.
  std::vector<double> d_gate(count(tokens, top_k), 0.0);
  std::vector<float> rows, expert_out, d_expert_out, d_rows;
  for (std::int64_t e = 0; e < experts; ++e) {
    const std::int64_t first = saved.offsets[e], n = saved.offsets[e + 1] - first;
    if (n == 0) continue;
    const std::span<const std::int64_t> slots = saved.slots.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(n));
    rows.resize(count(n, hidden));
    expert_out.resize(rows.size());
    d_expert_out.resize(rows.size());
    d_rows.assign(rows.size(), 0.0f);
    for (std::int64_t r = 0; r < n; ++r) std::copy_n(x + (slots[r] / top_k) * hidden, hidden, rows.data() + r * hidden);
    const float* gate_rows = saved.expert_gate.row(first);
    const float* up_rows = saved.expert_up.row(first);
    mlp_output(b, w.experts[e], gate_rows, up_rows, n, expert_out.data());
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t slot = slots[r];
      const float* d_row = d_out + (slot / top_k) * hidden;
      const float gate = saved.weights[slot];
      double dot = 0.0;
      for (std::int64_t i = 0; i < hidden; ++i) {
        dot += static_cast<double>(d_row[i]) * expert_out[r * hidden + i];
        d_expert_out[r * hidden + i] = gate * d_row[i];
      }
      d_gate[slot] = dot;
    }
    mlp_backward(b, p.experts[e], w.experts[e], rows.data(), n, gate_rows, up_rows, d_expert_out.data(), d_rows.data());
    for (std::int64_t r = 0; r < n; ++r) {
      float* target = d_x + (slots[r] / top_k) * hidden;
      for (std::int64_t i = 0; i < hidden; ++i) target[i] += d_rows[r * hidden + i];
    }
  }

  // Router: d s from the gate weights (through the top-k normalisation) and the balance loss, then
  // through the sigmoid.
  const std::vector<double> f =
      alpha != 0.0 ? load_fractions(saved.experts, experts, top_k, tokens) : std::vector<double>{};
  const std::vector<float> scores = scores_of(saved);
  std::vector<float> d_logits(count(tokens, experts));
  std::vector<double> d_scores(static_cast<std::size_t>(experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* s = scores.data() + t * experts;
    std::fill(d_scores.begin(), d_scores.end(), 0.0);
    const std::int32_t* chosen = saved.experts.data() + t * top_k;
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
  linear_backward(x, tokens, *p.router, d_logits.data(), d_x);
}

}  // namespace dsv3::train
