#pragma once
// The backward passes of DeepSeek-V3's blocks (internal to train/). The forward pass is the
// model's own (Model::step with a StepRecord): each backward reads what the record kept,
// recomputes the rest through the backend's ops (RMSNorm outputs, the MLA up-projections, the
// SwiGLU product, the attention probabilities) and accumulates weight gradients into
// Parameter::grad. Input gradients are accumulated (+=) into d_x, so residual branches just add.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/ops.h"
#include "model/model.h"
#include "model/rope.h"
#include "train/train.h"

namespace dsv3::train {

// ---- ops (ops.cpp) ----

// Row-major C = alpha op(A) op(B) + beta C, single-threaded on the calling thread (gemm.cpp): op(A)
// is [m, k], op(B) [k, n]; the leading dimensions are of A, B, C as stored.
void gemm(bool a_transposed, bool b_transposed, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

// W.grad += dyᵀ · x; d_x += dy · W (skipped when d_x is null).
void linear_backward(const float* x, std::int64_t rows, Parameter& weight, const float* d_y, float* d_x);

// y = x * r * w with r = 1/sqrt(mean(x²) + eps): w.grad += Σ dy x r; d_x += r (dy w) - r³/D x Σ(dy w x).
void rmsnorm_backward(const float* x, std::int64_t rows, Parameter& weight, float eps, const float* d_y, float* d_x);

// table.grad[ids[i]] += d_y[i].
void embedding_backward(Parameter& table, std::span<const std::int64_t> ids, const float* d_y);

// out = silu(gate) * up: d_gate = d_out up silu'(gate), d_up = d_out silu(gate) (overwritten).
void silu_mul_backward(const float* gate, const float* up, const float* d_out, std::int64_t count, float* d_gate,
                       float* d_up);

// Gradients of Backend::attention_causal (no cached prefix); d_q, d_k, d_v use the same strides as
// q, k, v and are overwritten (every element of the addressed rows is written). Probabilities are
// recomputed.
void attention_causal_backward(const float* q, const float* k, const float* v, const kernels::AttentionShape& shape,
                               float scale, const float* d_out, float* d_q, float* d_k, float* d_v);

// Σ_r CE(logits[r], targets[r]); d_logits[r] = (softmax(logits[r]) - onehot(targets[r])) * grad_scale.
double cross_entropy(const float* logits, std::int64_t rows, std::int64_t vocab, std::span<const std::int64_t> targets,
                     float grad_scale, float* d_logits);

// ---- blocks ----

// What every backward shares: the config, the backend that recomputes, RoPE, the norms' eps.
struct Backward {
  const ModelConfig& config;
  const kernels::Backend& backend;
  kernels::RopeParams rope;
  float eps;

  // Recomputation through the backend on host rows (training runs where the host can read).
  void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y) const;
  void rmsnorm(const float* x, std::int64_t rows, std::span<const float> weight, float* out) const;
};

// MLA: x is the attention's input (the layer's first norm output); the record's c_q, kv_a and
// attention output serve, q, k and v are rebuilt from them.
void mla_backward(const Backward& b, const AttentionParameters& p, const AttentionWeights& w, const float* x,
                  std::int64_t tokens, std::span<const std::int64_t> positions, const LayerRecord& record,
                  const float* d_out, float* d_x);

// A SwiGLU MLP over `tokens` rows of x whose gate_proj and up_proj outputs were kept.
void mlp_backward(const Backward& b, const MlpParameters& p, const MlpWeights& w, const float* x, std::int64_t tokens,
                  const float* gate, const float* up, const float* d_out, float* d_x);

// The sequence-wise balance loss alpha · Σ_i f_i P_i of one MoE layer from its record (0 when alpha is 0).
double balance_loss(const ModelConfig& config, const LayerRecord& record, std::int64_t tokens, double alpha);
// DeepSeekMoE: routed experts over the record's dispatch, shared experts, the router through the
// gate weights and the balance loss.
void moe_backward(const Backward& b, const MoeParameters& p, const MoeWeights& w, const float* x, std::int64_t tokens,
                  double alpha, const LayerRecord& record, const float* d_out, float* d_x);

// One decoder layer. d_h: in, the gradient at the layer's output; out, the gradient at its input.
void layer_backward(const Backward& b, const LayerParameters& p, const LayerWeights& w, std::int64_t tokens,
                    std::span<const std::int64_t> positions, double alpha, const LayerRecord& record, float* d_h);

}  // namespace dsv3::train
