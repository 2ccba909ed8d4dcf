#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "core/numeric.h"

namespace dsv3 {

TEST(Numeric, Fp8E4M3DecodesKnownCodes) {
  EXPECT_EQ(fp8_e4m3_to_float(0x00), 0.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);        // exponent 7 = bias
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);      // largest finite
  EXPECT_EQ(fp8_e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x01), 0x1p-9f);     // smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_float(0x08), 0x1p-6f);     // smallest normal
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

TEST(Numeric, F16RoundTripsEveryCodeAndRoundsHalfwayToEven) {
  for (std::uint32_t code = 0; code < 0x10000; ++code) {
    const float value = f16_to_float(static_cast<std::uint16_t>(code));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(value))));
      continue;
    }
    ASSERT_EQ(float_to_f16(value), code) << "value " << value;
  }
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3c00);             // halfway between 1 and its successor: even
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);  // just above halfway
  EXPECT_EQ(float_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);         // halfway from the odd 0x3c01: up to even
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);                    // half the smallest subnormal: even (zero)
  EXPECT_EQ(float_to_f16(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(float_to_f16(-1e9f), 0xfc00);
}

TEST(Numeric, Fp8E4M3RoundTripsEveryFiniteCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    const float value = fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
    const std::uint8_t back = float_to_fp8_e4m3(value);
    if (value == 0.0f) {
      EXPECT_EQ(back & 0x7f, 0);
    } else {
      EXPECT_EQ(back, code) << "code " << code << " value " << value;
    }
  }
}

TEST(Numeric, Fp8E4M3RoundsToNearestAndSaturates) {
  // Every value lands on the nearest representable neighbour (ties to even mantissa).
  for (int code = 0; code < 0x7e; ++code) {
    const float low = fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
    const float high = fp8_e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    const float just_below_mid = std::nextafter(0.5f * (low + high), low);
    const float just_above_mid = std::nextafter(0.5f * (low + high), high);
    EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(just_below_mid)), low);
    EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(just_above_mid)), high);
    const float tie = fp8_e4m3_to_float(float_to_fp8_e4m3(0.5f * (low + high)));
    EXPECT_EQ(tie, (code % 2 == 0) ? low : high) << "tie between codes " << code;
  }
  EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(1e6f)), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(-500.0f)), -448.0f);
}

TEST(Numeric, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f + 0x1p-12f)), 1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(Numeric, F16DecodesNormalsSubnormalsAndInfinity) {
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc000), -2.0f);
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
  EXPECT_TRUE(std::isinf(f16_to_float(0x7c00)));
}

}  // namespace dsv3
