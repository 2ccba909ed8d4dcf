// Decode's latent attention products for AVX2 + FMA, on BF16 cache rows read where they lie (the
// AVX-512 file's in-place kernels on half the width; attention.cpp calls them a chunk of keys at a
// time): the scores of every head against every key, and the probability-weighted sum of the keys'
// c_kv. Before them, an AVX2 CPU gathered each chunk's rows into float32 and multiplied with
// OpenBLAS: `dsv3 bench --batch 16 --profile`, bench-1b, 2-vCPU AMD EPYC (Zen 3): attention_latent
// 32.9 ms a step. The queries and the value sums are paired as linear_avx2.cpp pairs activations:
// each whole 16 columns as their 8 even columns, then their 8 odd ones; the last ones in order.
// Compiled for that target here only.
#include "kernels/cpu/internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/avx2_target_begin.h"

#include "kernels/cpu/bf16_pairs_avx2.h"

namespace dsv3::kernels {
namespace {

#define DSV3_INLINE inline __attribute__((always_inline))

using avx2::bf16_even;
using avx2::bf16_odd;
using avx2::load_pairs;
constexpr std::int64_t kLanes = 8, kPair = avx2::kPairColumns, kCacheLine = 64;

// The last `count` (< 16) BF16 values at `bits` and the 16 - count after them as 0, as float32 in
// order: [0, 8) in lo, [8, 16) in hi.
DSV3_INLINE void widen_tail(const std::uint16_t* bits, std::int64_t count, __m256& lo, __m256& hi) {
  alignas(32) std::uint16_t padded[kPair] = {};
  std::memcpy(padded, bits, static_cast<std::size_t>(count) * sizeof(std::uint16_t));
  const __m256i all = _mm256_load_si256(reinterpret_cast<const __m256i*>(padded));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(all)), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(all, 1)), 16));
}

// `count` (< 16) floats at `values` and zeros after them.
DSV3_INLINE void load_tail(const float* values, std::int64_t count, __m256& lo, __m256& hi) {
  alignas(32) float padded[kPair] = {};
  std::memcpy(padded, values, static_cast<std::size_t>(count) * sizeof(float));
  lo = _mm256_load_ps(padded);
  hi = _mm256_load_ps(padded + kLanes);
}

// The 8 sums of v[0..7]'s lanes, sum i in lane i: 6 horizontal adds, 2 lane swaps and an add
// instead of 8 reductions of 4 steps each.
DSV3_INLINE __m256 reduce_add_8(const __m256 (&v)[8]) {
  const __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
  const __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);  // lane i of each half: a part of sum i % 4
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// scores[h0 + h, j0 + k] = scale · q[h0 + h] · keys[j0 + k] for 4 heads x 2 keys (8 accumulators, the
// even and odd halves of 2 widened rows and a query vector: 13 registers), scores[h, j] at
// h * stride + j.
constexpr int kScoreHeads = 4;
template <int H, int K>
void scores_block(const float* q, const std::uint16_t* const* keys, std::int64_t width, std::int64_t stride,
                  float scale, std::int64_t h0, std::int64_t j0, float* scores) {
  __m256 acc[H * K];
  #pragma GCC unroll 16
  for (int i = 0; i < H * K; ++i) acc[i] = _mm256_setzero_ps();
  std::int64_t c = 0;
  for (; c + kPair <= width; c += kPair) {
    __m256 even[K], odd[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const __m256i pairs = load_pairs(keys[j0 + k] + c);
      even[k] = bf16_even(pairs);
      odd[k] = bf16_odd(pairs);
    }
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const float* qh = q + (h0 + h) * width + c;
      // Loaded once into a register for the K keys (GCC otherwise folds it into every FMA).
      __m256 q_even = _mm256_loadu_ps(qh);
      __asm__("" : "+x"(q_even));
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm256_fmadd_ps(q_even, even[k], acc[h * K + k]);
      __m256 q_odd = _mm256_loadu_ps(qh + kLanes);
      __asm__("" : "+x"(q_odd));
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm256_fmadd_ps(q_odd, odd[k], acc[h * K + k]);
    }
  }
  if (c < width) {  // the last width % 16 columns, in order
    __m256 lo[K], hi[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) widen_tail(keys[j0 + k] + c, width - c, lo[k], hi[k]);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      __m256 q_lo, q_hi;
      load_tail(q + (h0 + h) * width + c, width - c, q_lo, q_hi);
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) {
        acc[h * K + k] = _mm256_fmadd_ps(q_lo, lo[k], acc[h * K + k]);
        acc[h * K + k] = _mm256_fmadd_ps(q_hi, hi[k], acc[h * K + k]);
      }
    }
  }
  if constexpr (H * K == 8) {
    alignas(32) float sums[8];
    _mm256_store_ps(sums, _mm256_mul_ps(reduce_add_8(acc), _mm256_set1_ps(scale)));
    #pragma GCC unroll 16
    for (int i = 0; i < 8; ++i) scores[(h0 + i / K) * stride + j0 + i % K] = sums[i];
  } else {
    #pragma GCC unroll 16
    for (int i = 0; i < H * K; ++i) {
      alignas(32) float lanes[kLanes];
      _mm256_store_ps(lanes, acc[i]);
      float sum = 0.0f;
      for (const float lane : lanes) sum += lane;
      scores[(h0 + i / K) * stride + j0 + i % K] = scale * sum;
    }
  }
}

template <int K, int H = kScoreHeads>
void scores_heads(const float* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t width,
                  std::int64_t stride, float scale, std::int64_t j0, float* scores) {
  std::int64_t h = 0;
  for (; h + H <= heads; h += H) scores_block<H, K>(q, keys, width, stride, scale, h, j0, scores);
  if constexpr (H > 1) {
    if (h < heads) scores_heads<K, H - 1>(q + h * width, heads - h, keys, width, stride, scale, j0, scores + h * stride);
  }
}

// A key row's lines into L1 (`width` BF16 values).
DSV3_INLINE void fetch_row(const std::uint16_t* row, std::int64_t width) {
  const auto* bytes = reinterpret_cast<const char*>(row);
  for (std::int64_t b = 0; b < width * 2; b += kCacheLine) _mm_prefetch(bytes + b, _MM_HINT_T0);
}

// Rows kLatentFetchAhead keys ahead of the pair being scored are fetched meanwhile (attention_latent
// fetches a chunk's first ones).
void latent_scores_bf16(const float* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t count,
                        std::int64_t width, float scale, float* scores) {
  std::int64_t j = 0;
  for (; j + 2 <= count; j += 2) {
    for (std::int64_t a = j + kLatentFetchAhead; a < std::min(count, j + kLatentFetchAhead + 2); ++a)
      fetch_row(keys[a], width);
    scores_heads<2>(q, heads, keys, width, count, scale, j, scores);
  }
  if (j < count) scores_heads<1>(q, heads, keys, width, count, scale, j, scores);
}

// acc[h, d] += Σ_j p[h, j] · keys[j, d] for H heads from `h0` and values [d0, d0 + 16), paired in
// acc (kTail: the last value_dim % 16 values, in order): 6 heads' 12 accumulators, the two halves of
// a widened row and a broadcast probability.
constexpr int kAccumulateHeads = 6;
template <int H, bool kTail>
void accumulate_block(const float* p, std::int64_t count, const std::uint16_t* const* keys, std::int64_t value_dim,
                      std::int64_t h0, std::int64_t d0, float* acc) {
  const std::int64_t width = kTail ? value_dim - d0 : kPair;
  __m256 first[H], second[H];
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    float* at = acc + (h0 + h) * value_dim + d0;
    if constexpr (kTail) {
      load_tail(at, width, first[h], second[h]);
    } else {
      first[h] = _mm256_loadu_ps(at);
      second[h] = _mm256_loadu_ps(at + kLanes);
    }
  }
  for (std::int64_t j = 0; j < count; ++j) {
    __m256 key_first, key_second;
    if constexpr (kTail) {
      widen_tail(keys[j] + d0, width, key_first, key_second);
    } else {
      const __m256i pairs = load_pairs(keys[j] + d0);
      key_first = bf16_even(pairs);
      key_second = bf16_odd(pairs);
    }
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m256 weight = _mm256_broadcast_ss(p + (h0 + h) * count + j);
      first[h] = _mm256_fmadd_ps(weight, key_first, first[h]);
      second[h] = _mm256_fmadd_ps(weight, key_second, second[h]);
    }
  }
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    float* at = acc + (h0 + h) * value_dim + d0;
    if constexpr (kTail) {
      alignas(32) float values[kPair];
      _mm256_store_ps(values, first[h]);
      _mm256_store_ps(values + kLanes, second[h]);
      std::memcpy(at, values, static_cast<std::size_t>(width) * sizeof(float));
    } else {
      _mm256_storeu_ps(at, first[h]);
      _mm256_storeu_ps(at + kLanes, second[h]);
    }
  }
}

template <bool kTail, int H = kAccumulateHeads>
void accumulate_heads(const float* p, std::int64_t heads, std::int64_t count, const std::uint16_t* const* keys,
                      std::int64_t value_dim, std::int64_t d0, float* acc) {
  std::int64_t h = 0;
  for (; h + H <= heads; h += H) accumulate_block<H, kTail>(p, count, keys, value_dim, h, d0, acc);
  if constexpr (H > 1) {
    if (h < heads)
      accumulate_heads<kTail, H - 1>(p + h * count, heads - h, count, keys, value_dim, d0, acc + h * value_dim);
  }
}

void latent_accumulate_bf16(const float* p, std::int64_t heads, std::int64_t count, const std::uint16_t* const* keys,
                            std::int64_t value_dim, float* acc) {
  std::int64_t d = 0;
  for (; d + kPair <= value_dim; d += kPair) accumulate_heads<false>(p, heads, count, keys, value_dim, d, acc);
  if (d < value_dim) accumulate_heads<true>(p, heads, count, keys, value_dim, d, acc);
}

#undef DSV3_INLINE

}  // namespace

const LatentKernels* avx2_latent_kernels() {
  static const LatentKernels kernels{nullptr, nullptr, latent_scores_bf16, latent_accumulate_bf16, avx2::pair_columns,
                                     avx2::unpair_columns};
  return &kernels;
}

}  // namespace dsv3::kernels

#include "kernels/cpu/avx2_target_end.h"

#else

namespace dsv3::kernels {
const LatentKernels* avx2_latent_kernels() { return nullptr; }
}  // namespace dsv3::kernels

#endif
