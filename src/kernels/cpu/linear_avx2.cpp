// The weight kernels for AVX2 + FMA + F16C: 8 floats per register. AVX2 has no byte or 16-bit
// masked loads, so the ragged end of a row is copied into a zero-padded buffer first.
// Compiled for that target here only; linear.cpp calls them after checking the CPU.
#include "kernels/cpu/internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

#if defined(__clang__)  // clang ignores GCC's target pragma; this is its spelling of the same
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace dsv3::kernels {
namespace {

constexpr std::int64_t kLanes = 8;
constexpr int kOutputRows = 4;
// 4 x 2 accumulators, 4 scales and the loaded vectors fit the 16 ymm registers.
constexpr int kActivationRows = 2;
constexpr float kFp8ScaleFold = 256.0f;  // see load_weights

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

// R weight rows against M activation rows (FP8: unscaled codes against scaled activations).
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

// FP8: the block scales are folded into a scaled copy of the activations once per band of
// block_rows weight rows, as in linear_avx512.cpp.
template <DType D>
void gemv_typed(const float* x, std::int64_t rows, const Matrix& w, std::int64_t n_begin, std::int64_t n_end,
                float* y) {
  if constexpr (D != DType::F8_E4M3) {
    rows_range<D>(x, rows, w, n_begin, n_end, y);
  } else {
    const std::int64_t cols = w.cols;
    alignas(64) float stack[kStackScratchFloats];  // the scaled activations of `group` rows at a time
    float* scaled = nullptr;
    const std::int64_t group = activation_group(stack, rows, cols, kActivationRows, scaled);
    for (std::int64_t n = n_begin; n < n_end;) {
      const std::int64_t band = n / w.block_rows;
      const std::int64_t band_end = std::min(n_end, (band + 1) * w.block_rows);
      const float* scale_row = w.scales->data() + band * w.scale_cols();
      for (std::int64_t m0 = 0; m0 < rows; m0 += group) {
        const std::int64_t count = std::min(group, rows - m0);
        for (std::int64_t m = 0; m < count; ++m)
          for (std::int64_t c = 0; c < cols; ++c)
            scaled[m * cols + c] = x[(m0 + m) * cols + c] * (scale_row[c / w.block_cols] * kFp8ScaleFold);
        rows_range<D>(scaled, count, w, n, band_end, y + m0 * w.rows);
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
  static const WeightKernels kernels{gemv, dequantize, exp_and_sum};
  return &kernels;
}

}  // namespace dsv3::kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else

namespace dsv3::kernels {
const WeightKernels* avx2_weight_kernels() { return nullptr; }
}  // namespace dsv3::kernels

#endif
