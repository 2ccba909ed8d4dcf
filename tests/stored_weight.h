#pragma once
// A weight stored in a checkpoint dtype for the kernel tests, with the exact values it stands for,
// and the double-precision linear those values give.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "core/matrix.h"
#include "core/numeric.h"
#include "io/fp8_blocks.h"

namespace dsv3::test {

// y = x · Wᵀ in double from already-dequantised float weights.
inline std::vector<float> linear_reference(const std::vector<float>& x, std::int64_t rows, const std::vector<float>& w,
                                    std::int64_t out, std::int64_t in) {
  std::vector<float> y(static_cast<std::size_t>(rows * out));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (std::int64_t i = 0; i < in; ++i) sum += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<float>(sum);
    }
  return y;
}

struct StoredWeight {
  std::vector<std::byte> bytes;
  std::vector<float> values;  // what the stored weight means, exactly
  Matrix matrix;
};

inline StoredWeight store_weight(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, DType dtype,
                          std::int64_t block_rows = 128, std::int64_t block_cols = 128) {
  StoredWeight stored;
  stored.values.resize(w.size());
  stored.matrix.name = "test.weight";
  stored.matrix.dtype = dtype;
  stored.matrix.rows = rows;
  stored.matrix.cols = cols;
  if (dtype == DType::F8_E4M3) {
    const auto blocks = quantize_fp8_blocks(w.data(), rows, cols, block_rows, block_cols);
    stored.bytes.resize(blocks.codes.size());
    std::memcpy(stored.bytes.data(), blocks.codes.data(), blocks.codes.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        stored.values[r * cols + c] = fp8_e4m3_to_float(blocks.codes[r * cols + c]) *
                                      blocks.scales[(r / block_rows) * blocks.scale_cols + c / block_cols];
    stored.matrix.scales = std::make_shared<const std::vector<float>>(blocks.scales);
    stored.matrix.block_rows = block_rows;
    stored.matrix.block_cols = block_cols;
  } else {
    stored.bytes.resize(w.size() * dtype_size(dtype));
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (dtype == DType::BF16) {
        const std::uint16_t bits = float_to_bf16(w[i]);
        std::memcpy(stored.bytes.data() + 2 * i, &bits, 2);
        stored.values[i] = bf16_to_float(bits);
      } else if (dtype == DType::F16) {
        const std::uint16_t bits = float_to_f16(w[i]);
        std::memcpy(stored.bytes.data() + 2 * i, &bits, 2);
        stored.values[i] = f16_to_float(bits);
      } else {
        std::memcpy(stored.bytes.data() + 4 * i, &w[i], 4);
        stored.values[i] = w[i];
      }
    }
  }
  stored.matrix.data = stored.bytes.data();
  return stored;
}

// An FP8 weight holding every E4M3 code but the two NaNs (0x7f, 0xff), subnormals included, in
// turn (element i the (7 i mod 254)-th), block b of its block scales scale(b); StoredWeight's
// values are the codes' exact values times their scales.
template <class Scale>
StoredWeight every_fp8_code(std::int64_t rows, std::int64_t cols, std::int64_t block_rows, std::int64_t block_cols,
                            Scale scale) {
  std::vector<std::uint8_t> codes;
  for (int code = 0; code < 256; ++code)
    if ((code & 0x7f) != 0x7f) codes.push_back(static_cast<std::uint8_t>(code));
  StoredWeight stored;
  stored.bytes.resize(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < stored.bytes.size(); ++i) stored.bytes[i] = static_cast<std::byte>(codes[(i * 7) % codes.size()]);
  Matrix& m = stored.matrix;
  m.name = "codes";
  m.dtype = DType::F8_E4M3;
  m.rows = rows;
  m.cols = cols;
  m.data = stored.bytes.data();
  m.block_rows = block_rows;
  m.block_cols = block_cols;
  std::vector<float> scales(static_cast<std::size_t>((rows + block_rows - 1) / block_rows * m.scale_cols()));
  for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = scale(static_cast<std::int64_t>(i));
  stored.values.resize(stored.bytes.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      stored.values[r * cols + c] = fp8_e4m3_to_float(static_cast<std::uint8_t>(stored.bytes[r * cols + c])) *
                                    scales[(r / block_rows) * m.scale_cols() + c / block_cols];
  m.scales = std::make_shared<const std::vector<float>>(std::move(scales));
  return stored;
}

}  // namespace dsv3::test
