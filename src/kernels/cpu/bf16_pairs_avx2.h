#pragma once
// BF16 in pairs for the kernels compiled for AVX2 (include it inside their target region), as
// bf16_pairs_avx512.h on half the width. One 32-byte load holds 16 BF16 values; as 8 32-bit lanes,
// each lane's high half is an odd column and its low half the even column before it. Shifting left
// by 16 makes the even columns float32, clearing the low half makes the odd ones: one instruction
// per 8 values, half of what widening 8 values in order takes (a zero extension, then a shift). The
// float32 operand on the other side of the FMA is stored to match: each whole 16 columns as their 8
// even columns, then their 8 odd ones ("paired"); the last cols % 16 as they are.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace dsv3::kernels::avx2 {

inline constexpr std::int64_t kPairColumns = 16;

inline __attribute__((always_inline)) __m256i load_pairs(const void* bits) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(bits));
}
inline __attribute__((always_inline)) __m256 bf16_even(__m256i pairs) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
}
inline __attribute__((always_inline)) __m256 bf16_odd(__m256i pairs) {
  return _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// `cols` float32 values in order, written paired.
inline void pair_columns(const float* in, std::int64_t cols, float* out) {
  std::int64_t c = 0;
  for (; c + kPairColumns <= cols; c += kPairColumns) {
    const __m256 lo = _mm256_loadu_ps(in + c), hi = _mm256_loadu_ps(in + c + 8);
    // Within each 128-bit half: lo's even (odd) pair, then hi's; then the 64-bit quarters in order.
    const __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(out + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_storeu_ps(out + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0))));
  }
  std::copy(in + c, in + cols, out + c);
}

// The inverse, in place: `cols` paired values back in order.
inline void unpair_columns(float* values, std::int64_t cols) {
  for (std::int64_t c = 0; c + kPairColumns <= cols; c += kPairColumns) {
    const __m256 even = _mm256_loadu_ps(values + c), odd = _mm256_loadu_ps(values + c + 8);
    const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    _mm256_storeu_ps(values + c, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(values + c + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}

}  // namespace dsv3::kernels::avx2
