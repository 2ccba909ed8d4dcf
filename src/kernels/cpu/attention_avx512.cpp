// The two small products of decode's latent attention for AVX-512 (attention.cpp calls them on a
// chunk of gathered float32 key rows): the scores of every head against every key, and the
// probability-weighted sum of the keys' c_kv; the widening of BF16 cache rows that gathers them;
// and the softmax rows' maximum, for both attention ops. Register-blocked 4 heads at a time, the
// products replace a BLAS call that, for these shapes (16 heads x 64 keys x 288), spends more time
// choosing and packing than multiplying, and that allocates. Every small loop over a block's
// registers is unrolled by pragma: left to GCC 12, arrays of accumulators lived on the stack and
// each step stored them all, which halved the products' speed. Compiled for that target here only.
#include "kernels/cpu/internal.h"

#include "core/numeric.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <limits>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
// GCC 12's AVX-512 headers build some results from a self-initialised "undefined" register, which
// -Wuninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu/reduce_avx512.h"

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 16;

__mmask16 tail_mask(std::int64_t remaining) {
  return remaining >= kLanes ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1);
}

// scores[h, j] = scale · q[h] · keys[j] for H heads from `h0` and K keys from `j0`.
template <int H, int K>
void scores_block(const float* q, const float* keys, std::int64_t width, std::int64_t count, float scale,
                  std::int64_t h0, std::int64_t j0, float* scores) {
  __m512 acc[H * K];
  #pragma GCC unroll 16
  for (int i = 0; i < H * K; ++i) acc[i] = _mm512_setzero_ps();
  // Whole vectors unmasked (GCC keeps few masks in registers), then the tail of the width masked.
  const auto step = [&](std::int64_t c, __mmask16 mask) __attribute__((always_inline)) {
    __m512 key[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) key[k] = _mm512_maskz_loadu_ps(mask, keys + (j0 + k) * width + c);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m512 query = _mm512_maskz_loadu_ps(mask, q + (h0 + h) * width + c);
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm512_fmadd_ps(query, key[k], acc[h * K + k]);
    }
  };
  std::int64_t c = 0;
  for (; c + kLanes <= width; c += kLanes) step(c, static_cast<__mmask16>(0xffff));
  if (c < width) step(c, tail_mask(width - c));
  if constexpr (H * K == 16) {
    // Copied out (rather than acc handed to reduce_add_16 by reference), so that acc stays in
    // registers through the loop above.
    __m512 v[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) v[i] = acc[i];
    alignas(64) float sums[16];
    _mm512_store_ps(sums, avx512::reduce_add_16(v));
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) scores[(h0 + i / K) * count + j0 + i % K] = scale * sums[avx512::reduce_add_16_lane(i)];
  } else {
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h)
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) scores[(h0 + h) * count + j0 + k] = scale * avx512::reduce_add(acc[h * K + k]);
  }
}

void latent_scores(const float* q, std::int64_t heads, const float* keys, std::int64_t count, std::int64_t width,
                   float scale, float* scores) {
  // Keys outer, heads inner: a block of key rows is read from memory once, then from L1 for every
  // head (the queries, heads x width, stay in L1 throughout).
  const std::int64_t full_heads = heads - heads % 4;
  std::int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    for (std::int64_t h = 0; h < full_heads; h += 4) scores_block<4, 4>(q, keys, width, count, scale, h, j, scores);
    for (std::int64_t h = full_heads; h < heads; ++h) scores_block<1, 4>(q, keys, width, count, scale, h, j, scores);
  }
  for (; j < count; ++j) {
    for (std::int64_t h = 0; h < full_heads; h += 4) scores_block<4, 1>(q, keys, width, count, scale, h, j, scores);
    for (std::int64_t h = full_heads; h < heads; ++h) scores_block<1, 1>(q, keys, width, count, scale, h, j, scores);
  }
}

// acc[h, d] += Σ_j p[h, j] · keys[j, d] for H heads from `h0` and the 16 · V values from `d0`.
template <int H, int V, bool Tail>
void accumulate_block(const float* p, std::int64_t count, const float* keys, std::int64_t width,
                      std::int64_t value_dim, std::int64_t h0, std::int64_t d0, float* acc) {
  // Only a tail block (V = 1, past the last whole 16 values) masks: GCC keeps few masks in registers.
  __mmask16 mask[V];
  #pragma GCC unroll 16
  for (int v = 0; v < V; ++v) mask[v] = Tail ? tail_mask(value_dim - d0 - v * kLanes) : static_cast<__mmask16>(0xffff);
  __m512 sum[H][V];
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h)
    #pragma GCC unroll 16
    for (int v = 0; v < V; ++v) sum[h][v] = _mm512_maskz_loadu_ps(mask[v], acc + (h0 + h) * value_dim + d0 + v * kLanes);
  for (std::int64_t j = 0; j < count; ++j) {
    __m512 key[V];
    #pragma GCC unroll 16
    for (int v = 0; v < V; ++v) key[v] = _mm512_maskz_loadu_ps(mask[v], keys + j * width + d0 + v * kLanes);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m512 weight = _mm512_set1_ps(p[(h0 + h) * count + j]);
      #pragma GCC unroll 16
      for (int v = 0; v < V; ++v) sum[h][v] = _mm512_fmadd_ps(weight, key[v], sum[h][v]);
    }
  }
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h)
    #pragma GCC unroll 16
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(acc + (h0 + h) * value_dim + d0 + v * kLanes, mask[v], sum[h][v]);
}

void latent_accumulate(const float* p, std::int64_t heads, std::int64_t count, const float* keys, std::int64_t width,
                       std::int64_t value_dim, float* acc) {
  // Values outer, heads inner: a slice of the chunk's rows is read once, then from L1 for every head.
  const std::int64_t full_heads = heads - heads % 4;
  std::int64_t d = 0;
  for (; d + 4 * kLanes <= value_dim; d += 4 * kLanes) {
    for (std::int64_t h = 0; h < full_heads; h += 4) accumulate_block<4, 4, false>(p, count, keys, width, value_dim, h, d, acc);
    for (std::int64_t h = full_heads; h < heads; ++h) accumulate_block<1, 4, false>(p, count, keys, width, value_dim, h, d, acc);
  }
  for (; d < value_dim; d += kLanes) {
    for (std::int64_t h = 0; h < full_heads; h += 4) accumulate_block<4, 1, true>(p, count, keys, width, value_dim, h, d, acc);
    for (std::int64_t h = full_heads; h < heads; ++h) accumulate_block<1, 1, true>(p, count, keys, width, value_dim, h, d, acc);
  }
}

// BF16 cache rows as float32, the same bits as bf16_to_float: 16 at a time, the tail one by one.
void widen_bf16(const std::uint16_t* bits, std::int64_t count, float* out) {
  std::int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i)));
    _mm512_storeu_si512(out + i, _mm512_slli_epi32(wide, 16));
  }
  for (; i < count; ++i) out[i] = bf16_to_float(bits[i]);
}

float row_max(const float* row, std::int64_t count) {
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::int64_t j = 0; j < count; j += kLanes)
    best = _mm512_max_ps(best, _mm512_mask_loadu_ps(best, tail_mask(count - j), row + j));
  return _mm512_reduce_max_ps(best);
}

}  // namespace

RowMax avx512_row_max() { return row_max; }

const LatentKernels* avx512_latent_kernels() {
  static const LatentKernels kernels{latent_scores, latent_accumulate, widen_bf16};
  return &kernels;
}

}  // namespace dsv3::kernels

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else

namespace dsv3::kernels {
const LatentKernels* avx512_latent_kernels() { return nullptr; }
RowMax avx512_row_max() { return nullptr; }
}  // namespace dsv3::kernels

#endif
