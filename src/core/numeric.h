#pragma once
// Scalar conversions between the storage formats of checkpoints and float32.
#include <bit>
#include <cmath>
#include <cstdint>

namespace dsv3 {

inline float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

inline float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31)
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Round to nearest even; beyond the largest finite half (65504) to infinity, NaN stays NaN.
std::uint16_t float_to_f16(float value);

// OCP FP8 E4M3 ("e4m3fn"): bias 7, no infinities, 0x7f/0xff are NaN, largest finite 448.
inline float fp8_e4m3_to_float(std::uint8_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
  const std::uint32_t exponent = (bits >> 3) & 0xfu;
  const std::uint32_t mantissa = bits & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return std::bit_cast<float>(sign | 0x7fc00000u);
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -9);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 120) << 23) | (mantissa << 20));
}

inline constexpr float kFp8E4M3Max = 448.0f;

// Round to nearest even with saturation to +-448, the convention of PyTorch's
// `tensor.to(torch.float8_e4m3fn)` after the caller has scaled into range.
std::uint8_t float_to_fp8_e4m3(float value);

// The E4M3 value nearest `value` (ties to even, saturating at ±448): the same as
// fp8_e4m3_to_float(float_to_fp8_e4m3(value)), by bit arithmetic instead of frexp/ldexp.
float round_to_e4m3(float value);

// DeepSeek-V3's FP8 training recipe (§3.3): rounds [rows, cols] values through E4M3 and back, one
// scale amax/448 per tile_rows x tile_cols tile (edge tiles partial): 1x128 tiles for activations
// and gradients along a GEMM's inner dimension, 128x128 blocks for weights. `out` may equal `values`.
void fp8_quantize_dequantize(const float* values, std::int64_t rows, std::int64_t cols, std::int64_t tile_rows,
                             std::int64_t tile_cols, float* out);
inline constexpr std::int64_t kFp8Tile = 128;

}  // namespace dsv3
