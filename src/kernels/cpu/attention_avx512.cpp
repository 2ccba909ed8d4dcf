// The two small products of decode's latent attention for AVX-512 (attention.cpp calls them a
// chunk of keys at a time): the scores of every head against every key, and the
// probability-weighted sum of the keys' c_kv, on gathered float32 rows or on BF16 cache rows where
// they lie; and the softmax rows' maximum, for both attention ops. Register-blocked several heads
// at a time, the products replace a BLAS call that, for these shapes (16 heads x 64 keys x 288),
// spends more time choosing and packing than multiplying, and that allocates. Every small loop over
// a block's registers is unrolled by pragma: left to GCC 12, arrays of accumulators lived on the
// stack and each step stored them all, which halved the products' speed. Compiled for that target
// here only.
#include "kernels/cpu/internal.h"

#include "core/numeric.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <limits>
#include <type_traits>

#define DSV3_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512bf16"
// AVX512-BF16 is in the target for the dot-product kernels alone (scores_dot, accumulate_dot),
// which attention.cpp calls only where fast_bf16_products() holds, on a CPU that has it. Nothing
// here uses the __bf16 type, the one way a compiler emits those instructions unasked.
#include "kernels/cpu/avx512_target_begin.h"

#include "kernels/cpu/bf16_pairs_avx512.h"
#include "kernels/cpu/exp_avx512.h"
#include "kernels/cpu/reduce_avx512.h"

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 16;

__mmask16 tail_mask(std::int64_t remaining) {
  return remaining >= kLanes ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1);
}

// scores[h0 + h, j0 + k] = scale · (the sum of acc[h * K + k]'s lanes) for a block of H heads x K
// keys: scores[h, j] at h * stride + j, or, KeyMajor (heads in lanes, for the dot products' softmax),
// at j * stride + h.
template <int H, int K, bool KeyMajor = false>
__attribute__((always_inline)) inline void store_scores(const __m512 (&acc)[H * K], float scale, std::int64_t stride,
                                                        std::int64_t h0, std::int64_t j0, float* scores) {
  const auto at = [&](int h, int k) { return KeyMajor ? (j0 + k) * stride + h0 + h : (h0 + h) * stride + j0 + k; };
  if constexpr (H * K == 16) {
    // Copied out (rather than acc handed to reduce_add_16 by reference), so that acc stays in
    // registers through the caller's loop.
    __m512 v[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) v[i] = acc[i];
    const __m512 sums = avx512::reduce_add_16(v);
    if constexpr (KeyMajor && K == 2) {
      // Lane 8k + h of `order` names where acc[h * 2 + k]'s sum lies: each key's 8 heads in a row.
      const __m512i order = _mm512_setr_epi32(
          avx512::reduce_add_16_lane(0), avx512::reduce_add_16_lane(2), avx512::reduce_add_16_lane(4),
          avx512::reduce_add_16_lane(6), avx512::reduce_add_16_lane(8), avx512::reduce_add_16_lane(10),
          avx512::reduce_add_16_lane(12), avx512::reduce_add_16_lane(14), avx512::reduce_add_16_lane(1),
          avx512::reduce_add_16_lane(3), avx512::reduce_add_16_lane(5), avx512::reduce_add_16_lane(7),
          avx512::reduce_add_16_lane(9), avx512::reduce_add_16_lane(11), avx512::reduce_add_16_lane(13),
          avx512::reduce_add_16_lane(15));
      const __m512 scaled = _mm512_mul_ps(_mm512_permutexvar_ps(order, sums), _mm512_set1_ps(scale));
      _mm256_storeu_ps(scores + at(0, 0), _mm512_castps512_ps256(scaled));
      _mm256_storeu_ps(scores + at(0, 1), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(scaled), 1)));
    } else {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, sums);
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) scores[at(i / K, i % K)] = scale * lanes[avx512::reduce_add_16_lane(i)];
    }
  } else {
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h)
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) scores[at(h, k)] = scale * avx512::reduce_add(acc[h * K + k]);
  }
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
  store_scores<H, K>(acc, scale, count, h0, j0, scores);
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

// The same two products on BF16 cache rows read where they lie, `keys[j]` pointing at key j's
// row, with the queries and the value sums paired (bf16_pairs_avx512.h): each 64-byte load of a row
// widens to 32 values in two instructions. Gathering the rows into float32 first (a 72 KiB copy per
// 64 keys, past L1) took 29% of a batch's latent attention. bench_kernels, 3 paired runs' medians:
// AttentionLatentStep/16 (from memory, 2 threads) 12.3-14.6 -> 9.6-10.8 ms; AttentionLatent/4096
// (one thread, from cache) 826-835 -> 645-652 us. 8 heads x 2 keys a block: 16 accumulators and the
// 4 halves of 2 widened rows, 4 widening instructions per 32 FMAs.
constexpr std::int64_t kPair = avx512::kPairColumns;

// 16 BF16 values at `bits`, the `mask` lanes read, as float32 in order.
__m512 widen_16(const std::uint16_t* bits, __mmask16 mask) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bits)), 16));
}

constexpr std::int64_t kCacheLine = 64;

// Whether the scores of queries of type Q are stored key-major: those rounded to BF16 (the dot
// products, whose softmax takes heads in lanes) are; the paired float32 ones are head-major.
template <typename Q>
constexpr bool kKeyMajor = std::is_same_v<Q, std::uint16_t>;

// scores[h, j] = scale · q[h] · keys[j] for H heads from `h0` and K keys from `j0`.
template <int H, int K>
void scores_block_bf16(const float* q, const std::uint16_t* const* keys, std::int64_t width, std::int64_t count,
                       float scale, std::int64_t h0, std::int64_t j0, float* scores) {
  __m512 acc[H * K];
  #pragma GCC unroll 16
  for (int i = 0; i < H * K; ++i) acc[i] = _mm512_setzero_ps();
  std::int64_t c = 0;
  for (; c + kPair <= width; c += kPair) {
    __m512 even[K], odd[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const __m512i pairs = _mm512_loadu_si512(keys[j0 + k] + c);
      even[k] = avx512::bf16_even(pairs);
      odd[k] = avx512::bf16_odd(pairs);
    }
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const float* qh = q + (h0 + h) * width + c;
      // Each query vector loaded once into a register for the K keys: left to itself, GCC folded
      // the load into every FMA, twice the loads (AttentionLatent/4096 640-650 -> 614-616 us).
      __m512 q_even = _mm512_loadu_ps(qh);
      asm("" : "+v"(q_even));
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm512_fmadd_ps(q_even, even[k], acc[h * K + k]);
      __m512 q_odd = _mm512_loadu_ps(qh + kLanes);
      asm("" : "+v"(q_odd));
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm512_fmadd_ps(q_odd, odd[k], acc[h * K + k]);
    }
  }
  for (; c < width; c += kLanes) {  // the last width % 32 columns, in order
    const __mmask16 mask = tail_mask(width - c);
    __m512 key[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) key[k] = widen_16(keys[j0 + k] + c, mask);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m512 query = _mm512_maskz_loadu_ps(mask, q + (h0 + h) * width + c);
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm512_fmadd_ps(query, key[k], acc[h * K + k]);
    }
  }
  store_scores<H, K, kKeyMajor<float>>(acc, scale, count, h0, j0, scores);
}

// The same with the queries rounded to BF16 (fast mode, see LatentKernels::scores_dot): both sides
// in their natural order, one AVX512-BF16 dot product per 32 columns of a head and a key, half the
// instructions of the widened FMAs above. Whole 32 columns unmasked, then the tail masked. The
// scores are stored key-major, scores[j, h] at j * stride + h.
template <int H, int K>
void scores_block_bf16(const std::uint16_t* q, const std::uint16_t* const* keys, std::int64_t width,
                       std::int64_t stride, float scale, std::int64_t h0, std::int64_t j0, float* scores) {
  __m512 acc[H * K];
  #pragma GCC unroll 16
  for (int i = 0; i < H * K; ++i) acc[i] = _mm512_setzero_ps();
  const auto step = [&](std::int64_t c, auto full, __mmask32 mask) __attribute__((always_inline)) {
    const auto load = [&](const std::uint16_t* p) __attribute__((always_inline)) {
      return (__m512bh)(decltype(full)::value ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(mask, p));
    };
    __m512bh key[K];
    #pragma GCC unroll 16
    for (int k = 0; k < K; ++k) key[k] = load(keys[j0 + k] + c);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m512bh query = load(q + (h0 + h) * width + c);
      #pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[h * K + k] = _mm512_dpbf16_ps(acc[h * K + k], query, key[k]);
    }
  };
  std::int64_t c = 0;
  for (; c + kPair <= width; c += kPair) step(c, std::true_type{}, static_cast<__mmask32>(~0u));
  if (c < width) step(c, std::false_type{}, static_cast<__mmask32>((1ull << (width - c)) - 1));
  store_scores<H, K, kKeyMajor<std::uint16_t>>(acc, scale, stride, h0, j0, scores);
}

// 8 heads at a time (16 accumulators for 2 keys, 4 widened key vectors), then the rest of them.
constexpr int kScoreHeads = 8;


// Q: float (paired queries; scores[h, j] at h * stride + j) or std::uint16_t (queries rounded to
// BF16; scores[j, h] at j * stride + h).
template <int K, int H = kScoreHeads, typename Q>
void scores_heads_bf16(const Q* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t width,
                       std::int64_t stride, float scale, std::int64_t j0, float* scores) {
  std::int64_t h = 0;
  for (; h + H <= heads; h += H) scores_block_bf16<H, K>(q, keys, width, stride, scale, h, j0, scores);
  if constexpr (H > 1) {
    if (h < heads)
      scores_heads_bf16<K, H - 1>(q + h * width, heads - h, keys, width, stride, scale, j0,
                                  scores + h * (kKeyMajor<Q> ? 1 : stride));
  }
}

// A key row's lines into L1 (`width` BF16 values).
inline void fetch_row(const std::uint16_t* row, std::int64_t width) {
  const auto* bytes = reinterpret_cast<const char*>(row);
  for (std::int64_t b = 0; b < width * 2; b += kCacheLine) _mm_prefetch(bytes + b, _MM_HINT_T0);
}

// Each sequence's cache is read from memory once a step, so the rows kLatentFetchAhead keys ahead
// of the pair being scored are fetched meanwhile (attention_latent fetches a chunk's first ones).
template <typename Q>
void latent_scores_in_place(const Q* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t count,
                            std::int64_t width, float scale, float* scores) {
  const std::int64_t stride = kKeyMajor<Q> ? heads : count;
  std::int64_t j = 0;
  for (; j + 2 <= count; j += 2) {
    for (std::int64_t a = j + kLatentFetchAhead; a < std::min(count, j + kLatentFetchAhead + 2); ++a)
      fetch_row(keys[a], width);
    scores_heads_bf16<2>(q, heads, keys, width, stride, scale, j, scores);
  }
  if (j < count) scores_heads_bf16<1>(q, heads, keys, width, stride, scale, j, scores);
}

// Float32 probabilities p[h, j] at h * head_stride + j * key_stride: head-major rows of the scores
// (the exact path's) or key-major (the dot products' softmax, heads in lanes).
struct Probabilities {
  const float* p;
  std::int64_t head_stride, key_stride;
  float at(std::int64_t h, std::int64_t j) const { return p[h * head_stride + j * key_stride]; }
  Probabilities from_head(std::int64_t h) const { return {p + h * head_stride, head_stride, key_stride}; }
};

// acc[h, d] += Σ_j p[h, j] · keys[j, d] for H heads from `h0` and values [d0, d0 + 32), paired in acc.
template <int H>
void accumulate_block_bf16(Probabilities p, std::int64_t count, const std::uint16_t* const* keys,
                           std::int64_t value_dim, std::int64_t h0, std::int64_t d0, float* acc) {
  __m512 even[H], odd[H];
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    even[h] = _mm512_loadu_ps(acc + (h0 + h) * value_dim + d0);
    odd[h] = _mm512_loadu_ps(acc + (h0 + h) * value_dim + d0 + kLanes);
  }
  for (std::int64_t j = 0; j < count; ++j) {
    const __m512i pairs = _mm512_loadu_si512(keys[j] + d0);
    const __m512 key_even = avx512::bf16_even(pairs), key_odd = avx512::bf16_odd(pairs);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const __m512 weight = _mm512_set1_ps(p.at(h0 + h, j));
      even[h] = _mm512_fmadd_ps(weight, key_even, even[h]);
      odd[h] = _mm512_fmadd_ps(weight, key_odd, odd[h]);
    }
  }
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    _mm512_storeu_ps(acc + (h0 + h) * value_dim + d0, even[h]);
    _mm512_storeu_ps(acc + (h0 + h) * value_dim + d0 + kLanes, odd[h]);
  }
}

// The same for values [d0, d0 + 16) past the last whole 32, in order, the `mask` lanes.
template <int H>
void accumulate_tail_bf16(Probabilities p, std::int64_t count, const std::uint16_t* const* keys,
                          std::int64_t value_dim, std::int64_t h0, std::int64_t d0, float* acc) {
  const __mmask16 mask = tail_mask(value_dim - d0);
  __m512 sum[H];
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) sum[h] = _mm512_maskz_loadu_ps(mask, acc + (h0 + h) * value_dim + d0);
  for (std::int64_t j = 0; j < count; ++j) {
    const __m512 key = widen_16(keys[j] + d0, mask);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) sum[h] = _mm512_fmadd_ps(_mm512_set1_ps(p.at(h0 + h, j)), key, sum[h]);
  }
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) _mm512_mask_storeu_ps(acc + (h0 + h) * value_dim + d0, mask, sum[h]);
}

// 8 heads at a time (16 accumulators, 2 widened key vectors), then the rest of them.
constexpr int kAccumulateHeads = 8;

template <int H = kAccumulateHeads>
void accumulate_heads_bf16(Probabilities p, std::int64_t heads, std::int64_t count, const std::uint16_t* const* keys,
                           std::int64_t value_dim, std::int64_t d0, float* acc) {
  const bool tail = d0 + kPair > value_dim;
  std::int64_t h = 0;
  for (; h + H <= heads; h += H) {
    if (tail) {
      accumulate_tail_bf16<H>(p, count, keys, value_dim, h, d0, acc);
    } else {
      accumulate_block_bf16<H>(p, count, keys, value_dim, h, d0, acc);
    }
  }
  if constexpr (H > 1) {
    if (h < heads)
      accumulate_heads_bf16<H - 1>(p.from_head(h), heads - h, count, keys, value_dim, d0, acc + h * value_dim);
  }
}

void latent_accumulate_bf16(const float* p, std::int64_t heads, std::int64_t count, const std::uint16_t* const* keys,
                            std::int64_t value_dim, float* acc) {
  const Probabilities rows{p, count, 1};
  std::int64_t d = 0;
  for (; d + kPair <= value_dim; d += kPair) accumulate_heads_bf16(rows, heads, count, keys, value_dim, d, acc);
  for (; d < value_dim; d += kLanes) accumulate_heads_bf16(rows, heads, count, keys, value_dim, d, acc);
}

void latent_scores_bf16(const float* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t count,
                        std::int64_t width, float scale, float* scores) {
  latent_scores_in_place(q, heads, keys, count, width, scale, scores);
}

void latent_scores_dot(const std::uint16_t* q, std::int64_t heads, const std::uint16_t* const* keys,
                       std::int64_t count, std::int64_t width, float scale, float* scores) {
  latent_scores_in_place(q, heads, keys, count, width, scale, scores);
}

// acc[h, d] += Σ_j p[h, j] · keys[j, d] for H heads from `h0` and values [d0, d0 + 32), two keys
// at a time: their rows interleaved value by value (unpacklo/hi_epi16) meet each head's pair of
// BF16 probabilities (p2[i, h] at i * stride + h, keys 2i and 2i + 1) in one dot product. The
// interleave leaves lane i of `lo` with value d0 + 8 (i / 4) + i % 4 and of `hi` with 4 more, the
// order acc keeps (dot_order_undo). acc is multiplied by rescale[h0 + h] as it is loaded.
template <int H>
void accumulate_block_dot(const std::uint32_t* p2, std::int64_t stride, std::int64_t pairs, std::int64_t count,
                          const std::uint16_t* const* keys, std::int64_t value_dim, std::int64_t h0, std::int64_t d0,
                          const float* rescale, float* acc) {
  __m512 lo[H], hi[H];
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    const __m512 factor = _mm512_set1_ps(rescale[h0 + h]);
    lo[h] = _mm512_mul_ps(_mm512_loadu_ps(acc + (h0 + h) * value_dim + d0), factor);
    hi[h] = _mm512_mul_ps(_mm512_loadu_ps(acc + (h0 + h) * value_dim + d0 + kLanes), factor);
  }
  for (std::int64_t i = 0; i < pairs; ++i) {
    const __m512i a = _mm512_loadu_si512(keys[2 * i] + d0);
    // An odd count's last key meets a zero row (and a zero probability).
    const __m512i b = 2 * i + 1 < count ? _mm512_loadu_si512(keys[2 * i + 1] + d0) : _mm512_setzero_si512();
    const auto key_lo = (__m512bh)_mm512_unpacklo_epi16(a, b), key_hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
    #pragma GCC unroll 16
    for (int h = 0; h < H; ++h) {
      const auto weight = (__m512bh)_mm512_set1_epi32(static_cast<int>(p2[i * stride + h0 + h]));
      lo[h] = _mm512_dpbf16_ps(lo[h], weight, key_lo);
      hi[h] = _mm512_dpbf16_ps(hi[h], weight, key_hi);
    }
  }
  #pragma GCC unroll 16
  for (int h = 0; h < H; ++h) {
    _mm512_storeu_ps(acc + (h0 + h) * value_dim + d0, lo[h]);
    _mm512_storeu_ps(acc + (h0 + h) * value_dim + d0 + kLanes, hi[h]);
  }
}

template <int H = kAccumulateHeads>
void accumulate_heads_dot(const std::uint32_t* p2, std::int64_t stride, std::int64_t pairs, std::int64_t heads,
                          std::int64_t count, const std::uint16_t* const* keys, std::int64_t value_dim,
                          std::int64_t d0, const float* rescale, float* acc) {
  std::int64_t h = 0;
  for (; h + H <= heads; h += H)
    accumulate_block_dot<H>(p2, stride, pairs, count, keys, value_dim, h, d0, rescale, acc);
  if constexpr (H > 1) {
    if (h < heads)
      accumulate_heads_dot<H - 1>(p2 + h, stride, pairs, heads - h, count, keys, value_dim, d0, rescale + h,
                                  acc + h * value_dim);
  }
}

// One chunk's step of the online softmax for the dot products, 16 heads to a vector: scores [count,
// heads] (key-major, as scores_dot writes them) become exp(score - the new maximum) in place; each
// head's running max and sum move on (sum · rescale + the chunk's, its keys added in order), with
// rescale[h] = exp(old max - new max), 0 on a first chunk; p2[i, h] (i * heads + h) takes keys 2i
// and 2i + 1's probabilities rounded to BF16, in its low and high half (0 past an odd count's end).
// Done head by head over rows of the scores, this was ~8% of a chunk's time on 16 heads (per-head
// calls, scalar exp for the rescaling, a rounding pass per head).
void latent_softmax_dot(float* scores, std::int64_t heads, std::int64_t count, float* max, float* sum,
                        float* rescale, std::uint32_t* p2) {
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::int64_t h = 0; h < heads; h += kLanes) {
    const __mmask16 mask = tail_mask(heads - h);
    const __m512 old_max = _mm512_mask_loadu_ps(minus_infinity, mask, max + h);
    __m512 new_max = old_max;
    for (std::int64_t j = 0; j < count; ++j)
      new_max = _mm512_max_ps(new_max, _mm512_mask_loadu_ps(minus_infinity, mask, scores + j * heads + h));
    // A lane past the heads keeps -inf throughout; it is never stored.
    const __m512 factor = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(old_max, minus_infinity, _CMP_NEQ_OQ),
                                              avx512::exp_nonpositive(_mm512_sub_ps(old_max, new_max)));
    __m512 total = _mm512_setzero_ps();
    for (std::int64_t i = 0; 2 * i < count; ++i) {
      float* at = scores + 2 * i * heads + h;
      const __m512 first = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, at), new_max));
      _mm512_mask_storeu_ps(at, mask, first);
      total = _mm512_add_ps(total, first);
      __m512 second = _mm512_setzero_ps();
      if (2 * i + 1 < count) {
        second = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, at + heads), new_max));
        _mm512_mask_storeu_ps(at + heads, mask, second);
        total = _mm512_add_ps(total, second);
      }
      const __m512i low = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(first));
      const __m512i high = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(second));
      _mm512_mask_storeu_epi32(p2 + i * heads + h, mask, _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
    }
    _mm512_mask_storeu_ps(sum + h, mask, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, sum + h), factor, total));
    _mm512_mask_storeu_ps(max + h, mask, new_max);
    _mm512_mask_storeu_ps(rescale + h, mask, factor);
  }
}

// The softmax's rescaling of acc folds into the sums' loads: a separate pass over every head's
// values at each new maximum (which real attention reaches at most chunks) took ~7 of the ~55 us a
// 576-key sequence's layer takes in a batch-16 step (bench-1b).
void latent_accumulate_dot(const float* p, const std::uint32_t* p2, std::int64_t heads, std::int64_t count,
                           const std::uint16_t* const* keys, std::int64_t value_dim, const float* rescale,
                           float* acc) {
  const std::int64_t pairs = (count + 1) / 2;
  std::int64_t d = 0;
  for (; d + kPair <= value_dim; d += kPair)
    accumulate_heads_dot(p2, heads, pairs, heads, count, keys, value_dim, d, rescale, acc);
  if (d == value_dim) return;
  for (std::int64_t h = 0; h < heads; ++h) {  // the last value_dim % 32 values: rescaled, then summed
    if (rescale[h] == 1.0f) continue;
    const __m512 factor = _mm512_set1_ps(rescale[h]);
    for (std::int64_t c = d; c < value_dim; c += kLanes) {
      const __mmask16 mask = tail_mask(value_dim - c);
      float* at = acc + h * value_dim + c;
      _mm512_mask_storeu_ps(at, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, at), factor));
    }
  }
  const Probabilities columns{p, 1, heads};
  for (; d < value_dim; d += kLanes) accumulate_heads_bf16(columns, heads, count, keys, value_dim, d, acc);
}

// acc's whole 32 values back in order from accumulate_block_dot's.
void dot_order_undo(float* values, std::int64_t cols) {
  const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
  const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
  for (std::int64_t c = 0; c + kPair <= cols; c += kPair) {
    const __m512 lo = _mm512_loadu_ps(values + c), hi = _mm512_loadu_ps(values + c + kLanes);
    _mm512_storeu_ps(values + c, _mm512_permutex2var_ps(lo, first, hi));
    _mm512_storeu_ps(values + c + kLanes, _mm512_permutex2var_ps(lo, second, hi));
  }
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
  static const LatentKernels kernels{latent_scores,          latent_accumulate,    latent_scores_bf16,
                                     latent_accumulate_bf16, avx512::pair_columns, avx512::unpair_columns,
                                     latent_scores_dot,      latent_softmax_dot,    latent_accumulate_dot,
                                     dot_order_undo};
  return &kernels;
}

}  // namespace dsv3::kernels

#include "kernels/cpu/avx512_target_end.h"

#else

namespace dsv3::kernels {
const LatentKernels* avx512_latent_kernels() { return nullptr; }
RowMax avx512_row_max() { return nullptr; }
}  // namespace dsv3::kernels

#endif
