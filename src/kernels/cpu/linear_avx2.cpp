// The weight kernels for AVX2 + FMA + F16C: 8 floats per register. AVX2 has no byte or 16-bit
// masked loads, so the ragged end of a row is copied into a zero-padded buffer first.
// Compiled for that target here only; linear.cpp calls them after checking the CPU.
#include "kernels/cpu/internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

#include "kernels/cpu/avx2_target_begin.h"

#include "kernels/cpu/bf16_pairs_avx2.h"
#include "kernels/cpu/fp8_quads_avx2.h"

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 8;
constexpr int kOutputRows = 4;
// 4 x 2 accumulators, 4 scales and the loaded vectors fit the 16 ymm registers.
constexpr int kActivationRows = 2;
constexpr float kFp8ScaleFold = 256.0f;  // see load_weights
constexpr std::int64_t kCacheLine = 64;

#define DSV3_INLINE inline __attribute__((always_inline))

template <DType D>
constexpr std::int64_t element_bytes() {
  return D == DType::F32 ? 4 : D == DType::F8_E4M3 ? 1 : 2;
}

// Weights p[0, 8) as float32. FP8 E4M3 goes through F16 exactly as in linear_avx512.cpp: the
// sign-extended byte shifted left by 7, bit 14 cleared, is the F16 of value code * 2^-8.
template <DType D>
DSV3_INLINE __m256 load_weights(const std::byte* p) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (D == DType::BF16 || D == DType::F16) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (D == DType::F16) return _mm256_cvtph_ps(bits);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  } else {
    const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i half = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(codes), 7),
                                       _mm_set1_epi16(static_cast<short>(0xbf80)));
    return _mm256_cvtph_ps(half);
  }
}

DSV3_INLINE float reduce_add(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// BF16 weights widen in pairs (bf16_pairs_avx2.h) against paired activations.
constexpr std::int64_t kPairColumns = avx2::kPairColumns;
DSV3_INLINE __m256 bf16_even(const std::byte* p) { return avx2::bf16_even(avx2::load_pairs(p)); }
DSV3_INLINE __m256 bf16_odd(const std::byte* p) { return avx2::bf16_odd(avx2::load_pairs(p)); }

// One step of 8 columns: `rows[r]` and `x + m * x_stride` point at the step's first column.
template <DType D, int R, int M>
DSV3_INLINE void accumulate(const std::byte* const* rows, const float* x, std::int64_t x_stride, __m256 (&acc)[R][M]) {
  __m256 xv[M];
  for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(x + m * x_stride);
  for (int r = 0; r < R; ++r) {
    const __m256 w = load_weights<D>(rows[r]);
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(w, xv[m], acc[r][m]);
  }
}

// R weight rows against M activation rows (F32 and F16 weights; BF16 and FP8 go grouped, below).
template <DType D, int R, int M>
void block(const float* x, const Matrix& w, std::int64_t n0, float* y) {
  constexpr std::int64_t kBytes = element_bytes<D>();
  const std::int64_t cols = w.cols;
  const std::byte* rows[R];
  const std::byte* next[R];  // the following R rows, prefetched as in linear_avx512.cpp
  for (int r = 0; r < R; ++r) {
    rows[r] = w.data + (n0 + r) * cols * kBytes;
    next[r] = n0 + R + r < w.rows ? rows[r] + R * cols * kBytes : rows[r];
  }
  __m256 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  std::int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    const std::byte* at[R];
    for (int r = 0; r < R; ++r) {
      at[r] = rows[r] + c * kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(next[r] + c * kBytes), _MM_HINT_T0);
    }
    accumulate<D, R, M>(at, x + c, cols, acc);
  }
  if (c < cols) {
    const std::int64_t count = cols - c;
    alignas(32) std::byte padded_w[R][kLanes * kBytes] = {};
    alignas(32) float padded_x[M][kLanes] = {};
    const std::byte* at[R];
    for (int r = 0; r < R; ++r) {
      std::memcpy(padded_w[r], rows[r] + c * kBytes, static_cast<std::size_t>(count * kBytes));
      at[r] = padded_w[r];
    }
    for (int m = 0; m < M; ++m)
      std::memcpy(padded_x[m], x + m * cols + c, static_cast<std::size_t>(count) * sizeof(float));
    accumulate<D, R, M>(at, padded_x[0], kLanes, acc);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) y[m * w.rows + n0 + r] = reduce_add(acc[r][m]);
}

template <DType D, int R>
void all_activation_rows(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n0, float* y) {
  for (std::int64_t m0 = 0; m0 < rows; m0 += kActivationRows) {
    const float* xm = x + m0 * w.cols;
    float* ym = y + m0 * w.rows;
    if (rows - m0 >= 2)
      block<D, R, 2>(xm, w, n0, ym);
    else
      block<D, R, 1>(xm, w, n0, ym);
  }
}

template <DType D>
void rows_range(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end, float* y) {
  std::int64_t n = n_begin;
  for (; n + kOutputRows <= n_end; n += kOutputRows) all_activation_rows<D, kOutputRows>(x, rows, w, n, y);
  for (; n < n_end; ++n) all_activation_rows<D, 1>(x, rows, w, n, y);
}

// BF16 weights two rows at a time. One or two activation rows are bound by the weights' read speed,
// which two rows side by side (and the next two fetched into L1 meanwhile) reach best: bench_kernels
// ExpertRows (one core, 1 row, minima of 5) 384 x 1024 47-57 us with 2 rows, 64 with 1, 59-63 with 4,
// 77 with 3; 1024 x 384 57 us with 2 against 59-80. More go up to 6 at a time (12 accumulators, 2
// widened weights, an activation vector and the odd columns' mask: the 16 registers), in passes of
// near equal size (16 rows: 6, 5, 5); 2 x 4 and 2 x 5 ran the same, and 3 x 4 does not fit the
// registers. Against the FP32 path's 4 x 2 blocks (two instructions to widen 8 weights, for every
// 2 activation rows), `bench_kernels --benchmark_filter=HeadRows/rows:16/N:129280/K:1024/fp8:0/exact:1`,
// 2-vCPU AMD EPYC (Zen 3), minima of 3: 49.3 -> 33.4-35.3 ms.
// FP8 weights (in quads, fp8_quads_avx2.h) go the same way but 4 rows at a time for 1-2 activation
// rows: their widening, not memory, bounds a core, and 4 weight rows give the 4 independent sums
// that keep both FMA units busy.
constexpr int kFewActivationRows = 2;
constexpr int kManyRows = 2;  // weight rows per block for more activation rows
constexpr int kManyActivationRows = 6;

// BF16 columns [c, c + 16) of R weight rows against M paired activation rows (`x + m * x_stride`
// at column c): lane j adds column c + 2j, then c + 2j + 1.
template <int R, int M>
DSV3_INLINE void accumulate_pairs(const std::byte* const* rows, std::int64_t offset, const float* x,
                                  std::int64_t x_stride, __m256 (&acc)[R][M]) {
  __m256 w[R];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) w[r] = bf16_even(rows[r] + offset);
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    __m256 xv = _mm256_loadu_ps(x + m * x_stride);
    // Held in a register: GCC 12 otherwise folds the load into each weight row's FMA, R loads of
    // it, and the loads then bound the speed of the many-row blocks.
    __asm__("" : "+x"(xv));
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][m] = _mm256_fmadd_ps(w[r], xv, acc[r][m]);
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) w[r] = bf16_odd(rows[r] + offset);
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    __m256 xv = _mm256_loadu_ps(x + m * x_stride + kLanes);
    __asm__("" : "+x"(xv));
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][m] = _mm256_fmadd_ps(w[r], xv, acc[r][m]);
  }
}

// FP8 quad K of 32 columns of R weight rows against M activation rows in quad order.
template <int K, int R, int M>
DSV3_INLINE void accumulate_quad(const std::byte* const* rows, std::int64_t offset, const float* x,
                                 std::int64_t x_stride, __m256 (&acc)[R][M]) {
  __m256 w[R];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) w[r] = avx2::fp8_quad<K>(rows[r] + offset);
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    __m256 xv = _mm256_loadu_ps(x + m * x_stride + K * kLanes);
    __asm__("" : "+x"(xv));  // as in accumulate_pairs
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][m] = _mm256_fmadd_ps(w[r], xv, acc[r][m]);
  }
}

// The two weight formats the grouped blocks below read: how many columns a step takes, and how a
// step, and the last columns, add into the accumulators.
struct Bf16Pairs {
  static constexpr std::int64_t kBytes = 2, kStep = kPairColumns;
  static constexpr int kFewRows = 2;
  template <int R, int M>
  static DSV3_INLINE void step(const std::byte* const* rows, std::int64_t offset, const float* x,
                               std::int64_t x_stride, __m256 (&acc)[R][M]) {
    accumulate_pairs<R, M>(rows, offset, x, x_stride, acc);
  }
  // The last `count` (< 16) columns from c, in order, zero-padded to 16; x holds them in order.
  template <int R, int M>
  static void tail(const std::byte* const* rows, std::int64_t c, std::int64_t count, const float* x,
                   std::int64_t x_stride, __m256 (&acc)[R][M]) {
    alignas(32) std::byte padded_w[R][kStep * kBytes] = {};
    alignas(32) float padded_x[M][kStep] = {};
    const std::byte* at[R];
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      std::memcpy(padded_w[r], rows[r] + c * kBytes, static_cast<std::size_t>(count * kBytes));
      at[r] = padded_w[r];
    }
    #pragma GCC unroll 16
    for (int m = 0; m < M; ++m)
      std::memcpy(padded_x[m], x + m * x_stride + c, static_cast<std::size_t>(count) * sizeof(float));
    accumulate<DType::BF16, R, M>(at, padded_x[0], kStep, acc);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) at[r] += kLanes * kBytes;
    accumulate<DType::BF16, R, M>(at, padded_x[0] + kLanes, kStep, acc);
  }
  static float finish(float sum) { return sum; }
};

struct Fp8Quads {
  static constexpr std::int64_t kBytes = 1, kStep = avx2::kQuadColumns;
  static constexpr int kFewRows = 4;
  template <int R, int M>
  static DSV3_INLINE void step(const std::byte* const* rows, std::int64_t offset, const float* x,
                               std::int64_t x_stride, __m256 (&acc)[R][M]) {
    accumulate_quad<0, R, M>(rows, offset, x, x_stride, acc);
    accumulate_quad<1, R, M>(rows, offset, x, x_stride, acc);
    accumulate_quad<2, R, M>(rows, offset, x, x_stride, acc);
    accumulate_quad<3, R, M>(rows, offset, x, x_stride, acc);
  }
  // The last `count` (< 32) codes from c, zero-padded to 32; x holds them so padded already.
  template <int R, int M>
  static void tail(const std::byte* const* rows, std::int64_t c, std::int64_t count, const float* x,
                   std::int64_t x_stride, __m256 (&acc)[R][M]) {
    alignas(32) std::byte padded_w[R][kStep] = {};
    const std::byte* at[R];
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      std::memcpy(padded_w[r], rows[r] + c, static_cast<std::size_t>(count));
      at[r] = padded_w[r];
    }
    step<R, M>(at, 0, x + c, x_stride, acc);
  }
  static float finish(float sum) { return sum * avx2::kQuadSumScale; }
};

// R weight rows in format F against M activation rows in its order (`x_stride` floats apart). Each
// output is one accumulator over its columns in one order whatever R and M (each whole step's
// columns in the format's order, then the last columns as F::tail takes them), so a row's result
// is bitwise the same alone or in a batch.
template <class F, int R, int M>
void block_grouped(const float* x, std::int64_t x_stride, const Matrix& w, std::int64_t n0, float* y,
                   const std::byte* far, std::int64_t far_lines) {
  const std::int64_t cols = w.cols, row_bytes = cols * F::kBytes;
  const std::byte* rows[R];
  const std::byte* next[R];  // the following R rows, prefetched as in block for the few-row blocks
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    rows[r] = w.data + (n0 + r) * row_bytes;
    next[r] = n0 + R + r < w.rows ? rows[r] + R * row_bytes : rows[r];
  }
  __m256 acc[R][M];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  std::int64_t c = 0;
  for (; c + F::kStep <= cols; c += F::kStep) {
    if constexpr (M <= kFewActivationRows)
      #pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(next[r] + c * F::kBytes), _MM_HINT_T0);
    if (far_lines > 0) {  // a line of the next chunk into L2
      _mm_prefetch(reinterpret_cast<const char*>(far), _MM_HINT_T1);
      far += kCacheLine;
      --far_lines;
    }
    F::template step<R, M>(rows, c * F::kBytes, x + c, x_stride, acc);
  }
  if (c < cols) F::template tail<R, M>(rows, c, cols - c, x, x_stride, acc);
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int m = 0; m < M; ++m) y[m * w.rows + n0 + r] = F::finish(reduce_add(acc[r][m]));
}

// `count` (1..M) activation rows against R weight rows.
template <class F, int R, int M>
void block_grouped_rows(std::int64_t count, const float* x, std::int64_t x_stride, const Matrix& w, std::int64_t n0,
                        float* y, const std::byte* far = nullptr, std::int64_t far_lines = 0) {
  if constexpr (M > 1) {
    if (count < M) return block_grouped_rows<F, R, M - 1>(count, x, x_stride, w, n0, y, far, far_lines);
  }
  block_grouped<F, R, M>(x, x_stride, w, n0, y, far, far_lines);
}

// With more activation rows than one block takes, the weight rows go in chunks of about this many
// bytes, each chunk against one block of activation rows after another: the chunk is read from
// memory once and then from L2, while the block's activations (24 KiB at K = 1024) stay in L1; and
// every block fetches a share of the next chunk's lines into L2, so that its first pass does not
// wait on memory (at 16 rows, the weights 6 MB: 39 -> 58 GFLOP/s a core).
constexpr std::int64_t kPairChunkBytes = 128 << 10;
// With one pass (up to 6 rows: a batch's routed expert) nothing is read twice, and smaller chunks
// keep the fetches of the next one close ahead: bench_kernels ExpertRows (one core, minima of 3 in
// two alternations), 384 x 1024 at 4 rows 61-62 us against 68-80 with 128 KiB, at 6 rows 88-92
// against 104-110; 1024 x 384 at 4 rows 60-75 against 72-87.
constexpr std::int64_t kPairOnePassChunkBytes = 16 << 10;

// y for output rows [n_begin, n_end) of a weight in format F from `rows` activation rows in its
// order (`x_stride` floats apart); the next chunk's lines are fetched up to row far_end (>= n_end).
template <class F>
void gemv_grouped(const float* x, std::int64_t x_stride, std::int64_t rows, const Matrix& w, std::int64_t n_begin,
                  std::int64_t n_end, std::int64_t far_end, float* y) {
  const std::int64_t row_bytes = w.cols * F::kBytes;
  if (rows <= kFewActivationRows) {
    std::int64_t n = n_begin;
    for (; n + F::kFewRows <= n_end; n += F::kFewRows)
      block_grouped_rows<F, F::kFewRows, kFewActivationRows>(rows, x, x_stride, w, n, y);
    for (; n < n_end; ++n) block_grouped_rows<F, 1, kFewActivationRows>(rows, x, x_stride, w, n, y);
    return;
  }
  constexpr int R = kManyRows, M = kManyActivationRows;
  const std::int64_t passes = (rows + M - 1) / M;
  const std::int64_t chunk =
      std::max<std::int64_t>(R, (passes > 1 ? kPairChunkBytes : kPairOnePassChunkBytes) / row_bytes / R * R);
  for (std::int64_t c0 = n_begin; c0 < n_end; c0 += chunk) {
    const std::int64_t c1 = std::min(n_end, c0 + chunk);
    const std::int64_t next_lines = (std::min(far_end, c1 + chunk) - c1) * row_bytes / kCacheLine;
    const std::int64_t blocks = passes * ((c1 - c0 + R - 1) / R);
    const std::int64_t per_block = (next_lines + blocks - 1) / blocks;
    const std::byte* far = w.data + c1 * row_bytes;
    std::int64_t far_left = next_lines;
    for (std::int64_t pass = 0, m0 = 0; pass < passes; ++pass) {
      const std::int64_t count = (rows - m0) / (passes - pass);  // near equal passes
      const float* xm = x + m0 * x_stride;
      float* ym = y + m0 * w.rows;
      std::int64_t n = c0;
      for (; n + R <= c1; n += R) {
        const std::int64_t lines = std::min(per_block, far_left);
        block_grouped_rows<F, R, M>(count, xm, x_stride, w, n, ym, far, lines);
        far += lines * kCacheLine;
        far_left -= lines;
      }
      for (; n < c1; ++n) block_grouped_rows<F, 1, M>(count, xm, x_stride, w, n, ym);
      m0 += count;
    }
  }
}

// y for output rows [n_begin, n_end) of a BF16 weight from `rows` paired activation rows.
void gemv_pairs(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end, float* y) {
  gemv_grouped<Bf16Pairs>(x, w.cols, rows, w, n_begin, n_end, n_end, y);
}

// FP8: `rows` activation rows scaled by band `band`'s block scales (times the quads' share of
// 2^120) into `out`, each row in quad order and zero-padded to `stride` columns.
void scale_quads(const float* x, std::int64_t rows, const Matrix& w, std::int64_t band, std::int64_t stride,
                 float* out) {
  const std::int64_t cols = w.cols, bc = w.block_cols;
  const float* scale_row = w.scales->data() + band * w.scale_cols();
  for (std::int64_t m = 0; m < rows; ++m) {
    const float* in = x + m * cols;
    float* o = out + m * stride;
    for (std::int64_t g = 0; g < stride; g += avx2::kQuadColumns) {
      if (g + avx2::kQuadColumns <= cols && g / bc == (g + avx2::kQuadColumns - 1) / bc) {
        avx2::quad_columns(in + g, _mm256_set1_ps(scale_row[g / bc] * avx2::kQuadActivationScale), o + g);
        continue;
      }
      // A group across a block edge (blocks not a multiple of 32 wide), or the last columns.
      for (std::int64_t i = g; i < g + avx2::kQuadColumns; ++i)
        o[avx2::quad_position(i)] = i < cols ? in[i] * (scale_row[i / bc] * avx2::kQuadActivationScale) : 0.0f;
    }
  }
}

void pair_rows(const float* x, std::int64_t rows, std::int64_t cols, float* out) {
  for (std::int64_t m = 0; m < rows; ++m) avx2::pair_columns(x + m * cols, cols, out + m * cols);
}

void gemv_paired_bf16(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                      float* y) {
  if (w.dtype != DType::BF16) fail("{}: paired activations for a {} weight", w.name, dtype_name(w.dtype));
  gemv_pairs(x, rows, w, n_begin, n_end, y);
}

template <DType D>
void gemv_typed(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                float* y) {
  if constexpr (D == DType::BF16) {
    // The activations paired, as many rows at a time as the stack holds (all of a decode step's).
    const std::int64_t cols = w.cols;
    alignas(32) float stack[kStackScratchFloats];
    float* paired = nullptr;
    const std::int64_t group = activation_group(stack, rows, cols, kManyActivationRows, paired);
    for (std::int64_t m0 = 0; m0 < rows; m0 += group) {
      const std::int64_t count = std::min(group, rows - m0);
      pair_rows(x + m0 * cols, count, cols, paired);
      gemv_pairs(paired, count, w, n_begin, n_end, y + m0 * w.rows);
    }
  } else if constexpr (D != DType::F8_E4M3) {
    rows_range<D>(x, rows, w, n_begin, n_end, y);
  } else {
    // FP8 in quads: for each band of block_rows weight rows, the activations scaled by its block
    // scales, in quad order, as many rows at a time as the stack holds. Against the codes widened
    // in order, `bench_kernels --benchmark_filter='Gemv/.*fp8:1'` (2 threads, 2-vCPU AMD EPYC, Zen
    // 3, minima of 3, two alternations): 2048 x 7168 921-944 -> 535-629 us, 7168 x 2048 1035-1046
    // -> 678-763, 1024 x 2816 193-198 -> 117-126, a 129280 x 1024 FP8 head 7.49-8.99 -> 6.85-7.33 ms.
    const std::int64_t stride = (w.cols + avx2::kQuadColumns - 1) / avx2::kQuadColumns * avx2::kQuadColumns;
    alignas(64) float stack[kStackScratchFloats];
    float* scaled = nullptr;
    const std::int64_t group = activation_group(stack, rows, stride, kManyActivationRows, scaled);
    for (std::int64_t n = n_begin; n < n_end;) {
      const std::int64_t band = n / w.block_rows;
      const std::int64_t band_end = std::min(n_end, (band + 1) * w.block_rows);
      for (std::int64_t m0 = 0; m0 < rows; m0 += group) {
        const std::int64_t count = std::min(group, rows - m0);
        scale_quads(x + m0 * w.cols, count, w, band, stride, scaled);
        gemv_grouped<Fp8Quads>(scaled, stride, count, w, n, band_end, n_end, y + m0 * w.rows);
      }
      n = band_end;
    }
  }
}

template <DType D>
void dequantize_typed(const Matrix& w, std::int64_t begin, std::int64_t end, float* out) {
  constexpr std::int64_t kBytes = element_bytes<D>();
  const std::int64_t cols = w.cols;
  constexpr bool kScaled = D == DType::F8_E4M3;
  const std::int64_t block_cols = kScaled ? w.block_cols : cols;
  for (std::int64_t r = begin; r < end; ++r) {
    const std::byte* row = w.data + r * cols * kBytes;
    float* out_row = out + (r - begin) * cols;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += block_cols, ++b) {
      const std::int64_t c1 = std::min(cols, c0 + block_cols);
      __m256 scale = _mm256_set1_ps(1.0f);
      if constexpr (kScaled)
        scale = _mm256_set1_ps((*w.scales)[(r / w.block_rows) * w.scale_cols() + b] * kFp8ScaleFold);
      std::int64_t c = c0;
      for (; c + kLanes <= c1; c += kLanes) {
        __m256 v = load_weights<D>(row + c * kBytes);
        if constexpr (kScaled) v = _mm256_mul_ps(v, scale);
        _mm256_storeu_ps(out_row + c, v);
      }
      if (c < c1) {
        const std::int64_t count = c1 - c;
        alignas(32) std::byte padded[kLanes * kBytes] = {};
        alignas(32) float values[kLanes];
        std::memcpy(padded, row + c * kBytes, static_cast<std::size_t>(count * kBytes));
        __m256 v = load_weights<D>(padded);
        if constexpr (kScaled) v = _mm256_mul_ps(v, scale);
        _mm256_store_ps(values, v);
        std::memcpy(out_row + c, values, static_cast<std::size_t>(count) * sizeof(float));
      }
    }
  }
}

// combine_rows: kCombineVectors x 8 columns of kCombineRows activation rows at a time in registers
// (12 accumulators, 2 widened weights and a broadcast coefficient), each weight vector widened once
// for all of them; the weight rows (MLA's W_UK of one head) stay in L1 for the next rows and
// columns. Every output's sum runs over i in order, whichever rows and columns share a block.
constexpr int kCombineVectors = 2;
constexpr int kCombineRows = 6;
static_assert(kCombineFp8BlockMultiple % kLanes == 0, "an FP8 block scale per vector");

// kFull: all kCombineVectors vectors lie inside the row; otherwise the row's last columns are read
// from a zero-padded copy and written through one.
template <DType D, int M, bool kFull>
void combine_block(const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                   std::int64_t coeff_stride, std::int64_t c0, float* out, std::int64_t out_stride) {
  constexpr std::int64_t kBytes = element_bytes<D>();
  constexpr int V = kCombineVectors;
  const std::int64_t cols = w.cols, width = std::min<std::int64_t>(V * kLanes, cols - c0);
  __m256 acc[M][V];
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k) acc[m][k] = _mm256_setzero_ps();
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int64_t r = first + i;
    const std::byte* row = w.data + (r * cols + c0) * kBytes;
    alignas(32) std::byte padded[kFull ? 1 : V * kLanes * kBytes];
    if constexpr (!kFull) {
      std::memset(padded, 0, sizeof padded);
      std::memcpy(padded, row, static_cast<std::size_t>(width * kBytes));
      row = padded;
    }
    __m256 v[V];
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k) v[k] = load_weights<D>(row + k * kLanes * kBytes);
    __m256 scale[V];
    #pragma GCC unroll 16
    for (int k = 0; k < V; ++k) {
      scale[k] = _mm256_set1_ps(1.0f);
      if constexpr (D == DType::F8_E4M3) {  // a vector past the row's end (v[k] = 0) takes the last block's scale
        const std::int64_t col = std::min(c0 + k * kLanes, cols - 1);
        scale[k] = _mm256_set1_ps((*w.scales)[(r / w.block_rows) * w.scale_cols() + col / w.block_cols] * kFp8ScaleFold);
      }
    }
    #pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m256 coeff = _mm256_set1_ps(coeffs[m * coeff_stride + i]);
      #pragma GCC unroll 16
      for (int k = 0; k < V; ++k) {
        const __m256 factor = D == DType::F8_E4M3 ? _mm256_mul_ps(coeff, scale[k]) : coeff;
        acc[m][k] = _mm256_fmadd_ps(factor, v[k], acc[m][k]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    float* target = out + m * out_stride + c0;
    if constexpr (kFull) {
      #pragma GCC unroll 16
      for (int k = 0; k < V; ++k) _mm256_storeu_ps(target + k * kLanes, acc[m][k]);
    } else {
      alignas(32) float values[V * kLanes];
      #pragma GCC unroll 16
      for (int k = 0; k < V; ++k) _mm256_store_ps(values + k * kLanes, acc[m][k]);
      std::memcpy(target, values, static_cast<std::size_t>(width) * sizeof(float));
    }
  }
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

void combine_rows(const Matrix& w, std::int64_t first, std::int64_t count, const float* coeffs,
                  std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride) {
  for_weight_dtype(w, [&](auto dtype) {
    constexpr DType D = decltype(dtype)::value;
    for (std::int64_t c0 = 0; c0 < w.cols; c0 += kCombineVectors * kLanes)
      for (std::int64_t m0 = 0; m0 < rows; m0 += kCombineRows)
        combine_rows_tail<D, kCombineRows>(std::min<std::int64_t>(kCombineRows, rows - m0), w, first, count,
                                           coeffs + m0 * coeff_stride, coeff_stride, c0, out + m0 * out_stride,
                                           out_stride);
  });
}

void gemv(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end, float* y) {
  for_weight_dtype(w, [&](auto dtype) { gemv_typed<decltype(dtype)::value>(x, rows, w, n_begin, n_end, y); });
}

void dequantize(const Matrix& w, std::int64_t begin, std::int64_t end, float* out) {
  for_weight_dtype(w, [&](auto dtype) { dequantize_typed<decltype(dtype)::value>(w, begin, end, out); });
}

// exp(x) for x <= 0 as 2^n · p(r), as in linear_avx512.cpp; 2^n is built in the exponent bits
// (n >= -126 after the clamp).
DSV3_INLINE __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

float exp_and_sum(float* values, std::int64_t count, float shift) {
  const __m256 offset = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(values + i), offset));
    _mm256_storeu_ps(values + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (const float lane : lanes) total += lane;
  if (i < count) {  // the ragged end through a padded buffer, as the weight kernels do
    alignas(32) float tail[kLanes];
    std::fill_n(tail, kLanes, shift);
    std::memcpy(tail, values + i, static_cast<std::size_t>(count - i) * sizeof(float));
    _mm256_store_ps(tail, exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(tail), offset)));
    for (std::int64_t j = 0; j < count - i; ++j) total += (values[i + j] = tail[j]);
  }
  return total;
}

#undef DSV3_INLINE

}  // namespace

const WeightKernels* avx2_weight_kernels() {
  static const WeightKernels kernels{gemv, dequantize, exp_and_sum, combine_rows, pair_rows, gemv_paired_bf16};
  return &kernels;
}

}  // namespace dsv3::kernels

#include "kernels/cpu/avx2_target_end.h"

#else

namespace dsv3::kernels {
const WeightKernels* avx2_weight_kernels() { return nullptr; }
}  // namespace dsv3::kernels

#endif
