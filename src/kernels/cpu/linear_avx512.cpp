// The weight kernels for AVX-512 (F, BW, VL): 16 floats per register, masked loads for the edges.
// Compiled for that target here only; linear.cpp calls them after checking the CPU.
#include "kernels/cpu/internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

#include "core/error.h"

#define DSV3_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx2,fma,f16c,avx512bf16"
// AVX512-BF16 is in the target for the BF16 dot-product kernels alone (gemv_bf16_dot), which
// linear.cpp calls only on a CPU that has it. Nothing else here uses the __bf16 type, the one way
// a compiler emits those instructions unasked.
#include "kernels/cpu/avx512_target_begin.h"

#include "kernels/cpu/bf16_pairs_avx512.h"
#include "kernels/cpu/exp_avx512.h"
#include "kernels/cpu/reduce_avx512.h"

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 16;
// Output rows per step with at most kActivationRows activation rows (a decode step, an expert's few
// rows), where the weights' read speed is all that counts. One row at a time for BF16: the weights
// are then read in one sequential stream, which AMD's prefetchers follow at the full read
// bandwidth, while four rows read side by side (four 2 KiB streams, K = 1024) ran at a quarter of it
// without software prefetch and at half of it with (2-vCPU AMD EPYC, a 129280 x 1024 BF16 GEMV on
// 2 threads: 1 row 47 GB/s, plus prefetch 8 KiB ahead 53; 4 rows 11, plus prefetch 28; a plain read
// 42-55). FP8 takes two rows: its widening and a single accumulator chain per 16 columns made one
// row compute-bound (27 GB/s against 28-30 with two).
template <DType D>
constexpr int kOutputRows = D == DType::F8_E4M3 ? 2 : 1;
// With 2 to kActivationRows activation rows, one weight row's few FMA chains (2 a row per 32
// columns, each waiting on the last) bound the speed instead, and more weight rows at once win:
// bench_kernels LinearRows (2816 x 1024, 2 threads) BF16 at 4 rows 246 us with 2 weight rows, 157
// with 4; HeadRows at 4 rows 12.8 ms with 1, 10.8 with 2, 8.7 with 4; FP8 at 4 rows 103 us with 2,
// 106 with 4.
template <DType D>
constexpr int kFewRowsOutputRows = D == DType::F8_E4M3 ? 2 : 4;
// Software prefetch runs this many bytes ahead of the rows being read (at least the next block).
constexpr std::int64_t kAheadBytes = 8 << 10;
// Activation rows per pass over a step's weights: 4 x 4 accumulators leave registers for the rest.
constexpr int kActivationRows = 4;
// With more activation rows than that (a batch's decode step), widening the weights to float32
// costs about as much as the FMAs they feed, so each widened vector feeds several activation rows:
// 4 x 6 accumulators for BF16 (29 registers with the 4 weights and 1 activation vector), 2 x 8 for
// FP8, whose widening takes twice the instructions. Each output's sum keeps its order (one
// accumulator per output, columns in order), so a row's result does not depend on its neighbours,
// nor on the block shape. BF16 at 3 x 8 or 2 x 8 ran twice as slow from 12 rows on: 8 activation
// rows 4 KiB apart (K = 1024) and the weight rows 2 KiB apart share too few L1 ways.
template <DType D>
constexpr int kWideOutputRows = D == DType::F8_E4M3 ? 2 : 4;
template <DType D>
constexpr int kWideActivationRows = D == DType::F8_E4M3 ? 8 : 6;
// ...and the weight rows go in chunks of about this many bytes, each chunk against one block of
// activation rows after another: the chunk is read from memory once and then from L2, and the
// block's activations stay in L1. Going over all rows for each block instead read the activations
// from L2, three times the bytes of the weights. bench_kernels HeadRows (129280 x 1024, 16 rows, 2
// threads, best of 3): BF16 29.5 -> 23.7 ms; FP8 (with 2 x 8 rather than 4 x 6) 26.5 -> 23.3 ms.
constexpr std::int64_t kWideChunkBytes = 256 << 10;
// The first block over a chunk still waited on memory while the others were compute only (the head
// at 16 rows took the time of reading it plus that of two thirds of its FMAs). So every block also
// fetches a share of the next chunk's lines into L2, and the memory stream runs under the FMAs
// throughout. `dsv3 bench --batch 16 --profile`, bench-1b: BF16 head 23.6 -> 20.4 ms a step. FP8,
// whose widening makes it compute-bound at 16 rows, ran slower with it (HeadRows 23.3 -> 25.3 ms),
// and so did BF16 dot products (X = std::uint16_t), with half the instructions of the FMAs
// (2-vCPU AMD EPYC, HeadRows/16 exact:0, three interleaved rounds: 13.4-14.4 ms with, 10.4-11.0
// without).
template <DType D, typename X>
constexpr bool kFetchNextChunk = D == DType::BF16 && std::is_same_v<X, float>;
// A task's rows go in at least this many chunks then, so that only the first chunk's reads do not
// overlap: a 16-row linear's task (the pool's quarter of a thread's share) was often a single chunk.
// `--profile --batch 16`: o_proj 2.58 -> 2.40 ms a step, the shared experts 5.3 -> 4.95 ms.
constexpr std::int64_t kMinChunks = 4;
constexpr std::int64_t kCacheLine = 64;

#define DSV3_INLINE inline __attribute__((always_inline))

template <DType D>
constexpr std::int64_t element_bytes() {
  return D == DType::F32 ? 4 : D == DType::F8_E4M3 ? 1 : 2;
}

// Weights [col, col + 16) of a row as float32; with kFull false only the `mask` lanes are read.
// FP8 E4M3 goes through F16: sign-extending the byte and shifting left by 7 puts the sign in bit 15
// (and a copy in bit 14, masked off) and exponent + mantissa in bits 7..13, which is the F16 with
// value code * 2^-8, subnormals included; the 2^8 goes into the block scale. Converting through
// F16 rather than F32 bits keeps every intermediate a normal float (no denormal slow paths) and the
// folded scale cannot overflow.
template <DType D, bool kFull>
DSV3_INLINE __m512 load_weights(const std::byte* row, std::int64_t col, __mmask16 mask) {
  if constexpr (D == DType::F32) {
    const auto* p = reinterpret_cast<const float*>(row) + col;
    return kFull ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p);
  } else if constexpr (D == DType::BF16 || D == DType::F16) {
    const auto* p = row + col * 2;
    const __m256i bits = kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (D == DType::F16) return _mm512_cvtph_ps(bits);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  } else {
    const auto* p = row + col;
    const __m128i codes = kFull ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(mask, p);
    const __m256i half = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(codes), 7),
                                          _mm256_set1_epi16(static_cast<short>(0xbf80)));
    return _mm512_cvtph_ps(half);
  }
}

// What the FP8 path multiplies a block's F16-converted codes by.
constexpr float kFp8ScaleFold = 256.0f;

template <DType D, int R, int M, bool kFull>
DSV3_INLINE void accumulate(const std::byte* const* rows, const float* x, std::int64_t cols, std::int64_t col,
                            __mmask16 mask, __m512 (&acc)[R][M]) {
  // R widened weights, then one activation vector at a time: R + 1 + R x M registers.
  __m512 w[R];
  for (int r = 0; r < R; ++r) w[r] = load_weights<D, kFull>(rows[r], col, mask);
  for (int m = 0; m < M; ++m) {
    const __m512 xv = kFull ? _mm512_loadu_ps(x + m * cols + col) : _mm512_maskz_loadu_ps(mask, x + m * cols + col);
    for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], xv, acc[r][m]);
  }
}

// BF16 columns [col, col + 32) of R weight rows against M activation rows stored paired there
// (bf16_pairs_avx512.h): each weight vector widens in one instruction. Lane j adds column
// col + 2j, then col + 2j + 1.
template <int R, int M>
DSV3_INLINE void accumulate_bf16_pairs(const std::byte* const* rows, const float* x, std::int64_t cols, std::int64_t col,
                                       __m512 (&acc)[R][M]) {
  __m512 w[R];
  for (int r = 0; r < R; ++r) w[r] = avx512::bf16_even(_mm512_loadu_si512(rows[r] + col * 2));
  for (int m = 0; m < M; ++m) {
    const __m512 xv = _mm512_loadu_ps(x + m * cols + col);
    for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], xv, acc[r][m]);
  }
  for (int r = 0; r < R; ++r) w[r] = avx512::bf16_odd(_mm512_loadu_si512(rows[r] + col * 2));
  for (int m = 0; m < M; ++m) {
    const __m512 xv = _mm512_loadu_ps(x + m * cols + col + kLanes);
    for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], xv, acc[r][m]);
  }
}

// BF16 columns [col, col + 32) of R weight rows against M activation rows rounded to BF16
// (gemv_bf16_dot), both in their natural order: vdpbf16ps adds each lane's pair of products, columns
// col + 2j + 1 then col + 2j (Intel's order; the products are exact in float32), to lane j. With
// kFull false only the `mask` columns are read, the others are 0.
template <int R, int M, bool kFull>
DSV3_INLINE void accumulate_bf16_dot(const std::byte* const* rows, const std::uint16_t* x, std::int64_t cols,
                                     std::int64_t col, __mmask32 mask, __m512 (&acc)[R][M]) {
  __m512bh w[R];
  for (int r = 0; r < R; ++r) {
    const std::byte* p = rows[r] + col * 2;
    w[r] = (__m512bh)(kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(mask, p));
    // Held in a register from here: for 3 activation rows GCC 12 otherwise loads each weight
    // vector again for every row (12 loads a step for 4), which halved the speed of a 3-row expert
    // (bench_kernels ExpertRows/rows:3, one core: 40-52 us against 22-30 with, rows 2 and 4 26-33).
    __asm__("" : "+v"(w[r]));
  }
  for (int m = 0; m < M; ++m) {
    const std::uint16_t* p = x + m * cols + col;
    const auto xv = (__m512bh)(kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(mask, p));
    for (int r = 0; r < R; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], w[r], xv);
  }
}

// y[m * N + n0 + r] for r < R, m < M: R weight rows against M activation rows (FP8: unscaled
// codes against activations that carry the block scales; BF16: activations paired, see
// gemv_typed, or with X = std::uint16_t rounded to BF16, see gemv_bf16_dot).
template <DType D, int R, int M, typename X = float>
void block(const X* x, const Matrix& w, std::int64_t n0, float* y, const std::byte* far = nullptr,
           std::int64_t far_lines = 0) {
  constexpr bool kDot = std::is_same_v<X, std::uint16_t>;
  static_assert(!kDot || D == DType::BF16, "BF16 dot products take BF16 weights");
  constexpr std::int64_t kBytes = element_bytes<D>();
  const std::int64_t cols = w.cols;
  const std::byte* rows[R];
  // The rows about kAheadBytes on (at least the next R) are fetched while these are used, which
  // keeps short rows (K = 1024 is 2 KiB of BF16) from waiting at each start for the prefetcher.
  const std::byte* next[R];
  const std::int64_t row_bytes = cols * kBytes;
  const std::int64_t ahead = std::max<std::int64_t>(R * row_bytes, kAheadBytes);
  const std::byte* end = w.data + w.rows * row_bytes;
  for (int r = 0; r < R; ++r) {
    rows[r] = w.data + (n0 + r) * row_bytes;
    next[r] = rows[r] + ahead + row_bytes <= end ? rows[r] + ahead : rows[r];
  }
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  std::int64_t c = 0;
  if constexpr (D == DType::BF16) {
    for (; c + 2 * kLanes <= cols; c += 2 * kLanes) {
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next[r] + c * kBytes), _MM_HINT_T0);
      if (far_lines > 0) {  // two lines a step cover a block's share from 2 passes on (R = 4)
        _mm_prefetch(reinterpret_cast<const char*>(far), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(far + kCacheLine), _MM_HINT_T1);
        far += 2 * kCacheLine;
        far_lines -= 2;
      }
      if constexpr (kDot) {
        accumulate_bf16_dot<R, M, true>(rows, x, cols, c, 0xffffffffu, acc);
      } else {
        accumulate_bf16_pairs<R, M>(rows, x, cols, c, acc);
      }
    }
    if constexpr (kDot) {  // the last cols % 32 columns masked; nothing is left for the loop below
      if (c < cols) accumulate_bf16_dot<R, M, false>(rows, x, cols, c, static_cast<__mmask32>((1ull << (cols - c)) - 1), acc);
    }
  }
  if constexpr (!kDot) {
    for (; c + kLanes <= cols; c += kLanes) {
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next[r] + c * kBytes), _MM_HINT_T0);
      if (far_lines > 0) {
        _mm_prefetch(reinterpret_cast<const char*>(far), _MM_HINT_T1);
        far += kCacheLine;
        --far_lines;
      }
      accumulate<D, R, M, true>(rows, x, cols, c, 0xffff, acc);
    }
    if (c < cols) {
      const auto mask = static_cast<__mmask16>((1u << (cols - c)) - 1);
      accumulate<D, R, M, false>(rows, x, cols, c, mask, acc);
    }
  }
  if constexpr (R * M < 8) {
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) y[m * w.rows + n0 + r] = avx512::reduce_add(acc[r][m]);
  } else {
    // 16 accumulators' sums at a time: the horizontal sums cost ~1/8 of the FMAs otherwise.
    for (int g = 0; g < R * M; g += 16) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = g + i < R * M ? acc[(g + i) / M][(g + i) % M] : _mm512_setzero_ps();
      alignas(64) float sums[16];
      _mm512_store_ps(sums, avx512::reduce_add_16(v));
      for (int i = 0; i < 16 && g + i < R * M; ++i)
        y[((g + i) % M) * w.rows + n0 + (g + i) / M] = sums[avx512::reduce_add_16_lane(i)];
    }
  }
}

// `count` (1..M) activation rows against R weight rows.
template <DType D, int R, int M, typename X>
void block_rows(std::int64_t count, const X* x, const Matrix& w, std::int64_t n0, float* y,
                const std::byte* far = nullptr, std::int64_t far_lines = 0) {
  if constexpr (M == 1) {
    block<D, R, 1>(x, w, n0, y, far, far_lines);
  } else {
    if (count == M) return block<D, R, M>(x, w, n0, y, far, far_lines);
    block_rows<D, R, M - 1>(count, x, w, n0, y, far, far_lines);
  }
}

template <DType D, int R, int M, typename X>
void all_activation_rows(const X* x, std::int64_t rows, const Matrix& w, std::int64_t n0, float* y) {
  for (std::int64_t m0 = 0; m0 < rows; m0 += M)
    block_rows<D, R, M>(std::min<std::int64_t>(M, rows - m0), x + m0 * w.cols, w, n0, y + m0 * w.rows);
}

template <DType D, int R, int M, typename X>
void rows_range_blocked(const X* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                        float* y) {
  std::int64_t n = n_begin;
  for (; n + R <= n_end; n += R) all_activation_rows<D, R, M>(x, rows, w, n, y);
  for (; n < n_end; ++n) all_activation_rows<D, 1, M>(x, rows, w, n, y);
}

template <DType D, typename X>
void rows_range_wide(const X* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                     float* y) {
  constexpr int R = kWideOutputRows<D>, M = kWideActivationRows<D>;
  const std::int64_t row_bytes = w.cols * element_bytes<D>();
  const std::int64_t parts = kFetchNextChunk<D, X> ? kMinChunks : 1;
  const std::int64_t chunk_rows = std::min(kWideChunkBytes / row_bytes, (n_end - n_begin + parts - 1) / parts);
  const std::int64_t chunk = std::max<std::int64_t>(R, chunk_rows / R * R);
  const std::int64_t passes = (rows + M - 1) / M;
  for (std::int64_t c0 = n_begin; c0 < n_end; c0 += chunk) {
    const std::int64_t c1 = std::min(n_end, c0 + chunk);
    // The next chunk goes into L2 while this one is used, a share of its lines with every block.
    const std::int64_t next_lines =
        kFetchNextChunk<D, X> ? (std::min(n_end, c1 + chunk) - c1) * row_bytes / kCacheLine : 0;
    const std::int64_t blocks = passes * ((c1 - c0 + R - 1) / R);
    const std::int64_t per_block = (next_lines + blocks - 1) / blocks;
    const std::byte* far = w.data + c1 * row_bytes;
    std::int64_t far_left = next_lines;
    for (std::int64_t m0 = 0; m0 < rows; m0 += M) {
      const std::int64_t count = std::min<std::int64_t>(M, rows - m0);
      const X* xm = x + m0 * w.cols;
      float* ym = y + m0 * w.rows;
      std::int64_t n = c0;
      for (; n + R <= c1; n += R) {
        const std::int64_t lines = std::min(per_block, far_left);
        block_rows<D, R, M>(count, xm, w, n, ym, far, lines);
        far += lines * kCacheLine;
        far_left -= lines;
      }
      for (; n < c1; ++n) block_rows<D, 1, M>(count, xm, w, n, ym);
    }
  }
}

template <DType D, typename X = float>
void rows_range(const X* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end, float* y) {
  if (rows > kActivationRows) return rows_range_wide<D>(x, rows, w, n_begin, n_end, y);
  if (rows == 1) return rows_range_blocked<D, kOutputRows<D>, 1>(x, rows, w, n_begin, n_end, y);
  rows_range_blocked<D, kFewRowsOutputRows<D>, kActivationRows>(x, rows, w, n_begin, n_end, y);
}

// BF16: the activations paired (bf16_pairs_avx512.h). FP8: every weight row of one band of
// block_rows shares its scale per column block, so the scales (and the F16 conversion's 2^8) are
// folded into a scaled copy of the activations once per band, and the inner loop is conversion +
// FMA only.
template <DType D>
void gemv_typed(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                float* y) {
  if constexpr (D == DType::BF16) {
    // The activations paired, as many rows at a time as the stack holds (all of a decode step's).
    const std::int64_t cols = w.cols;
    alignas(64) float stack[kStackScratchFloats];
    float* paired = nullptr;
    const std::int64_t group =
        activation_group(stack, rows, cols, rows > kActivationRows ? kWideActivationRows<D> : kActivationRows, paired);
    for (std::int64_t m0 = 0; m0 < rows; m0 += group) {
      const std::int64_t count = std::min(group, rows - m0);
      for (std::int64_t m = 0; m < count; ++m) avx512::pair_columns(x + (m0 + m) * cols, cols, paired + m * cols);
      rows_range<D>(paired, count, w, n_begin, n_end, y + m0 * w.rows);
    }
  } else if constexpr (D != DType::F8_E4M3) {
    rows_range<D>(x, rows, w, n_begin, n_end, y);
  } else {
    const std::int64_t cols = w.cols;
    alignas(64) float stack[kStackScratchFloats];  // the scaled activations of `group` rows at a time
    float* scaled = nullptr;
    const std::int64_t group =
        activation_group(stack, rows, cols, rows > kActivationRows ? kWideActivationRows<D> : kActivationRows, scaled);
    for (std::int64_t n = n_begin; n < n_end;) {
      const std::int64_t band = n / w.block_rows;
      const std::int64_t band_end = std::min(n_end, (band + 1) * w.block_rows);
      const float* scale_row = w.scales->data() + band * w.scale_cols();
      for (std::int64_t m0 = 0; m0 < rows; m0 += group) {
        const std::int64_t count = std::min(group, rows - m0);
        for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += w.block_cols, ++b) {
          const std::int64_t c1 = std::min(cols, c0 + w.block_cols);
          const __m512 scale = _mm512_set1_ps(scale_row[b] * kFp8ScaleFold);
          for (std::int64_t m = 0; m < count; ++m) {
            const float* in = x + (m0 + m) * cols;
            float* out = scaled + m * cols;
            std::int64_t c = c0;
            for (; c + kLanes <= c1; c += kLanes) _mm512_storeu_ps(out + c, _mm512_mul_ps(_mm512_loadu_ps(in + c), scale));
            if (c < c1) {
              const auto mask = static_cast<__mmask16>((1u << (c1 - c)) - 1);
              _mm512_mask_storeu_ps(out + c, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, in + c), scale));
            }
          }
        }
        rows_range<D>(scaled, count, w, n, band_end, y + m0 * w.rows);
      }
      n = band_end;
    }
  }
}

template <DType D>
void dequantize_typed(const Matrix& w, std::int64_t begin, std::int64_t end, float* out) {
  const std::int64_t cols = w.cols;
  constexpr bool kScaled = D == DType::F8_E4M3;
  const std::int64_t block_cols = kScaled ? w.block_cols : cols;
  for (std::int64_t r = begin; r < end; ++r) {
    const std::byte* row = w.data + r * cols * element_bytes<D>();
    float* out_row = out + (r - begin) * cols;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += block_cols, ++b) {
      const std::int64_t c1 = std::min(cols, c0 + block_cols);
      __m512 scale = _mm512_set1_ps(1.0f);
      if constexpr (kScaled)
        scale = _mm512_set1_ps((*w.scales)[(r / w.block_rows) * w.scale_cols() + b] * kFp8ScaleFold);
      std::int64_t c = c0;
      for (; c + kLanes <= c1; c += kLanes) {
        __m512 v = load_weights<D, true>(row, c, 0xffff);
        if constexpr (kScaled) v = _mm512_mul_ps(v, scale);
        _mm512_storeu_ps(out_row + c, v);
      }
      if (c < c1) {
        const auto mask = static_cast<__mmask16>((1u << (c1 - c)) - 1);
        __m512 v = load_weights<D, false>(row, c, mask);
        if constexpr (kScaled) v = _mm512_mul_ps(v, scale);
        _mm512_mask_storeu_ps(out_row + c, mask, v);
      }
    }
  }
}

// kCombineVectors x 16 columns of kCombineRows activation rows at a time in registers: each weight
// vector is widened once for all of them, and the weight rows (MLA's W_UK of one head, 64 x 512 at
// most for DeepSeek-V3) stay in L1 for the next columns and rows. Every output's sum runs over i in
// order, whichever rows and columns share a block.
constexpr std::int64_t kCombineVectors = 4;
static_assert(kCombineFp8BlockMultiple % kLanes == 0, "an FP8 block scale per vector");
constexpr int kCombineRows = 6;

// kFull: all kCombineVectors vectors lie inside the row (no masks). Every small loop over the
// block's registers is unrolled by pragma and the masks are not tested in the loop: otherwise GCC 12
// kept the accumulators on the stack and stored them all each step (batch 16, bench-1b:
// mla_absorb_query 1.54 ms a step, a fifth of the FMA rate).
template <DType D, int M, bool kFull>
void combine_block(const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                   std::int64_t coeff_stride, std::int64_t c0, float* out, std::int64_t out_stride) {
  const std::int64_t cols = w.cols;
  constexpr bool kScaled = D == DType::F8_E4M3;
  constexpr int V = kCombineVectors;
  __mmask16 mask[V];
  #pragma GCC unroll 16
  for (int k = 0; k < V; ++k) {
    const std::int64_t left = cols - c0 - k * kLanes;
    mask[k] = kFull || left >= kLanes ? static_cast<__mmask16>(0xffff)
                                      : left > 0 ? static_cast<__mmask16>((1u << left) - 1) : 0;
  }
  __m512 acc[M][V];
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k) acc[m][k] = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int64_t r = first + i;
    const std::byte* row = w.data + r * cols * element_bytes<D>();
    __m512 v[V];
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k)  // masked lanes (and vectors past the row's end) read as 0
      v[k] = kFull ? load_weights<D, true>(row, c0 + k * kLanes, 0xffff)
                   : load_weights<D, false>(row, c0 + k * kLanes, mask[k]);
    #pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const float coeff = coeffs[m * coeff_stride + i];
      #pragma GCC unroll 16
      for (int k = 0; k < V; ++k) {
        float factor = coeff;
        if constexpr (kScaled) {  // a vector past the row's end (v[k] = 0) takes the last block's scale
          const std::int64_t col = std::min(c0 + k * kLanes, cols - 1);
          factor *= (*w.scales)[(r / w.block_rows) * w.scale_cols() + col / w.block_cols] * kFp8ScaleFold;
        }
        acc[m][k] = _mm512_fmadd_ps(_mm512_set1_ps(factor), v[k], acc[m][k]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k)
      if (mask[k] != 0) _mm512_mask_storeu_ps(out + m * out_stride + c0 + k * kLanes, mask[k], acc[m][k]);
}

template <DType D, int M>
void combine_rows_tail(std::int64_t rows, const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                       std::int64_t coeff_stride, std::int64_t c0, float* out, std::int64_t out_stride) {
  if constexpr (M > 1) {
    if (rows < M) return combine_rows_tail<D, M - 1>(rows, w, first, count, coeffs, coeff_stride, c0, out, out_stride);
  }
  if (c0 + kCombineVectors * kLanes <= w.cols) {
    combine_block<D, M, true>(w, first, count, coeffs, coeff_stride, c0, out, out_stride);
  } else {
    combine_block<D, M, false>(w, first, count, coeffs, coeff_stride, c0, out, out_stride);
  }
}

template <DType D>
void combine_rows_typed(const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                        std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride) {
  for (std::int64_t c0 = 0; c0 < w.cols; c0 += kCombineVectors * kLanes)
    for (std::int64_t m0 = 0; m0 < rows; m0 += kCombineRows)
      combine_rows_tail<D, kCombineRows>(std::min<std::int64_t>(kCombineRows, rows - m0), w, first, count,
                                         coeffs + m0 * coeff_stride, coeff_stride, c0, out + m0 * out_stride,
                                         out_stride);
}

void combine_rows(const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                  std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride) {
  for_weight_dtype(w, [&](auto dtype) {
    combine_rows_typed<decltype(dtype)::value>(w, first, count, coeffs, coeff_stride, rows, out, out_stride);
  });
}

void gemv(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end, float* y) {
  for_weight_dtype(w, [&](auto dtype) { gemv_typed<decltype(dtype)::value>(x, rows, w, n_begin, n_end, y); });
}

void dequantize(const Matrix& w, std::int64_t begin, std::int64_t end, float* out) {
  for_weight_dtype(w, [&](auto dtype) { dequantize_typed<decltype(dtype)::value>(w, begin, end, out); });
}

float exp_and_sum(float* values, std::int64_t count, float shift) {
  const __m512 offset = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    const __m512 e = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(values + i), offset));
    _mm512_storeu_ps(values + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (i < count) {
    const auto mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512 e = avx512::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, values + i), offset));
    _mm512_mask_storeu_ps(values + i, mask, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
  }
  return _mm512_reduce_add_ps(sum);
}

void pair_rows(const float* x, std::int64_t rows, std::int64_t cols, float* out) {
  for (std::int64_t m = 0; m < rows; ++m) avx512::pair_columns(x + m * cols, cols, out + m * cols);
}

void gemv_paired_bf16(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                      float* y) {
  if (w.dtype != DType::BF16) fail("{}: paired activations for a {} weight", w.name, dtype_name(w.dtype));
  rows_range<DType::BF16>(x, rows, w, n_begin, n_end, y);
}

// The same row and column blocks as the FP32 path (one weight row at a time for one activation
// row, 4 x 4 or 4 x 6 for more), each output one accumulator over its columns in order, so a row's
// result is bitwise the same alone or in a batch here too.
void gemv_bf16_dot(const std::uint16_t* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin,
                   std::int64_t n_end, float* y) {
  if (w.dtype != DType::BF16) fail("{}: BF16 dot products with a {} weight", w.name, dtype_name(w.dtype));
  rows_range<DType::BF16>(x, rows, w, n_begin, n_end, y);
}

#undef DSV3_INLINE

}  // namespace

const WeightKernels* avx512_weight_kernels() {
  static const WeightKernels kernels{gemv,          dequantize,       exp_and_sum,   combine_rows,   pair_rows,
                                     gemv_paired_bf16, gemv_bf16_dot, gemv_pair_tiles_avx512,
                                     pair_tile_products_avx512, pair_tile_activations_avx512};
  return &kernels;
}

}  // namespace dsv3::kernels

#include "kernels/cpu/avx512_target_end.h"

#else

namespace dsv3::kernels {
const WeightKernels* avx512_weight_kernels() { return nullptr; }
}  // namespace dsv3::kernels

#endif
