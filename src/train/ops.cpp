// The backward twins of the model's ops, FP32 with FP64 row reductions, on the host (GEMMs through
// oneDNN, gemm.cpp).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "train/blocks.h"

namespace dsv3::train {
namespace {

// Columns / rows per task in the backward GEMMs.
constexpr std::int64_t kPanel = 64;

// A GEMM input as the GEMM reads it: the FP32 values, or under the FP8 recipe a copy rounded through
// E4M3 in tiles of tile_rows x tile_cols (kept in `storage`).
const float* gemm_input(bool fp8, const float* values, std::int64_t rows, std::int64_t cols, std::int64_t tile_rows,
                        std::int64_t tile_cols, std::vector<float>& storage) {
  if (!fp8) return values;
  storage.resize(static_cast<std::size_t>(rows * cols));
  fp8_quantize_dequantize(values, rows, cols, tile_rows, tile_cols, storage.data());
  return storage.data();
}

}  // namespace

// Every Linear GEMM of training's backward pass goes through linear_backward (the forward's
// through the backend's linear); Parameter::fp8_gemm decides the precision of their inputs. Each
// GEMM quantises along its own inner (summed) dimension: x and d_y in 1x128 row tiles for y = x Wᵀ
// and d_x = d_y W, in 128x1 column tiles (128 tokens) for d_W = d_yᵀ x; W in 128x128 blocks, which
// serve W and Wᵀ alike.
void Backward::linear(const float* x, std::int64_t rows, const Matrix& weight, float* y) const {
  backend.linear(kernels::Tensor(const_cast<float*>(x), rows, weight.cols), weight, kernels::Tensor(y, rows, weight.rows));
}

void Backward::rmsnorm(const float* x, std::int64_t rows, std::span<const float> weight, float* out) const {
  const auto dim = static_cast<std::int64_t>(weight.size());
  backend.rmsnorm(kernels::Tensor(const_cast<float*>(x), rows, dim), weight, eps, kernels::Tensor(out, rows, dim));
}

void linear_backward(const float* x_in, std::int64_t rows, Parameter& weight, const float* d_y_in, float* d_x) {
  const std::int64_t out = weight.rows(), in = weight.cols();
  if (rows == 0) return;
  const bool fp8 = weight.fp8_gemm;
  std::vector<float> x_q, d_y_columns_q, d_y_rows_q, w_q;
  const float* x = gemm_input(fp8, x_in, rows, in, kFp8Tile, 1, x_q);
  const float* d_y = gemm_input(fp8, d_y_in, rows, out, kFp8Tile, 1, d_y_columns_q);
  float* d_w = weight.grad.data();
  // d_W[o0:o1, :] += d_y[:, o0:o1]ᵀ · x
  ThreadPool::global().parallel_for(out, kPanel, [&](std::int64_t begin, std::int64_t end) {
    gemm(true, false, end - begin, in, rows, 1.0f, d_y + begin, out, x, in, 1.0f, d_w + begin * in, in);
  });
  if (!d_x) return;
  d_y = gemm_input(fp8, d_y_in, rows, out, 1, kFp8Tile, d_y_rows_q);
  const float* w = gemm_input(fp8, weight.value.data(), out, in, kFp8Tile, kFp8Tile, w_q);
  // d_x[:, i0:i1] += d_y · W[:, i0:i1]
  ThreadPool::global().parallel_for(in, kPanel, [&](std::int64_t begin, std::int64_t end) {
    gemm(false, false, rows, end - begin, out, 1.0f, d_y, out, w + begin, in, 1.0f, d_x + begin, in);
  });
}

void rmsnorm_backward(const float* x, std::int64_t rows, Parameter& weight, float eps, const float* d_y, float* d_x) {
  const std::int64_t dim = weight.rows();
  const float* w = weight.value.data();
  std::vector<double> d_w(static_cast<std::size_t>(dim), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x_row = x + r * dim;
    const float* dy_row = d_y + r * dim;
    double sum_squares = 0.0, dot = 0.0;  // dot = Σ dy w x
    for (std::int64_t i = 0; i < dim; ++i) {
      sum_squares += static_cast<double>(x_row[i]) * x_row[i];
      dot += static_cast<double>(dy_row[i]) * w[i] * x_row[i];
    }
    const double inverse_rms = 1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps);
    const double correction = inverse_rms * inverse_rms * inverse_rms * dot / static_cast<double>(dim);
    float* dx_row = d_x + r * dim;
    for (std::int64_t i = 0; i < dim; ++i) {
      d_w[i] += static_cast<double>(dy_row[i]) * x_row[i] * inverse_rms;
      dx_row[i] += static_cast<float>(inverse_rms * dy_row[i] * w[i] - correction * x_row[i]);
    }
  }
  for (std::int64_t i = 0; i < dim; ++i) weight.grad[i] += static_cast<float>(d_w[i]);
}

void embedding_backward(Parameter& table, std::span<const std::int64_t> ids, const float* d_y) {
  const std::int64_t dim = table.cols();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows())
      fail("token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, table.rows());
    float* row = table.grad.data() + ids[i] * dim;
    for (std::int64_t j = 0; j < dim; ++j) row[j] += d_y[static_cast<std::int64_t>(i) * dim + j];
  }
}

void silu_mul_backward(const float* gate, const float* up, const float* d_out, std::int64_t count, float* d_gate,
                       float* d_up) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    const float sigmoid = 1.0f / (1.0f + std::exp(-g));
    const float silu = g * sigmoid;
    d_up[i] = d_out[i] * silu;
    d_gate[i] = d_out[i] * up[i] * sigmoid * (1.0f + g * (1.0f - sigmoid));
  }
}

void attention_causal_backward(const float* q, const float* k, const float* v, const kernels::AttentionShape& shape,
                               float scale, const float* d_out, float* d_q, float* d_k, float* d_v) {
  const std::int64_t tokens = shape.tokens, qk = shape.qk_dim, vd = shape.v_dim;
  const int n = static_cast<int>(tokens);
  const std::int64_t out_stride = shape.heads * vd;
  ThreadPool::global().parallel_for(shape.heads, 1, [&](std::int64_t first, std::int64_t last) {
    std::vector<float> p(static_cast<std::size_t>(tokens * tokens)), d_p(p.size());
    for (std::int64_t head = first; head < last; ++head) {
      const float* q_h = q + head * shape.q_head_stride;
      const float* k_h = k + head * shape.k_head_stride;
      const float* v_h = v + head * shape.v_head_stride;
      const float* do_h = d_out + head * vd;
      // P = softmax(scale · q kᵀ) over the causal prefix, rebuilt exactly as the forward kernel does.
      gemm(false, true, n, n, static_cast<int>(qk), scale, q_h,
                  static_cast<int>(shape.q_stride), k_h, static_cast<int>(shape.k_stride), 0.0f, p.data(), n);
      for (std::int64_t i = 0; i < tokens; ++i) {
        float* row = p.data() + i * tokens;
        const float max_score = *std::max_element(row, row + i + 1);
        double total = 0.0;
        for (std::int64_t j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - max_score);
          total += row[j];
        }
        const auto inverse = static_cast<float>(1.0 / total);
        for (std::int64_t j = 0; j <= i; ++j) row[j] *= inverse;
        std::fill(row + i + 1, row + tokens, 0.0f);
      }
      // dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP - rowsum(P ∘ dP));  dQ = scale dS K;  dK = scale dSᵀ Q.
      gemm(true, false, n, static_cast<int>(vd), n, 1.0f, p.data(), n, do_h,
                  static_cast<int>(out_stride), 0.0f, d_v + head * shape.v_head_stride, static_cast<int>(shape.v_stride));
      gemm(false, true, n, n, static_cast<int>(vd), 1.0f, do_h,
                  static_cast<int>(out_stride), v_h, static_cast<int>(shape.v_stride), 0.0f, d_p.data(), n);
      for (std::int64_t i = 0; i < tokens; ++i) {
        float* p_row = p.data() + i * tokens;
        const float* dp_row = d_p.data() + i * tokens;
        double dot = 0.0;
        for (std::int64_t j = 0; j <= i; ++j) dot += static_cast<double>(p_row[j]) * dp_row[j];
        for (std::int64_t j = 0; j <= i; ++j) p_row[j] = p_row[j] * (dp_row[j] - static_cast<float>(dot));
      }
      float* dq_h = d_q + head * shape.q_head_stride;
      float* dk_h = d_k + head * shape.k_head_stride;
      gemm(false, false, n, static_cast<int>(qk), n, scale, p.data(), n, k_h,
                  static_cast<int>(shape.k_stride), 0.0f, dq_h, static_cast<int>(shape.q_stride));
      gemm(true, false, n, static_cast<int>(qk), n, scale, p.data(), n, q_h,
                  static_cast<int>(shape.q_stride), 0.0f, dk_h, static_cast<int>(shape.k_stride));
    }
  });
}

double cross_entropy(const float* logits, std::int64_t rows, std::int64_t vocab, std::span<const std::int64_t> targets,
                     float grad_scale, float* d_logits) {
  double total = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    const std::int64_t target = targets[static_cast<std::size_t>(r)];
    if (target < 0 || target >= vocab) fail("target token {} at row {} is outside the vocabulary [0, {})", target, r, vocab);
    const double max_logit = *std::max_element(row, row + vocab);
    double sum = 0.0;
    for (std::int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max_logit);
    const double log_sum = max_logit + std::log(sum);
    total += log_sum - row[target];
    float* d_row = d_logits + r * vocab;
    for (std::int64_t i = 0; i < vocab; ++i) d_row[i] = static_cast<float>(std::exp(row[i] - log_sum) * grad_scale);
    d_row[target] -= grad_scale;
  }
  return total;
}

}  // namespace dsv3::train
