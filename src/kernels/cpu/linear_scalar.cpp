// The portable weight kernels: plain loops, used where the CPU has neither AVX2 nor AVX-512
// and as the twin the SIMD paths are tested against.
#include <array>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/cpu/internal.h"

namespace dsv3::kernels {
namespace {

const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) values[code] = fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
    return values;
  }();
  return table;
}

void dequantize(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out) {
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

void gemv(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin, std::int64_t n_end,
          float* y) {
  const std::int64_t cols = weight.cols;
  // The dequantised weight row, on the stack where it fits (every DeepSeek-V3 weight's does).
  float stack[kStackScratchFloats];
  float* row = cols <= kStackScratchFloats ? stack : thread_buffer(static_cast<std::size_t>(cols)).data();
  for (std::int64_t n = n_begin; n < n_end; ++n) {
    dequantize(weight, n, n + 1, row);
    for (std::int64_t m = 0; m < rows; ++m) {
      const float* xm = x + m * cols;
      float sum = 0.0f;
      for (std::int64_t c = 0; c < cols; ++c) sum += xm[c] * row[c];
      y[m * weight.rows + n] = sum;
    }
  }
}

float exp_and_sum(float* values, std::int64_t count, float shift) {
  float sum = 0.0f;
  for (std::int64_t i = 0; i < count; ++i) sum += (values[i] = std::exp(values[i] - shift));
  return sum;
}

}  // namespace

const WeightKernels& scalar_weight_kernels() {
  static const WeightKernels kernels{gemv, dequantize, exp_and_sum};
  return kernels;
}

}  // namespace dsv3::kernels
