#pragma once
// The CPU ops the model is written against (DESIGN.md, "the op interface"). Activations are
// row-major float32; weights are Matrix views in their storage dtype.
#include <cstdint>
#include <span>

#include "core/matrix.h"

namespace dsv3::kernels {

// y[rows, W.rows] = x[rows, W.cols] · Wᵀ, FP32 accumulation, any weight dtype.
void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y);

// Rows [begin, end) of `weight` as float32 into out[(end - begin) * weight.cols].
void dequantize_rows(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out);

// out[i, :] = table[ids[i], :]; ids are checked against the table.
void embedding(const Matrix& table, std::span<const std::int64_t> ids, float* out);

// out[r] = x[r] / rms(x[r]) * weight, over `rows` rows of `dim`; out may alias x.
void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* out);

// out = silu(gate) * up, elementwise (SwiGLU); out may alias gate.
void silu_mul(const float* gate, const float* up, std::int64_t count, float* out);

// Causal softmax attention for one sequence: for each head, q and k rows of qk_dim, v rows of
// v_dim, addressed as base + token * stride + head * head_stride (in floats), so MLA's packed
// kv_b_proj output is read in place. out: [T, heads, v_dim] contiguous.
struct AttentionShape {
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t qk_dim = 0;
  std::int64_t v_dim = 0;
  std::int64_t q_stride = 0, q_head_stride = 0;
  std::int64_t k_stride = 0, k_head_stride = 0;
  std::int64_t v_stride = 0, v_head_stride = 0;
};
void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape,
                      float scale, float* out);

}  // namespace dsv3::kernels
