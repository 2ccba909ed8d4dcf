#pragma once
// The CPU ops the model is written against (DESIGN.md, "the op interface"). Activations are
// row-major float32; weights are Matrix views in their storage dtype.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>
#include <string>
#include <string_view>

#include "core/matrix.h"
#include "kernels/ops.h"

namespace dsv3::kernels {

// y[rows, W.rows] = x[rows, W.cols] · Wᵀ, FP32 accumulation, any weight dtype. Few rows (decode)
// stream each weight row once, converting in registers (in fast mode with a BF16 GEMM, BF16 weights
// against activations rounded to BF16); many rows (prefill) go through oneDNN's GEMM in fast mode,
// else dequantise panels of the weight and multiply them with OpenBLAS.
// FP8 E4M3 NaN codes (0x7f, 0xff) are not preserved by the SIMD paths; checkpoints hold none.
void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y);

// From this many rows on, linear multiplies through oneDNN unless exact_arithmetic() is set:
// min_gemm_rows(), or min_gemm_rows_bf16_dot() for a BF16 weight whose fewer rows go through
// AVX512-BF16 dot products (few_row_bf16_dot_products()), which keep up with the GEMM to more rows.
// Tests set both (to 1: every linear through the GEMM, the most rounding fast mode can add);
// nullopt restores the measured thresholds.
std::int64_t min_gemm_rows();
std::int64_t min_gemm_rows_bf16_dot();
void set_min_gemm_rows_for_testing(std::optional<std::int64_t> rows);
// Whether linear multiplies `rows` rows by `weight` through that GEMM, by the rule above.
bool linear_through_gemm(std::int64_t rows, const Matrix& weight);
// Whether that GEMM takes BF16 inputs (else FP32): by default with AMX, or AVX512-BF16 on AMD
// (linear_dnnl.cpp says why); DSV3_GEMM=bf16|f32 or set_gemm_bf16 choose. And oneDNN's name for
// the implementation it picks for a [rows, in] x [in, out] product ("brg:avx512_core_bf16").
bool gemm_uses_bf16();
bool gemm_bf16_supported();  // AVX512-BF16 or AMX
void set_gemm_bf16(bool bf16);
// Whether linears under min_gemm_rows_bf16_dot() rows with BF16 weights, and latent attention on a BF16
// cache, round their activations to BF16 for AVX512-BF16 dot products: fast mode, a BF16 GEMM and
// the AVX-512 kernels.
bool few_row_bf16_dot_products();
// Gives a BF16 weight a copy in pair tiles (Matrix::packed: 16 rows by column pairs, the order in
// which AVX512-BF16's dot products take 16 outputs at once) when few_row_bf16_dot_products(); its
// few-row products in fast mode then read the tiles, every row of a step in one pass over them.
// Returns the copy's bytes (0: none made). Exact mode, the GEMM and embedding lookups read the
// weight's own data still.
std::size_t pack_for_few_rows(Matrix& weight);

// Gives MLA's kv_b_proj ([heads (nope + v), kv_lora], BF16) a copy in absorb tiles
// (PackedOrder::absorb_tiles) when few_row_bf16_dot_products(): per head its W_UK transposed
// ([kv_lora, nope]: the absorbed query's product) and then its W_UV ([v, kv_lora]: the output's),
// each in pair tiles; mla_absorb_query and mla_absorb_output in fast mode then read them. Returns
// the copy's bytes (0: none made).
std::size_t pack_for_absorb(Matrix& kv_b_proj, std::int64_t nope, std::int64_t v);
// The bytes of those two copies, for a [rows, cols] weight and for kv_b_proj ([heads (nope + v),
// kv_lora]), whether or not this CPU makes them: what `dsv3 plan` counts on paper.
std::size_t pair_tile_copy_bytes(std::int64_t rows, std::int64_t cols);
std::size_t absorb_tile_copy_bytes(std::int64_t rows, std::int64_t cols, std::int64_t nope, std::int64_t v);
// Head h's two parts of those tiles, as pair-tile weights of their own.
struct AbsorbTileViews {
  PackedWeight keys;    // W_UK[h]ᵀ: kv_lora outputs of nope inputs
  PackedWeight values;  // W_UV[h]: v outputs of kv_lora inputs
};
AbsorbTileViews absorb_tile_views(const PackedWeight& tiles, std::int64_t head, std::int64_t nope, std::int64_t v);
// y[m * ld + n] = x[m] · weight[n] for m < rows and every output n of a pair-tile weight (x as
// pair_tile_activations writes it): each a float32 sum over the column pairs in order.
void pair_tile_products(const std::uint32_t* x, std::int64_t rows, const PackedWeight& tiles, float* y, std::int64_t ld);
// FP32 unless DSV3_GEMM chose: for callers whose arithmetic assumes FP32 products (training).
void use_f32_gemm_unless_chosen();
std::string gemm_implementation(std::int64_t rows, std::int64_t out_features, std::int64_t in_features);
// The GEMM primitives kept now: one per shape (rows, panel), the most recently used 256 at most.
std::size_t gemm_primitives_cached();

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

// A softmax row's exponentials on the active instruction set: values[i] = exp(values[i] - shift),
// shift >= every value; returns their sum. The SIMD paths are within ~2 ulp of std::exp.
float exp_sum(float* values, std::int64_t count, float shift);

// out[m * out_stride + c] = Σ_i coeffs[m * coeff_stride + i] · weight[first + i, c] for m < rows and
// i < count, on the calling thread: a combination of weight rows (MLA's absorbed query multiplies
// q_nope by W_UK, rows of kv_b_proj), each output's sum in the order of i whatever `rows` is.
void combine_rows(const Matrix& weight, std::int64_t first, std::int64_t count, const float* coeffs,
                  std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride);

// Rows [begin, end) of `weight` as float32 into out[(end - begin) * weight.cols].
void dequantize_rows(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out);

// out[i, :] = table[ids[i], :]; ids are checked against the table.
void embedding(const Matrix& table, std::span<const std::int64_t> ids, float* out);

// out[r] = x[r] / rms(x[r]) * weight, over `rows` rows of `dim`; out may alias x.
void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* out);

// out = silu(gate) * up, elementwise (SwiGLU); out may alias gate. The exponentials are exp_sum's,
// on the active instruction set.
void silu_mul(const float* gate, const float* up, std::int64_t count, float* out);

// Causal attention (kernels/ops.h documents the shape); single sequence, all cores.

void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape,
                      float scale, float* out);

}  // namespace dsv3::kernels

namespace dsv3::kernels {



// Absorbed MLA attention for one query position, over a range of its cached keys. q[h] (width =
// kv_lora_rank + rope_dim) is the query absorbed into the latent space, then its rope part; the
// keys are cached rows (c_kv | k_rope) and the values their first value_dim entries (c_kv). The
// result for keys [key_begin, key_end) is partial: per head the largest score, the sum of
// exp(score - max) and the unnormalised exp-weighted sum of values, so that disjoint ranges can be
// computed in parallel (long contexts, one decoding row) and merged.
struct LatentPartial {
  float* max = nullptr;  // [heads]
  float* sum = nullptr;  // [heads]
  float* acc = nullptr;  // [heads, value_dim]
};
void attention_latent(const float* q, std::int64_t heads, const LatentPages& pages, std::int64_t key_begin,
                      std::int64_t key_end, std::int64_t value_dim, float scale, LatentPartial& partial);
// The same with the caller's scratch of attention_latent_scratch(heads, pages.width) floats (the
// one above uses a buffer of the calling thread's).
std::int64_t attention_latent_scratch(std::int64_t heads, std::int64_t width);
void attention_latent(const float* q, std::int64_t heads, const LatentPages& pages, std::int64_t key_begin,
                      std::int64_t key_end, std::int64_t value_dim, float scale, LatentPartial& partial,
                      float* scratch);

// out[heads, value_dim] = softmax(scale * q · k) · v over the union of the partials' key ranges.
void merge_latent_partials(std::span<const LatentPartial> partials, std::int64_t heads, std::int64_t value_dim,
                           float* out);

}  // namespace dsv3::kernels

namespace dsv3::kernels {

// c = a · b (kernels/ops.h documents the shape). Single-threaded: for use inside a parallel task.

void matmul(const float* a, const float* b, float* c, const MatmulShape& shape);

}  // namespace dsv3::kernels
