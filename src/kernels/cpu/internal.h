#pragma once
// Shared by the CPU kernel files; not part of the op interface.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/matrix.h"
#include "core/thread_pool.h"

namespace dsv3::kernels {

// OpenBLAS is used single-threaded: the kernels parallelise over their own tasks.
void use_single_threaded_blas();

// A per-thread scratch buffer of at least `size` floats, reused across calls. A thread allocates it
// the first time it runs a task that needs it, which is whenever it happens to join such a loop:
// the kernels a decode step runs use stack or Workspace scratch instead (below).
std::vector<float>& thread_buffer(std::size_t size);

// Floats of scratch a weight kernel keeps on its stack (256 KiB): the FP8 kernels' scaled
// activations (as many rows at a time as fit: 8 of DeepSeek-V3's 7168, 3 of its widest, 18432) and
// the scalar kernel's dequantised row.
constexpr std::int64_t kStackScratchFloats = 65536;

// How many rows of scaled activations (`cols` floats each) the weight kernels widen at a time
// into `stack` (kStackScratchFloats floats), a multiple of the kernel's `unit` rows where more
// than one unit fits, so that no thread allocates for its first task; each output is the same sum
// whichever rows share a group. Rows wider than the stack take the thread's buffer, all `rows` at
// once (no DeepSeek-V3 weight has them). Returns the group and points `scaled` at its memory.
inline std::int64_t activation_group(float* stack, std::int64_t rows, std::int64_t cols, std::int64_t unit,
                                     float*& scaled) {
  std::int64_t group = kStackScratchFloats / cols;
  scaled = stack;
  if (group == 0) {
    scaled = thread_buffer(static_cast<std::size_t>(rows * cols)).data();
    return rows;
  }
  return group >= unit ? group - group % unit : group;
}

// Calls task(lane, t) for every t in [0, tasks), handed out one at a time to the threads that join,
// each of which works under a lane of its own in [0, lanes): scratch taken per lane (from the op's
// Workspace, before the loop) is private to whichever thread runs it, so the loop needs no
// per-thread buffer that a thread would allocate the first time it happens to join. With the
// pool busy (a nested loop) lane 0 runs every task inline.
template <typename Task>
void parallel_lanes(ThreadPool& pool, std::int64_t tasks, std::int64_t lanes, Task&& task) {
  std::atomic<std::int64_t> next{0};
  pool.parallel_for(std::min(lanes, tasks), 1, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t lane = first; lane < last; ++lane)
      for (std::int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < tasks;
           t = next.fetch_add(1, std::memory_order_relaxed))
        task(lane, t);
  });
}
// Host memory for the CPU backend and its kernels' copies, released with std::free: 64-byte
// aligned, and from 2 MiB on 2 MiB aligned with huge pages advised (a whole block streamed every
// step then takes a TLB entry per 2 MiB, not per 4 KiB); nullptr when there is none.
void* kernel_memory(std::size_t bytes);

// The lanes worth having for `tasks` tasks: one per thread of the pool, at most one per task.
inline std::int64_t lanes_for(const ThreadPool& pool, std::int64_t tasks) {
  return std::max<std::int64_t>(1, std::min<std::int64_t>(tasks, pool.size()));
}

// See WeightKernels::combine_rows below: the widest vector of floats a kernel scales as one.
constexpr std::int64_t kCombineFp8BlockMultiple = 16;

// One instruction set's weight-streaming kernels (linear_scalar.cpp, linear_avx2.cpp,
// linear_avx512.cpp). Each lives in its own file so that its template instantiations, compiled
// for its target, stay internal to that file.
struct WeightKernels {
  // y[m * weight.rows + n] = x[m, :] · weight[n, :] for m < rows and n in [n_begin, n_end): each
  // weight row is read once from memory and used against every activation row.
  void (*gemv)(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin, std::int64_t n_end,
               float* y);
  // Rows [begin, end) of `weight` as float32 into out[(end - begin) * weight.cols].
  void (*dequantize)(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out);
  // A softmax's exponentials: values[i] = exp(values[i] - shift) (shift >= every value), returning
  // their sum. The SIMD paths evaluate exp as 2^n · p(r) with a degree-6 polynomial on
  // |r| <= ln2 / 2 (about 1 ulp); the attention ops call it for every score row.
  float (*exp_sum)(float* values, std::int64_t count, float shift);
  // out[m * out_stride + c] = Σ_i coeffs[m * coeff_stride + i] · weight[first + i, c] for m < rows,
  // i < count, every column c: weight rows combined, read in their storage dtype and widened in
  // registers, each row's sum in the order of i (MLA's absorbed query, W_UKᵀ q). nullptr where an
  // instruction set has none (the caller then dequantises and multiplies). FP8 weights only with
  // blocks a multiple of kCombineFp8BlockMultiple columns wide: the kernels take one block scale per
  // vector (DeepSeek's blocks are 128 wide; the caller checks).
  void (*combine_rows)(const Matrix& weight, std::int64_t first, std::int64_t count, const float* coeffs,
                       std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride) = nullptr;
  // BF16 weights: gemv on activations already in the order its kernels read them, which pair_rows
  // writes (`rows` rows of `cols`): a caller that splits one product over tasks orders the
  // activations once, not once per task. The same bits as gemv. nullptr where gemv reads x as it is.
  void (*pair_rows)(const float* x, std::int64_t rows, std::int64_t cols, float* out) = nullptr;
  void (*gemv_paired_bf16)(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin,
                           std::int64_t n_end, float* y) = nullptr;
  // BF16 weights against activations rounded to BF16 (round_to_bf16, `rows` rows of weight.cols),
  // products summed in float32 by AVX512-BF16's dot-product instruction: fast mode's few-row
  // linears where the GEMM takes BF16 inputs (linear.cpp). nullptr where an instruction set has none.
  void (*gemv_bf16_dot)(const std::uint16_t* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin,
                        std::int64_t n_end, float* y) = nullptr;
  // The same products over the weight's pair tiles (Matrix::packed_copy()), the activations as
  // pair_tile_activations writes them: each output one float32 sum over the column pairs in order,
  // whatever rows and outputs share the call.
  void (*gemv_pair_tiles)(const std::uint32_t* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin,
                          std::int64_t n_end, float* y) = nullptr;
  // The same over tiles of any [tiles.rows, tiles.cols] weight (a part of a packed copy, such as
  // one head's in the absorbed attention's): every output, row m's at y + m * ld.
  void (*pair_tile_products)(const std::uint32_t* x, std::int64_t rows, const PackedWeight& tiles, float* y,
                             std::int64_t ld) = nullptr;
  // pair_tile_activations (below) in vector registers, the same bits; nullptr: the portable loop.
  void (*pair_tile_activations)(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                std::uint32_t* out) = nullptr;
};

// Pair tiles: tile t holds weight rows [16t, 16t + 16) (past the last row, zeros); its pair p, lane
// j the dword (row 16t + j, column 2p | column 2p + 1 << 16), a column past the last 0. So one 64-byte
// load is 16 outputs' next two columns, which vdpbf16ps multiplies by one broadcast activation pair.
constexpr std::int64_t kPairTileRows = 16;
inline std::int64_t pair_tile_pairs(std::int64_t cols) { return (cols + 1) / 2; }
// The activations for gemv_pair_tiles: `rows` rows of `cols` values rounded to BF16 (round_to_bf16),
// in groups of kPairTileRows rows (the last group the rest): group g at out + g * 16 * pairs, its
// pair p of row m at [p * group_rows + m], a column past the last 0. rows * pairs dwords.
void pair_tile_activations(const float* x, std::int64_t rows, std::int64_t cols, std::uint32_t* out);
// The same from rows `ld` floats apart.
void pair_tile_activations(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::uint32_t* out);

// pair_tiles_avx512.cpp: WeightKernels' gemv_pair_tiles, pair_tile_products and
// pair_tile_activations for AVX512-BF16 (x86-64 builds only).
void gemv_pair_tiles_avx512(const std::uint32_t* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin,
                            std::int64_t n_end, float* y);
void pair_tile_products_avx512(const std::uint32_t* x, std::int64_t rows, const PackedWeight& tiles, float* y,
                               std::int64_t ld);
void pair_tile_activations_avx512(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                  std::uint32_t* out);

// Calls body(std::integral_constant<DType, D>{}) for the weight's storage dtype D: the one switch
// through which each instruction set's file reaches its kernels instantiated per weight dtype.
template <typename Body>
void for_weight_dtype(const Matrix& weight, Body&& body) {
  switch (weight.dtype) {
    case DType::F32: return body(std::integral_constant<DType, DType::F32>{});
    case DType::BF16: return body(std::integral_constant<DType, DType::BF16>{});
    case DType::F16: return body(std::integral_constant<DType, DType::F16>{});
    case DType::F8_E4M3: return body(std::integral_constant<DType, DType::F8_E4M3>{});
    default: fail("{}: dtype {} is not a weight dtype", weight.name, dtype_name(weight.dtype));
  }
}

// Fast mode with BF16 GEMM inputs: the few-row products a decode step makes (BF16 weights, latent
// attention on a BF16 cache) round their activations to BF16 too and use AVX512-BF16's dot
// products where the kernels have them (linear.cpp).
bool fast_bf16_products();

// in[0, count) rounded to BF16 as AVX512-BF16 rounds (to nearest, ties to even; denormals to 0; NaN
// stays NaN): the one rounding of activations that fast mode's BF16 products use, in the GEMM and
// the few-row kernels alike.
void round_to_bf16(const float* in, std::int64_t count, std::uint16_t* out);

// Many-row linears through oneDNN matmul (linear_dnnl.cpp), BF16 x BF16 -> FP32 or FP32; weights
// converted panel by panel, never stored wide.
void linear_gemm(const float* x, std::int64_t rows, const Matrix& weight, float* y, const WeightKernels& kernels);

// c[m, n] = alpha · a[m, k] · b (b [k, n], or [n, k] with b_transposed) + beta · c, row-major, on the
// calling thread, through oneDNN's FP32 GEMM. Prefill's attention uses it: OpenBLAS 0.3.21 does not
// know newer Intel cores and falls back to its SSE3 (Prescott) kernels there. It may allocate, so
// decode's kernels keep OpenBLAS.
void sgemm(bool b_transposed, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
           std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

// Decode's latent attention products on a chunk of `count` key rows of `width` (attention.cpp):
// scores[h, j] = scale · q[h] · keys[j]; acc[h, d] += Σ_j p[h, j] · keys[j, d] for d < value_dim.
// AVX-512 (attention_avx512.cpp) and AVX2 on BF16 rows (attention_avx2.cpp); the other cases multiply
// with OpenBLAS.
struct LatentKernels {
  void (*scores)(const float* q, std::int64_t heads, const float* keys, std::int64_t count, std::int64_t width,
                 float scale, float* scores);
  void (*accumulate)(const float* p, std::int64_t heads, std::int64_t count, const float* keys, std::int64_t width,
                     std::int64_t value_dim, float* acc);
  // The same on BF16 cache rows where they lie, keys[j] pointing at row j, with q and acc in the
  // kernels' own column order, which `pair` gives a row of `cols` values and `unpair` undoes in place.
  void (*scores_bf16)(const float* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t count,
                      std::int64_t width, float scale, float* scores);
  void (*accumulate_bf16)(const float* p, std::int64_t heads, std::int64_t count, const std::uint16_t* const* keys,
                          std::int64_t value_dim, float* acc);
  void (*pair)(const float* in, std::int64_t cols, float* out);
  void (*unpair)(float* values, std::int64_t cols);
  // Fast mode's BF16 products (fast_bf16_products()), on BF16 cache rows, with heads in lanes
  // between them. scores_dot: the queries rounded to BF16 in their natural order (round_to_bf16);
  // the scores key-major, scores[j, h] at j * heads + h. softmax_dot: the online softmax's step over
  // them (partial max and sum moved on, rescale[h] the correction of acc[h] for a new maximum, 0 on
  // a first chunk), the scores replaced by exp(score - max) and those also rounded to BF16 two keys
  // to a 32-bit word (`p2`, ceil(count / 2) x heads, key 2i in the low half, a 0 past an odd count),
  // which AVX512-BF16's dot products take. accumulate_dot: acc[h] first multiplied by rescale[h] as
  // it is loaded, then the sums; acc's whole 32 values at a time lie in the kernels' own order, which
  // `dot_order_undo` puts back in place; the last value_dim % 32 are in order, summed from the float32
  // probabilities `p` (key-major as softmax_dot leaves them).
  void (*scores_dot)(const std::uint16_t* q, std::int64_t heads, const std::uint16_t* const* keys, std::int64_t count,
                     std::int64_t width, float scale, float* scores) = nullptr;
  void (*softmax_dot)(float* scores, std::int64_t heads, std::int64_t count, float* max, float* sum, float* rescale,
                      std::uint32_t* p2) = nullptr;
  void (*accumulate_dot)(const float* p, const std::uint32_t* p2, std::int64_t heads, std::int64_t count,
                         const std::uint16_t* const* keys, std::int64_t value_dim, const float* rescale,
                         float* acc) = nullptr;
  void (*dot_order_undo)(float* values, std::int64_t cols) = nullptr;
};
// How many keys ahead of those being scored the BF16 kernels fetch rows from memory.
inline constexpr std::int64_t kLatentFetchAhead = 8;
const LatentKernels* avx512_latent_kernels();  // nullptr when the build is not for x86-64
// AVX2's: the in-place BF16 kernels (scores_bf16, accumulate_bf16, pair, unpair) only; float32
// rows go to OpenBLAS. nullptr when the build is not for x86-64.
const LatentKernels* avx2_latent_kernels();
// The largest of row[0, count) (count >= 1) on AVX-512, for the attention ops' softmax rows
// (std::max_element does not vectorise: it must keep the first of equal values).
using RowMax = float (*)(const float* row, std::int64_t count);
RowMax avx512_row_max();  // nullptr when the build is not for x86-64

const WeightKernels& scalar_weight_kernels();
const WeightKernels* avx2_weight_kernels();    // nullptr when the build is not for x86-64
const WeightKernels* avx512_weight_kernels();  // nullptr when the build is not for x86-64

}  // namespace dsv3::kernels
