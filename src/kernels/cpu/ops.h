#pragma once
// The CPU ops the model is written against (DESIGN.md, "the op interface"). Activations are
// row-major float32; weights are Matrix views in their storage dtype.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>
#include <string_view>

#include "core/matrix.h"

namespace dsv3::kernels {

// y[rows, W.rows] = x[rows, W.cols] · Wᵀ, FP32 activations and accumulation, any weight dtype.
// Few rows (decode) stream each weight row once, converting in registers; many rows (prefill)
// dequantise panels of the weight and multiply them with OpenBLAS.
// FP8 E4M3 NaN codes (0x7f, 0xff) are not preserved by the SIMD paths; checkpoints hold none.
void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y);

// The instruction set the weight kernels use, chosen once from the CPU's features.
enum class Isa { scalar, avx2, avx512 };
std::string_view isa_name(Isa isa);
bool isa_supported(Isa isa);  // by this CPU and this build
Isa active_isa();
// Tests and benchmarks force a path (so AVX2 and scalar are checked on an AVX-512 machine);
// nullopt restores the automatic choice. Throws when the CPU lacks the instruction set.
void set_isa_for_testing(std::optional<Isa> isa);

// y[r, n] = x[r, :] · weight[n, :] for the output rows n in [n_begin, n_end) only, y laid out
// [rows, weight.rows], on the calling thread: for callers that split one matrix into slices and
// parallelise over them themselves (MLA's per-head slices of kv_b_proj).
void linear_rows(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin, std::int64_t n_end,
                 float* y);

// Rows [begin, end) of `weight` as float32 into out[(end - begin) * weight.cols].
void dequantize_rows(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out);

// out[i, :] = table[ids[i], :]; ids are checked against the table.
void embedding(const Matrix& table, std::span<const std::int64_t> ids, float* out);

// out[r] = x[r] / rms(x[r]) * weight, over `rows` rows of `dim`; out may alias x.
void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* out);

// out = silu(gate) * up, elementwise (SwiGLU); out may alias gate.
void silu_mul(const float* gate, const float* up, std::int64_t count, float* out);

// Causal softmax attention for one sequence: for each head, q and k rows of qk_dim, v rows of
// v_dim, addressed as base + token * stride + head * head_stride (in floats), so MLA's packed
// kv_b_proj output is read in place. The `tokens` queries sit at positions query_offset + i and
// see keys 0 ..= their position (k and v hold query_offset + tokens rows: a cached prefix, then
// the new tokens). out: [tokens, heads, v_dim] contiguous.
struct AttentionShape {
  std::int64_t tokens = 0;
  std::int64_t query_offset = 0;
  std::int64_t heads = 0;
  std::int64_t qk_dim = 0;
  std::int64_t v_dim = 0;
  std::int64_t q_stride = 0, q_head_stride = 0;
  std::int64_t k_stride = 0, k_head_stride = 0;
  std::int64_t v_stride = 0, v_head_stride = 0;
};
void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape,
                      float scale, float* out);

}  // namespace dsv3::kernels

namespace dsv3::kernels {

// A sequence's rows of one layer in a paged latent KV cache. Storage holds fixed-size blocks of
// block_tokens rows of `width` values (F32 or BF16); the sequence's row j lives in block
// blocks[j / block_tokens] at slot j % block_tokens, row address
// storage + ((blocks[b] * block_stride_rows + layer_offset_rows + slot) * width) * dtype_size.
struct LatentPages {
  const std::byte* storage = nullptr;
  DType dtype = DType::F32;
  std::int64_t width = 0;
  std::int64_t block_tokens = 0;
  std::int64_t block_stride_rows = 0;
  std::int64_t layer_offset_rows = 0;
  std::span<const std::int32_t> blocks;
};

// Absorbed MLA attention for one query position, over a range of its cached keys. q[h] (width =
// kv_lora_rank + rope_dim) is the query absorbed into the latent space, then its rope part; the
// keys are cached rows (c_kv | k_rope) and the values their first value_dim entries (c_kv). The
// result for keys [key_begin, key_end) is partial: per head the largest score, the sum of
// exp(score - max) and the unnormalised exp-weighted sum of values, so that disjoint ranges can be
// computed in parallel (long contexts, one decoding row) and merged.
struct LatentPartial {
  std::vector<float> max;  // [heads]
  std::vector<float> sum;  // [heads]
  std::vector<float> acc;  // [heads, value_dim]
};
void attention_latent(const float* q, std::int64_t heads, const LatentPages& pages, std::int64_t key_begin,
                      std::int64_t key_end, std::int64_t value_dim, float scale, LatentPartial& partial);

// out[heads, value_dim] = softmax(scale * q · k) · v over the union of the partials' key ranges.
void merge_latent_partials(std::span<const LatentPartial> partials, std::int64_t heads, std::int64_t value_dim,
                           float* out);

}  // namespace dsv3::kernels

namespace dsv3::kernels {

// c[m, n] = a[m, k] · b (+ beta · c), b given as [k, n] or, with b_transposed, as [n, k]. Row-major
// with leading dimensions in floats. Single-threaded: for use inside a parallel task.
struct MatmulShape {
  std::int64_t m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  bool b_transposed = false;
  float beta = 0.0f;
};
void matmul(const float* a, const float* b, float* c, const MatmulShape& shape);

}  // namespace dsv3::kernels
