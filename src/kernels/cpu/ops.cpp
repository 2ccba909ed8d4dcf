#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <cmath>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/internal.h"

namespace dsv3::kernels {

void use_single_threaded_blas() {
  // We parallelise over panels ourselves; OpenBLAS's own threads would oversubscribe the cores.
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

std::vector<float>& thread_buffer(std::size_t size) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

void matmul(const float* a, const float* b, float* c, const MatmulShape& s) {
  use_single_threaded_blas();
  if (s.m == 0 || s.n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, s.b_transposed ? CblasTrans : CblasNoTrans, static_cast<int>(s.m),
              static_cast<int>(s.n), static_cast<int>(s.k), 1.0f, a, static_cast<int>(s.lda), b,
              static_cast<int>(s.ldb), s.beta, c, static_cast<int>(s.ldc));
}

void embedding(const Matrix& table, std::span<const std::int64_t> ids, float* out) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows)
      fail("token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, table.rows);
    dequantize_rows(table, ids[i], ids[i] + 1, out + i * table.cols);
  }
}

void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * dim;
    double sum_squares = 0.0;
    for (std::int64_t i = 0; i < dim; ++i) sum_squares += static_cast<double>(row[i]) * row[i];
    const float inverse_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / dim + eps));
    float* out_row = out + r * dim;
    for (std::int64_t i = 0; i < dim; ++i) out_row[i] = row[i] * inverse_rms * weight[i];
  }
}

void silu_mul(const float* gate, const float* up, std::int64_t count, float* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace dsv3::kernels
