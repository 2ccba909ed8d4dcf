#pragma once
// FP8 (E4M3) block quantisation in DeepSeek-V3's checkpoint format: one float32 scale per
// block_rows x block_cols block (edge blocks partial), scale = amax / 448, so that
// weight ≈ fp8 code value * scale ("weight_scale_inv" in the checkpoints).
#include <cstdint>
#include <vector>

namespace dsv3 {

struct Fp8Blocks {
  std::vector<std::uint8_t> codes;  // [rows, cols] E4M3 codes
  std::vector<float> scales;        // [ceil(rows / block_rows), ceil(cols / block_cols)]
  std::int64_t scale_rows = 0;
  std::int64_t scale_cols = 0;
};

Fp8Blocks quantize_fp8_blocks(const float* weight, std::int64_t rows, std::int64_t cols,
                              std::int64_t block_rows = 128, std::int64_t block_cols = 128);

}  // namespace dsv3
