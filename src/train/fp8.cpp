// DeepSeek-V3's FP8 training recipe (§3.3), simulated on the CPU: the inputs of a Linear's three
// GEMMs are rounded through E4M3 with fine-grained scales, and the products accumulate in FP32.
// Rounding and saturation are the real thing's; only the tensor cores' limited accumulation width
// is not modelled (DeepSeek promotes partial sums to FP32 every 128 elements for that reason).
#include <algorithm>
#include <bit>
#include <cmath>

#include "core/error.h"
#include "core/numeric.h"
#include "train/train.h"

namespace dsv3::train {

float round_to_e4m3(float value) {
  if (std::isnan(value)) return value;
  const float magnitude = std::fabs(value);
  float rounded;
  if (magnitude < 0x1p-6f) {
    rounded = std::nearbyint(magnitude * 512.0f) * 0x1p-9f;  // subnormal: a fixed step of 2^-9
  } else {
    // Keep 3 mantissa bits, rounding to nearest even on the 20 bits dropped.
    std::uint32_t bits = std::bit_cast<std::uint32_t>(magnitude);
    bits += 0x7ffffu + ((bits >> 20) & 1u);
    rounded = std::bit_cast<float>(bits & 0xfff00000u);
  }
  return std::copysign(std::min(rounded, kFp8E4M3Max), value);  // saturating, as the conversion does
}

void fp8_quantize_dequantize(const float* values, std::int64_t rows, std::int64_t cols, std::int64_t tile_rows,
                             std::int64_t tile_cols, float* out) {
  if (tile_rows <= 0 || tile_cols <= 0) fail("fp8_quantize_dequantize: tile {}x{} must be positive", tile_rows, tile_cols);
  for (std::int64_t r0 = 0; r0 < rows; r0 += tile_rows)
    for (std::int64_t c0 = 0; c0 < cols; c0 += tile_cols) {
      const std::int64_t r1 = std::min(rows, r0 + tile_rows), c1 = std::min(cols, c0 + tile_cols);
      float amax = 0.0f;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(values[r * cols + c]));
      // The tile's largest magnitude maps onto E4M3's largest finite value, 448; an all-zero tile
      // keeps scale 1 (its codes are zero either way).
      const float scale = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c)
          out[r * cols + c] = round_to_e4m3(values[r * cols + c] / scale) * scale;
    }
}

void TrainableModel::set_fp8_gemms(bool on) {
  for (auto& [name, p] : parameters) p.fp8_gemm = false;
  if (!on) return;
  // The Linears DeepSeek-V3's FP8 checkpoints store in E4M3 are the ones its recipe trains in FP8.
  for (const CheckpointTensor& t : checkpoint_layout(config))
    if (t.fp8_in_official_checkpoints && t.copy_of.empty()) parameter(t.name).fp8_gemm = true;
}

}  // namespace dsv3::train
