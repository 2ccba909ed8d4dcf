#pragma once
// Horizontal sums of AVX-512 accumulators for the kernels compiled for AVX-512 (include it inside
// their target region). Both add a vector's lanes in one fixed order, GCC's _mm512_reduce_add_ps's:
// lanes 8 apart, then 4, 2 and 1, so one output's bits do not depend on which of the two summed it
// or on the compiler.
#include <immintrin.h>

namespace dsv3::kernels::avx512 {

// The sum of v's 16 lanes.
inline __attribute__((always_inline)) float reduce_add(__m512 v) {
  const __m256 t8 = _mm256_add_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)),
                                  _mm512_castps512_ps256(v));
  const __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
  const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));  // [0] = t4[0] + t4[2], [1] = t4[1] + t4[3]
  return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

// The sums of 16 vectors at once, lane 4k + j holding v[4j + k]'s: the same additions as
// reduce_add on each, done as 15 vector adds and 30 shuffles instead of 16 x 4 of each.
inline __attribute__((always_inline)) __m512 reduce_add_16(const __m512 (&v)[16]) {
  __m512 half[8];  // v[2i] in 128-bit blocks 0-1, v[2i + 1] in 2-3: lanes 8 apart added
  for (int i = 0; i < 8; ++i)
    half[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)),
                            _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)));
  __m512 quarter[4];  // block k holds v[4i + k]: lanes 4 apart added
  for (int i = 0; i < 4; ++i)
    quarter[i] = _mm512_add_ps(_mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)),
                               _mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)));
  __m512 eighth[2];  // block k: v[8i + k] in lanes 0-1, v[8i + 4 + k] in 2-3: lanes 2 apart added
  for (int i = 0; i < 2; ++i) {
    const __m512d a = _mm512_castps_pd(quarter[2 * i]), b = _mm512_castps_pd(quarter[2 * i + 1]);
    eighth[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(eighth[0], eighth[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(eighth[0], eighth[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Where reduce_add_16 puts the sum of v[i].
constexpr int reduce_add_16_lane(int i) { return 4 * (i % 4) + i / 4; }

}  // namespace dsv3::kernels::avx512
