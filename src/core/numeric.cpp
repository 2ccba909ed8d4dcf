#include "core/numeric.h"

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

}  // namespace dsv3
