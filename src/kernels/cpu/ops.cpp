#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/cpu/internal.h"

namespace dsv3::kernels {
namespace {

// Output rows per task in `linear`: each task dequantises a [kPanelRows, cols] panel of the weight
// once and reuses it for every input row, so the weight stays in its compact dtype in memory.
constexpr std::int64_t kPanelRows = 64;
}  // namespace

void use_single_threaded_blas() {
  // We parallelise over panels ourselves; OpenBLAS's own threads would oversubscribe the cores.
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

namespace {

const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) values[code] = fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
    return values;
  }();
  return table;
}

}  // namespace

std::vector<float>& thread_buffer(std::size_t size) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

void dequantize_rows(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out) {
  const std::int64_t cols = weight.cols;
  const std::size_t count = static_cast<std::size_t>((end - begin) * cols);
  const std::byte* source = weight.data + static_cast<std::size_t>(begin * cols) * dtype_size(weight.dtype);
  switch (weight.dtype) {
    case DType::F32:
      std::memcpy(out, source, count * sizeof(float));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, source + 2 * i, 2);
        out[i] = bf16_to_float(bits);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, source + 2 * i, 2);
        out[i] = f16_to_float(bits);
      }
      return;
    case DType::F8_E4M3: {
      const auto& table = fp8_table();
      const auto* codes = reinterpret_cast<const std::uint8_t*>(source);
      const std::vector<float>& scales = *weight.scales;
      const std::int64_t scale_cols = weight.scale_cols();
      for (std::int64_t r = begin; r < end; ++r) {
        const float* scale_row = scales.data() + (r / weight.block_rows) * scale_cols;
        const std::uint8_t* code_row = codes + (r - begin) * cols;
        float* out_row = out + (r - begin) * cols;
        for (std::int64_t c = 0; c < cols; ++c) out_row[c] = table[code_row[c]] * scale_row[c / weight.block_cols];
      }
      return;
    }
    default:
      fail("{}: dtype {} is not a weight dtype", weight.name, dtype_name(weight.dtype));
  }
}

void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y) {
  use_single_threaded_blas();
  const std::int64_t out_features = weight.rows;
  const std::int64_t in_features = weight.cols;
  if (rows == 0 || out_features == 0) return;
  if (weight.dtype == DType::F32 && (reinterpret_cast<std::uintptr_t>(weight.data) % alignof(float)) == 0) {
    const auto* w = reinterpret_cast<const float*>(weight.data);
    ThreadPool::global().parallel_for(out_features, kPanelRows, [&](std::int64_t begin, std::int64_t end) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(end - begin),
                  static_cast<int>(in_features), 1.0f, x, static_cast<int>(in_features), w + begin * in_features,
                  static_cast<int>(in_features), 0.0f, y + begin, static_cast<int>(out_features));
    });
    return;
  }
  const std::int64_t panels = (out_features + kPanelRows - 1) / kPanelRows;
  ThreadPool::global().parallel_for(panels, 1, [&](std::int64_t first, std::int64_t last) {
    std::vector<float>& panel = thread_buffer(static_cast<std::size_t>(kPanelRows * in_features));
    for (std::int64_t p = first; p < last; ++p) {
      const std::int64_t begin = p * kPanelRows;
      const std::int64_t end = std::min(out_features, begin + kPanelRows);
      dequantize_rows(weight, begin, end, panel.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(end - begin),
                  static_cast<int>(in_features), 1.0f, x, static_cast<int>(in_features), panel.data(),
                  static_cast<int>(in_features), 0.0f, y + begin, static_cast<int>(out_features));
    }
  });
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
