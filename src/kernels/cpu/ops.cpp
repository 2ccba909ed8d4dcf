#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
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

namespace {

constexpr std::int64_t kSquareLanes = 16;

double sum_of_squares(const float* x, std::int64_t count) {
  // kSquareLanes partial sums, element i in lane i % kSquareLanes, then the lanes in order: a
  // fixed order (so every instruction set gets the same bits) that the compiler can vectorise,
  // where one running sum is a chain of dependent additions. Each square of a float is exact
  // in double, so fusing it into the addition changes nothing either.
  double lanes[kSquareLanes] = {};
  std::int64_t i = 0;
  for (; i + kSquareLanes <= count; i += kSquareLanes)
    for (std::int64_t j = 0; j < kSquareLanes; ++j) lanes[j] += static_cast<double>(x[i + j]) * x[i + j];
  for (std::int64_t j = 0; i + j < count; ++j) lanes[j] += static_cast<double>(x[i + j]) * x[i + j];
  double total = 0.0;
  for (const double lane : lanes) total += lane;
  return total;
}

}  // namespace

void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* out) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * dim;
    const float inverse_rms = static_cast<float>(1.0 / std::sqrt(sum_of_squares(row, dim) / dim + eps));
    float* out_row = out + r * dim;
    for (std::int64_t i = 0; i < dim; ++i) out_row[i] = row[i] * inverse_rms * weight[i];
  }
}

void silu_mul(const float* gate, const float* up, std::int64_t count, float* out) {
  // silu(g) = g / (1 + exp(-g)), written with e = exp(-|g|) <= 1 so that nothing overflows:
  // g / (1 + e) for g >= 0 and g·e / (1 + e) below. The exponentials go through exp_sum, on the
  // active instruction set, a block at a time on the stack. The rest is written for the compiler
  // to vectorise: into that block, which aliases neither input whether or not out is gate, and
  // with its choices as bit masks (float comparisons may trap, so it would keep them as branches,
  // and a random sign mispredicts half of them).
  constexpr std::int64_t kBlock = 512;
  // exp_sum clamps its argument at -87.3 (beyond, its result would underflow); there e is set to
  // exactly 0, and silu(g) is 0 to within float32's smallest normal.
  constexpr std::uint32_t kUnderflowBits = 0x42ae999a;  // 87.3f
  constexpr std::uint32_t kOneBits = 0x3f800000;        // 1.0f
  float block[kBlock];
  for (std::int64_t begin = 0; begin < count; begin += kBlock) {
    const std::int64_t n = std::min(kBlock, count - begin);
    const float* g = gate + begin;
    const float* u = up + begin;
    for (std::int64_t i = 0; i < n; ++i) block[i] = -std::fabs(g[i]);
    exp_sum(block, n, 0.0f);
    for (std::int64_t i = 0; i < n; ++i) {
      const auto bits = std::bit_cast<std::uint32_t>(g[i]);
      const std::uint32_t underflow = 0u - static_cast<std::uint32_t>((bits & 0x7fffffffu) > kUnderflowBits);
      const std::uint32_t negative = 0u - (bits >> 31);  // -0 takes e = exp(0) = 1 as well
      const std::uint32_t e_bits = std::bit_cast<std::uint32_t>(block[i]) & ~underflow;
      const float e = std::bit_cast<float>(e_bits);
      const float factor = std::bit_cast<float>((e_bits & negative) | (kOneBits & ~negative));  // g < 0 ? e : 1
      block[i] = g[i] * factor / (1.0f + e) * u[i];
    }
    std::copy_n(block, n, out + begin);
  }
}

}  // namespace dsv3::kernels
