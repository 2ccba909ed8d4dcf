#include "io/fp8_blocks.h"

#include <algorithm>
#include <cmath>

#include "core/numeric.h"

namespace dsv3 {

Fp8Blocks quantize_fp8_blocks(const float* weight, std::int64_t rows, std::int64_t cols, std::int64_t block_rows,
                              std::int64_t block_cols) {
  Fp8Blocks out;
  out.scale_rows = (rows + block_rows - 1) / block_rows;
  out.scale_cols = (cols + block_cols - 1) / block_cols;
  out.codes.resize(static_cast<std::size_t>(rows * cols));
  out.scales.resize(static_cast<std::size_t>(out.scale_rows * out.scale_cols));
  for (std::int64_t br = 0; br < out.scale_rows; ++br)
    for (std::int64_t bc = 0; bc < out.scale_cols; ++bc) {
      const std::int64_t r0 = br * block_rows, r1 = std::min(rows, r0 + block_rows);
      const std::int64_t c0 = bc * block_cols, c1 = std::min(cols, c0 + block_cols);
      float amax = 0.0f;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(weight[r * cols + c]));
      // An all-zero block keeps scale 1 so dequantisation never divides by zero.
      const float scale = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
      out.scales[br * out.scale_cols + bc] = scale;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) out.codes[r * cols + c] = float_to_fp8_e4m3(weight[r * cols + c] / scale);
    }
  return out;
}

}  // namespace dsv3
