#include "core/numeric.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "core/error.h"

namespace dsv3 {

std::uint16_t float_to_f16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and above round to infinity
  if (magnitude < 0x38800000u) {  // below 2^-14 the format is subnormal, in steps of 2^-24
    const float steps = std::nearbyint(std::bit_cast<float>(magnitude) * 0x1p24f);
    return sign | static_cast<std::uint16_t>(steps);  // 1024 steps is the smallest normal's encoding
  }
  // Rebias the exponent (127 -> 15) and round the mantissa from 23 to 10 bits, ties to even; a
  // carry out of the mantissa correctly bumps the exponent.
  const std::uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return sign | static_cast<std::uint16_t>((rounded - 0x38000000u) >> 13);
}

std::uint8_t float_to_fp8_e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const std::uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  float magnitude = std::fabs(value);
  if (magnitude >= kFp8E4M3Max) return sign | 0x7e;
  // Below 2^-6 the format is subnormal with a fixed step of 2^-9.
  if (magnitude < 0x1p-6f) {
    const auto steps = static_cast<std::uint8_t>(std::nearbyint(magnitude * 512.0f));
    return sign | steps;  // steps == 8 is exactly the smallest normal, which encodes the same way
  }
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude = m * 2^exponent, m in [0.5, 1)
  const float step = std::ldexp(1.0f, exponent - 4);  // three mantissa bits below the leading one
  const float rounded = std::nearbyint(magnitude / step) * step;
  if (rounded >= kFp8E4M3Max) return sign | 0x7e;
  int rounded_exponent = 0;
  const float mantissa = std::frexp(rounded, &rounded_exponent);
  const int biased = rounded_exponent - 1 + 7;
  const auto mantissa_bits = static_cast<std::uint8_t>(std::lround((mantissa * 2.0f - 1.0f) * 8.0f));
  return sign | static_cast<std::uint8_t>(biased << 3) | mantissa_bits;
}

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

}  // namespace dsv3
