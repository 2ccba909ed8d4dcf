#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

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
  const std::int64_t tokens = shape.tokens;
  const std::int64_t blocks = (tokens + kQueryBlock - 1) / kQueryBlock;
  ThreadPool::global().parallel_for(shape.heads * blocks, 1, [&](std::int64_t first, std::int64_t last) {
    std::vector<float>& scores = thread_buffer(static_cast<std::size_t>(kQueryBlock * tokens));
    for (std::int64_t task = first; task < last; ++task) {
      const std::int64_t head = task / blocks;
      const std::int64_t q_begin = (task % blocks) * kQueryBlock;
      const std::int64_t q_rows = std::min(kQueryBlock, tokens - q_begin);
      const std::int64_t keys = q_begin + q_rows;  // causal: later keys are never needed
      // scores[i, j] = scale * q_i · k_j
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(q_rows), static_cast<int>(keys),
                  static_cast<int>(shape.qk_dim), scale, q + q_begin * shape.q_stride + head * shape.q_head_stride,
                  static_cast<int>(shape.q_stride), k + head * shape.k_head_stride, static_cast<int>(shape.k_stride), 0.0f,
                  scores.data(), static_cast<int>(keys));
      for (std::int64_t i = 0; i < q_rows; ++i) {
        float* row = scores.data() + i * keys;
        const std::int64_t visible = q_begin + i + 1;
        const float max_score = *std::max_element(row, row + visible);
        double total = 0.0;
        for (std::int64_t j = 0; j < visible; ++j) {
          row[j] = std::exp(row[j] - max_score);
          total += row[j];
        }
        const auto inverse = static_cast<float>(1.0 / total);
        for (std::int64_t j = 0; j < visible; ++j) row[j] *= inverse;
        std::fill(row + visible, row + keys, 0.0f);
      }
      const std::int64_t out_stride = shape.heads * shape.v_dim;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(q_rows), static_cast<int>(shape.v_dim),
                  static_cast<int>(keys), 1.0f, scores.data(), static_cast<int>(keys), v + head * shape.v_head_stride,
                  static_cast<int>(shape.v_stride), 0.0f, out + q_begin * out_stride + head * shape.v_dim,
                  static_cast<int>(out_stride));
    }
  });
}

}  // namespace dsv3::kernels
