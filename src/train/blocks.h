#pragma once
// The blocks of DeepSeek-V3 for training (internal to train/): each forward keeps what its backward
// needs and no more; each backward recomputes the rest (RMSNorm outputs, the MLA up-projections,
// the SwiGLU product, the attention probabilities) and accumulates weight gradients into
// Parameter::grad. Input gradients are accumulated (+=) into d_x, so residual branches just add.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/ops.h"
#include "model/blocks.h"
#include "model/rope.h"
#include "train/train.h"

namespace dsv3::train {

// ---- ops (ops.cpp) ----

// y[rows, W.rows] = x · Wᵀ.
void linear(const float* x, std::int64_t rows, const Parameter& weight, float* y);
// W.grad += dyᵀ · x; d_x += dy · W (skipped when d_x is null).
void linear_backward(const float* x, std::int64_t rows, Parameter& weight, const float* d_y, float* d_x);

// Forward twin of rmsnorm_backward over a Parameter (the kernel's rmsnorm).
void rmsnorm(const float* x, std::int64_t rows, const Parameter& weight, float eps, float* out);
// y = x * r * w with r = 1/sqrt(mean(x²) + eps): w.grad += Σ dy x r; d_x += r (dy w) - r³/D x Σ(dy w x).
void rmsnorm_backward(const float* x, std::int64_t rows, Parameter& weight, float eps, const float* d_y, float* d_x);

// table.grad[ids[i]] += d_y[i].
void embedding_backward(Parameter& table, std::span<const std::int64_t> ids, const float* d_y);

// out = silu(gate) * up: d_gate = d_out up silu'(gate), d_up = d_out silu(gate) (overwritten).
void silu_mul_backward(const float* gate, const float* up, const float* d_out, std::int64_t count, float* d_gate,
                       float* d_up);

// Gradients of kernels::attention_causal; d_q, d_k, d_v use the same strides as q, k, v and are
// overwritten (every element of the addressed rows is written). Probabilities are recomputed.
void attention_causal_backward(const float* q, const float* k, const float* v, const kernels::AttentionShape& shape,
                               float scale, const float* d_out, float* d_q, float* d_k, float* d_v);

// Σ_r CE(logits[r], targets[r]); d_logits[r] = (softmax(logits[r]) - onehot(targets[r])) * grad_scale.
double cross_entropy(const float* logits, std::int64_t rows, std::int64_t vocab, std::span<const std::int64_t> targets,
                     float grad_scale, float* d_logits);

// ---- blocks ----

// MLA keeps its compressed latents (c_q before its norm, kv_a = c_kv | k_rope before norm and
// rotation) and its attention output; q, k and v are rebuilt from them in the backward pass.
struct MlaSaved {
  std::vector<float> c_q;        // [T, q_lora_rank], q_a_proj output (empty without q_lora_rank)
  std::vector<float> kv_a;       // [T, kv_lora_rank + rope_dim], kv_a_proj_with_mqa output
  std::vector<float> attention;  // [T, heads * v_dim], the input of o_proj
};
void mla_forward(const AttentionParameters& w, const ModelConfig& c, const RopeTable& rope, const float* x,
                 std::int64_t tokens, std::span<const std::int64_t> positions, MlaSaved& saved, float* out);
void mla_backward(const AttentionParameters& w, const ModelConfig& c, const RopeTable& rope, const float* x,
                  std::int64_t tokens, std::span<const std::int64_t> positions, const MlaSaved& saved,
                  const float* d_out, float* d_x);

struct MlpSaved {
  std::vector<float> gate;  // [T, intermediate], gate_proj output
  std::vector<float> up;    // [T, intermediate], up_proj output
};
void mlp_forward(const MlpParameters& w, const float* x, std::int64_t tokens, MlpSaved& saved, float* out);
// The MLP output rebuilt from the saved gate and up (MoE needs it for the gate-weight gradient).
void mlp_output(const MlpParameters& w, const MlpSaved& saved, std::int64_t tokens, float* out);
void mlp_backward(const MlpParameters& w, const float* x, std::int64_t tokens, const MlpSaved& saved,
                  const float* d_out, float* d_x);

// DeepSeekMoE routing for each token: the chosen experts and their gate weights.
struct Routes {
  std::vector<std::int32_t> experts;  // [T, top_k]
  std::vector<float> weights;         // [T, top_k]
};

struct MoeSaved {
  std::vector<float> scores;        // [T, experts], sigmoid affinities s
  Routes routes;                    // chosen experts and their gate weights
  std::vector<MlpSaved> experts;    // per expert, over its rows in token order
  MlpSaved shared;
};
// Returns the layer's balance loss alpha · Σ_i f_i P_i (0 when alpha is 0).
double moe_forward(const MoeParameters& w, const ModelConfig& c, const float* x, std::int64_t tokens, double alpha,
                   MoeSaved& saved, float* out);
void moe_backward(const MoeParameters& w, const ModelConfig& c, const float* x, std::int64_t tokens, double alpha,
                  const MoeSaved& saved, const float* d_out, float* d_x);

struct LayerSaved {
  std::vector<float> h_in;   // [T, hidden], the residual stream entering the layer
  std::vector<float> h_mid;  // [T, hidden], after the attention residual
  MlaSaved attention;
  MlpSaved mlp;
  MoeSaved moe;
  std::int64_t bytes() const;
};
// Updates the residual stream h in place; returns the balance loss of an MoE layer.
double layer_forward(const LayerParameters& w, const ModelConfig& c, const RopeTable& rope, float* h,
                     std::int64_t tokens, std::span<const std::int64_t> positions, double alpha, LayerSaved& saved);
// d_h: in, the gradient at the layer's output; out, the gradient at its input.
void layer_backward(const LayerParameters& w, const ModelConfig& c, const RopeTable& rope, std::int64_t tokens,
                    std::span<const std::int64_t> positions, double alpha, const LayerSaved& saved, float* d_h);

}  // namespace dsv3::train
