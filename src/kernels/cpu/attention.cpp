#include <cblas.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace dsv3::kernels {
namespace {
// Query rows per attention block: bounds the scores buffer to kQueryBlock x tokens.
constexpr std::int64_t kQueryBlock = 128;
}  // namespace

void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape, float scale,
                      float* out) {
  use_single_threaded_blas();
  const RowMax row_max = active_isa() == Isa::avx512 ? avx512_row_max() : nullptr;
  const std::int64_t tokens = shape.tokens;
  const std::int64_t blocks = (tokens + kQueryBlock - 1) / kQueryBlock;
  const std::int64_t out_stride = shape.heads * shape.v_dim;
  ThreadPool::global().parallel_for(shape.heads * blocks, 1, [&](std::int64_t first, std::int64_t last) {
    // The scores [kQueryBlock, keys], then each row's 1 / softmax denominator.
    std::vector<float>& scratch =
        thread_buffer(static_cast<std::size_t>(kQueryBlock * (shape.query_offset + tokens + 1)));
    for (std::int64_t task = first; task < last; ++task) {
      const std::int64_t head = task / blocks;
      const std::int64_t q_begin = (task % blocks) * kQueryBlock;
      const std::int64_t q_rows = std::min(kQueryBlock, tokens - q_begin);
      const std::int64_t keys = shape.query_offset + q_begin + q_rows;  // causal: later keys are never needed
      float* scores = scratch.data();
      float* inverse = scores + q_rows * keys;
      // scores[i, j] = scale * q_i · k_j
      sgemm(true, q_rows, keys, shape.qk_dim, scale, q + q_begin * shape.q_stride + head * shape.q_head_stride,
            shape.q_stride, k + head * shape.k_head_stride, shape.k_stride, 0.0f, scores, keys);
      for (std::int64_t i = 0; i < q_rows; ++i) {
        float* row = scores + i * keys;
        const std::int64_t visible = shape.query_offset + q_begin + i + 1;
        const float max_score = row_max ? row_max(row, visible) : *std::max_element(row, row + visible);
        inverse[i] = 1.0f / exp_sum(row, visible, max_score);
        std::fill(row + visible, row + keys, 0.0f);
      }
      // The unnormalised exponentials times v, then each row divided by its sum (v_dim values a
      // row rather than keys).
      float* target = out + q_begin * out_stride + head * shape.v_dim;
      sgemm(false, q_rows, shape.v_dim, keys, 1.0f, scores, keys, v + head * shape.v_head_stride, shape.v_stride,
            0.0f, target, out_stride);
      for (std::int64_t i = 0; i < q_rows; ++i)
        for (std::int64_t d = 0; d < shape.v_dim; ++d) target[i * out_stride + d] *= inverse[i];
    }
  });
}

}  // namespace dsv3::kernels

namespace dsv3::kernels {
namespace {
// Keys per step of attention_latent: a multiple of the page size. The SIMD products take 64,
// whose rows stay in the core's caches between the two products; OpenBLAS calls need more keys to
// run at speed.
constexpr std::int64_t kLatentChunk = 64, kLatentChunkBlas = 256;
// Floats per cache line: the kernels' loads of the queries and the gathered rows stay whole lines.
constexpr std::int64_t kLineFloats = 16;
}  // namespace

std::int64_t attention_latent_scratch(std::int64_t heads, std::int64_t width) {
  // The gathered rows, or the paired or rounded queries (from a cache line's start); then the
  // scores, and on AVX-512 (64-key chunks) the rounded probabilities in what the BLAS path's wider
  // scores would take.
  return std::max(kLatentChunkBlas, heads) * width + kLineFloats + heads * kLatentChunkBlas;
}

void attention_latent(const float* q, std::int64_t heads, const LatentPages& pages, std::int64_t key_begin,
                      std::int64_t key_end, std::int64_t value_dim, float scale, LatentPartial& partial) {
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<std::size_t>(attention_latent_scratch(heads, pages.width)));
  attention_latent(q, heads, pages, key_begin, key_end, value_dim, scale, partial, scratch.data());
}

void attention_latent(const float* q, std::int64_t heads, const LatentPages& pages, std::int64_t key_begin,
                      std::int64_t key_end, std::int64_t value_dim, float scale, LatentPartial& partial,
                      float* scratch) {
  const Isa isa = active_isa();
  const LatentKernels* simd =
      isa == Isa::avx512 ? avx512_latent_kernels() : isa == Isa::avx2 ? avx2_latent_kernels() : nullptr;
  const RowMax row_max = isa == Isa::avx512 ? avx512_row_max() : nullptr;
  // AVX-512 and AVX2 read BF16 rows where they lie; every other case gathers them into float32 rows. In
  // fast mode with BF16 products the queries and probabilities are rounded to BF16 for AVX512-BF16's
  // dot products, half the instructions: 2-vCPU AMD EPYC, bench_kernels (exact:1 -> exact:0,
  // medians of 3 in two runs) AttentionLatent/4096 (one thread) 429-469 -> 254-264 us,
  // AttentionLatentStep/16 6.7-7.6 -> 4.3-4.7 ms; `dsv3 bench --batch 16 --profile`, bench-1b:
  // 10.3 -> 7.2 ms a step.
  const bool in_place = simd && pages.dtype == DType::BF16;
  const bool dot = in_place && simd->scores_dot && fast_bf16_products();
  // AVX2 has no kernels for float32 rows: those gather and go to OpenBLAS.
  const bool blas = !in_place && !(simd && simd->scores);
  if (blas) use_single_threaded_blas();
  const std::int64_t chunk = blas ? kLatentChunkBlas : kLatentChunk;
  const std::int64_t width = pages.width, block_tokens = pages.block_tokens;
  // Gathered key rows [chunk, width] (or the paired queries [heads, width]), then the scores
  // [heads, chunk], from a cache line's start.
  const std::int64_t first_part = in_place ? heads * width : chunk * width;
  const auto misaligned = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(scratch) / sizeof(float) % kLineFloats);
  float* const start = scratch + (kLineFloats - misaligned) % kLineFloats;
  const std::span<float> rows(start, static_cast<std::size_t>(first_part));
  const std::span<float> scores(start + first_part, static_cast<std::size_t>(heads * chunk));
  // With dot products: the rounded queries in the first part, the rounded probabilities (two to a
  // word) after the scores (chunk is even; attention_latent_scratch leaves room for both).
  auto* const q16 = reinterpret_cast<std::uint16_t*>(rows.data());
  auto* const p2 = reinterpret_cast<std::uint32_t*>(scores.data() + heads * chunk);
  // and after those each head's rescaling of acc for a chunk (attention_latent_scratch's second
  // part, heads x kLatentChunkBlas, holds all three)
  float* const factors = scores.data() + heads * chunk + heads * chunk / 2;
  std::array<const std::uint16_t*, kLatentChunk> key_rows{};
  std::fill_n(partial.max, heads, -std::numeric_limits<float>::infinity());
  std::fill_n(partial.sum, heads, 0.0f);
  std::fill_n(partial.acc, heads * value_dim, 0.0f);
  if (dot) {
    round_to_bf16(q, heads * width, q16);
  } else if (in_place) {
    for (std::int64_t h = 0; h < heads; ++h) simd->pair(q + h * width, width, rows.data() + h * width);
  }

  const std::size_t element = dtype_size(pages.dtype);
  const auto row_bytes = static_cast<std::size_t>(width) * element;
  // Calls body(source, run, offset) for each stretch of keys [first, first + count) that lies in
  // one page: `run` rows from `source`, the stretch's offset from `first`.
  const auto for_each_run = [&](std::int64_t first, std::int64_t count, auto&& body) {
    for (std::int64_t position = first; position < first + count;) {
      const std::int64_t slot = position % block_tokens;
      const std::int64_t run = std::min(block_tokens - slot, first + count - position);
      const std::int64_t block = pages.blocks[static_cast<std::size_t>(position / block_tokens)];
      body(pages.storage + static_cast<std::size_t>(block * pages.block_stride_rows + pages.layer_offset_rows + slot) *
                               row_bytes,
           run, position - first);
      position += run;
    }
  };
  // Keys are taken `chunk` at a time: their scores, the softmax's running maximum and sum, then the
  // probability-weighted sum of their c_kv.
  for (std::int64_t first = key_begin; first < key_end; first += chunk) {
    const std::int64_t count = std::min(chunk, key_end - first);
    for_each_run(first, count, [&](const std::byte* source, std::int64_t run, std::int64_t offset) {
      if (in_place) {
        for (std::int64_t i = 0; i < run; ++i)
          key_rows[static_cast<std::size_t>(offset + i)] = reinterpret_cast<const std::uint16_t*>(source) + i * width;
        return;
      }
      float* target = rows.data() + offset * width;
      if (pages.dtype == DType::BF16) {
        const auto* bits = reinterpret_cast<const std::uint16_t*>(source);
        for (std::int64_t i = 0; i < run * width; ++i) target[i] = bf16_to_float(bits[i]);
      } else {
        std::memcpy(target, source, static_cast<std::size_t>(run) * row_bytes);
      }
    });
    // scores[h, j] = scale * q[h] · row_j for this chunk's rows (stored key-major with dot products)
    if (dot) {
      simd->scores_dot(q16, heads, key_rows.data(), count, width, scale, scores.data());
    } else if (in_place) {
      simd->scores_bf16(rows.data(), heads, key_rows.data(), count, width, scale, scores.data());
    } else if (!blas) {
      simd->scores(q, heads, rows.data(), count, width, scale, scores.data());
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(heads), static_cast<int>(count),
                  static_cast<int>(width), scale, q, static_cast<int>(width), rows.data(), static_cast<int>(width),
                  0.0f, scores.data(), static_cast<int>(count));
    }
    // The next chunk's first rows, which scores_bf16 does not fetch ahead, come in meanwhile.
    if (in_place && first + count < key_end)
      for_each_run(first + count, std::min(kLatentFetchAhead, key_end - first - count),
                   [&](const std::byte* source, std::int64_t run, std::int64_t) {
                     const std::size_t bytes = static_cast<std::size_t>(run) * row_bytes;
                     for (std::size_t b = 0; b < bytes; b += kLineFloats * sizeof(float)) __builtin_prefetch(source + b);
                   });
    if (dot) {  // heads in lanes from the scores to the sums
      simd->softmax_dot(scores.data(), heads, count, partial.max, partial.sum, factors, p2);
      simd->accumulate_dot(scores.data(), p2, heads, count, key_rows.data(), value_dim, factors, partial.acc);
      continue;
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      float* row = scores.data() + h * count;
      const float chunk_max = row_max ? row_max(row, count) : *std::max_element(row, row + count);
      const float new_max = std::max(partial.max[h], chunk_max);
      const float rescale = std::exp(partial.max[h] - new_max);  // 0 on the first chunk
      const float sum = exp_sum(row, count, new_max);
      partial.sum[h] = partial.sum[h] * rescale + sum;
      partial.max[h] = new_max;
      if (rescale != 1.0f)
        for (std::int64_t d = 0; d < value_dim; ++d) partial.acc[h * value_dim + d] *= rescale;
    }
    // acc[h] += p[h, :] · c_kv rows (the first value_dim entries of each row)
    if (in_place) {
      simd->accumulate_bf16(scores.data(), heads, count, key_rows.data(), value_dim, partial.acc);
    } else if (!blas) {
      simd->accumulate(scores.data(), heads, count, rows.data(), width, value_dim, partial.acc);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(heads), static_cast<int>(value_dim),
                  static_cast<int>(count), 1.0f, scores.data(), static_cast<int>(count), rows.data(),
                  static_cast<int>(width), 1.0f, partial.acc, static_cast<int>(value_dim));
    }
  }
  if (dot) {
    for (std::int64_t h = 0; h < heads; ++h) simd->dot_order_undo(partial.acc + h * value_dim, value_dim);
  } else if (in_place) {
    for (std::int64_t h = 0; h < heads; ++h) simd->unpair(partial.acc + h * value_dim, value_dim);
  }
}

void merge_latent_partials(std::span<const LatentPartial> partials, std::int64_t heads, std::int64_t value_dim,
                           float* out) {
  if (partials.size() == 1) {  // a row in one task (every row of a batch's decode step): one pass
    const LatentPartial& p = partials.front();
    for (std::int64_t h = 0; h < heads; ++h) {
      // The loop below with one partial, bit for bit: its weight is exp(0) = 1, so each value is
      // (0 + a) / sum (the 0 + turns -0 into +0 as the sum into zeros does).
      const auto inverse = static_cast<float>(1.0 / static_cast<double>(p.sum[h]));
      const float* from = p.acc + h * value_dim;
      float* target = out + h * value_dim;
      for (std::int64_t d = 0; d < value_dim; ++d) target[d] = (0.0f + from[d]) * inverse;
    }
    return;
  }
  for (std::int64_t h = 0; h < heads; ++h) {
    float max_score = -std::numeric_limits<float>::infinity();
    for (const auto& p : partials) max_score = std::max(max_score, p.max[h]);
    double total = 0.0;
    float* target = out + h * value_dim;
    std::fill_n(target, value_dim, 0.0f);
    for (const auto& p : partials) {
      if (p.sum[h] == 0.0f) continue;  // an empty key range
      const float weight = std::exp(p.max[h] - max_score);
      total += static_cast<double>(p.sum[h]) * weight;
      for (std::int64_t d = 0; d < value_dim; ++d) target[d] += weight * p.acc[h * value_dim + d];
    }
    const auto inverse = static_cast<float>(1.0 / total);
    for (std::int64_t d = 0; d < value_dim; ++d) target[d] *= inverse;
  }
}

}  // namespace dsv3::kernels
