#pragma once
// BF16 in pairs, for the kernels compiled for AVX-512 (include it inside their target region). One
// 64-byte load holds 32 BF16 values; as 16 32-bit lanes, each lane's high half is an odd column
// and its low half the even column before it. Shifting left by 16 makes the even columns float32,
// clearing the low half makes the odd ones: one instruction per 16 values, half of what widening
// 16 values in order takes (a zero extension, then a shift). The float32 operand on the other side
// of the FMA is stored to match: each whole 32 columns as their 16 even columns, then their 16 odd
// ones ("paired"); the last columns % 32 as they are.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace dsv3::kernels::avx512 {

inline constexpr std::int64_t kPairColumns = 32;

inline __attribute__((always_inline)) __m512 bf16_even(__m512i pairs) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
}
inline __attribute__((always_inline)) __m512 bf16_odd(__m512i pairs) {
  return _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// `cols` float32 values in order, written paired.
inline void pair_columns(const float* in, std::int64_t cols, float* out) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  std::int64_t c = 0;
  for (; c + kPairColumns <= cols; c += kPairColumns) {
    const __m512 lo = _mm512_loadu_ps(in + c), hi = _mm512_loadu_ps(in + c + 16);
    _mm512_storeu_ps(out + c, _mm512_permutex2var_ps(lo, even, hi));
    _mm512_storeu_ps(out + c + 16, _mm512_permutex2var_ps(lo, odd, hi));
  }
  std::copy(in + c, in + cols, out + c);
}

// The inverse, in place: `cols` paired values back in order.
inline void unpair_columns(float* values, std::int64_t cols) {
  const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i high = _mm512_add_epi32(low, _mm512_set1_epi32(8));
  for (std::int64_t c = 0; c + kPairColumns <= cols; c += kPairColumns) {
    const __m512 even = _mm512_loadu_ps(values + c), odd = _mm512_loadu_ps(values + c + 16);
    _mm512_storeu_ps(values + c, _mm512_permutex2var_ps(even, low, odd));
    _mm512_storeu_ps(values + c + 16, _mm512_permutex2var_ps(even, high, odd));
  }
}

}  // namespace dsv3::kernels::avx512
