#pragma once
// FP8 E4M3 in quads for the kernels compiled for AVX2 (include it inside their target region). One
// 32-byte load holds 32 codes; as 8 32-bit lanes, byte k of lane j is column 4j + k ("quad k").
// Shifting byte k to the top of its lane (arithmetic), then 4 to the right, puts the sign at bit
// 31 and the code's 4 exponent and 3 mantissa bits at 26..20, the low bits of float32's exponent
// and the top of its mantissa; keeping only those bits gives the float32 whose value is the code's
// times 2^-120, exactly, subnormal codes included, as float32 subnormals, which Zen 3's FMAs take
// at full speed: `bench_kernels --benchmark_filter='ExpertRows/rows:(1|6)/N:384/K:1024/fp8:(1|2)'`
// (fp8:2 with about 3/4 of the codes subnormal), rows 1 32-35 us against 30-36, rows 6 85-104
// against 84-104 (CPUs that take assists on subnormal operands are not measured). Two or three
// instructions per 8 values, against five (a sign extension to 16 bits, a shift, a mask and the
// 2-uop F16 conversion) for 8 in order: one core multiplies an expert's 384 x 1024 or 1024 x 384
// matrix, streamed from memory, by a vector in 29-37 us against 43-48, `DSV3_THREADS=1 bench_kernels
// --benchmark_filter='ExpertRows/rows:1/.*fp8:1'` (2-vCPU AMD EPYC, Zen 3, minima of 3, two
// alternations with the in-order kernels; a shared host).
//
// The float32 operand on the other side of the FMA is stored to match (each whole 32 columns as
// their quads 0 to 3, the last cols % 32 zero-padded to 32 and ordered the same) and carries the
// 2^60 that makes the products the weights' own values times 2^-60; the sums are multiplied by
// 2^60 at the end. Split so, neither side leaves float32's normal range for any activation times
// block scale between 2^-66 and 2^68.
#include <immintrin.h>

#include <cstdint>

namespace dsv3::kernels::avx2 {

inline constexpr std::int64_t kQuadColumns = 32;
inline constexpr float kQuadActivationScale = 0x1p60f;  // the activations' share of 2^120
inline constexpr float kQuadSumScale = 0x1p60f;         // the sums'

// Quad K of the 32 codes at `codes`, as float32 (code value times 2^-120).
template <int K>
inline __attribute__((always_inline)) __m256 fp8_quad(const void* codes) {
  static_assert(K >= 0 && K < 4);
  __m256i v = _mm256_loadu_si256(static_cast<const __m256i*>(codes));
  if constexpr (K < 3) v = _mm256_slli_epi32(v, 24 - 8 * K);
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(v, 4), _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
}

// Where column c of a row lies in its quad order.
inline constexpr std::int64_t quad_position(std::int64_t c) {
  return (c & ~(kQuadColumns - 1)) + 8 * (c & 3) + ((c >> 2) & 7);
}

// One whole 32 columns `in[0, 32)` times `factor`, written in quad order to out[0, 32).
inline __attribute__((always_inline)) void quad_columns(const float* in, __m256 factor, float* out) {
  const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(in), factor), b = _mm256_mul_ps(_mm256_loadu_ps(in + 8), factor);
  const __m256 c = _mm256_mul_ps(_mm256_loadu_ps(in + 16), factor), d = _mm256_mul_ps(_mm256_loadu_ps(in + 24), factor);
  // Within each 128-bit half, columns 4j + k of a and b, then of c and d, interleaved by k; the
  // 64-bit unpacks gather each k; lanes then hold j = 0, 2, 4, 6, 1, 3, 5, 7, which the
  // permutation puts in order.
  const __m256 ab_lo = _mm256_unpacklo_ps(a, b), ab_hi = _mm256_unpackhi_ps(a, b);
  const __m256 cd_lo = _mm256_unpacklo_ps(c, d), cd_hi = _mm256_unpackhi_ps(c, d);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const auto quad = [&](__m256 ab, __m256 cd, bool high) {
    const __m256d ab_d = _mm256_castps_pd(ab), cd_d = _mm256_castps_pd(cd);
    const __m256 k = _mm256_castpd_ps(high ? _mm256_unpackhi_pd(ab_d, cd_d) : _mm256_unpacklo_pd(ab_d, cd_d));
    return _mm256_permutevar8x32_ps(k, order);
  };
  _mm256_storeu_ps(out, quad(ab_lo, cd_lo, false));
  _mm256_storeu_ps(out + 8, quad(ab_lo, cd_lo, true));
  _mm256_storeu_ps(out + 16, quad(ab_hi, cd_hi, false));
  _mm256_storeu_ps(out + 24, quad(ab_hi, cd_hi, true));
}

}  // namespace dsv3::kernels::avx2
