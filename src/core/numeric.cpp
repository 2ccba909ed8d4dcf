#include "core/numeric.h"

namespace dsv3 {

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
