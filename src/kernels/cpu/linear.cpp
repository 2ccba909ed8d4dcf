// kernels::linear and the choice of instruction set for the weight kernels.
#include <cblas.h>
#if defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace dsv3::kernels {
namespace {

// Up to this many activation rows the register-blocked GEMV kernels (4 weight rows x up to 4
// activation rows per pass, the weights re-read from L1 for further passes) beat dequantising
// 64-row panels for OpenBLAS sgemm. bench_kernels (LinearRows vs PanelSgemmRows, 2816 x 1024, 2
// threads, AVX-512): 8 rows 0.47 vs 1.9 ms, 16 rows 0.86 vs 1.8 ms, 64 rows 3.1 vs 4.1 ms BF16;
// at 128 and 512 rows AVX-512 GEMV still led (4.2 vs 7.6, 21.6 vs 28.5 ms), and end to end
// (dsv3 bench, bench-1b, prompt 512) AVX-512 GEMV prefill ran at 659 tokens/s against 510 with
// sgemm, so AVX-512 uses it at every size; the AVX2 and scalar paths were not measured above 64
// rows and keep sgemm there.
constexpr std::int64_t kMaxGemvRows = 64;

// From this many activation rows on, oneDNN's GEMM beats the GEMV kernels (fast mode).
// bench_kernels GemmRows (FP32 oneDNN against AVX-512 GEMV, BF16 weights, 2 threads, Xeon model
// 207, a shared host): dense 2816 x 1024 at 24 rows 1.06 vs 1.02 ms, 32 rows 1.22 vs 1.29, 48 rows
// 1.47 vs 1.82, 512 rows 10.5 vs 20.8; expert 384 x 1024 at 24 rows 0.152 vs 0.139, 32 rows 0.190
// vs 0.190, 48 rows 0.226 vs 0.260.
constexpr std::int64_t kMinGemmRows = 32;
// A BF16 weight's few-row products in fast mode are AVX512-BF16 dot products (gemv_bf16_dot) on
// activations rounded as the BF16 GEMM rounds them, and those keep up with oneDNN's BF16 GEMM to
// more rows: bench_kernels GemmRows / HeadRows exact:0 (oneDNN from 32 rows) against exact:3 (dot
// products at any row count), 2-vCPU AMD EPYC, medians of 3: dense 2816 x 1024 at 32 rows 442 vs
// 374 us, 48 rows 572 vs 536, 64 rows 719 vs 690, 128 rows 1249 vs 1360; expert 384 x 1024 at 32
// rows 78.9 vs 74.8, 48 rows 98.9 vs 99.6, 64 rows 126 vs 135; output head 129280 x 1024 at 32
// rows 24.5 vs 17.0 ms, 48 rows 27.0 vs 25.9, 64 rows 32.4 vs 37.6. FP8 weights (FP32 GEMV below
// the GEMM) keep kMinGemmRows: at 48 rows the GEMV took 1.25 ms against oneDNN's 0.71. On AVX2
// (FP8 in quads, FP32 oneDNN) the two meet near it: GemmRows fp8:1 exact:1 against exact:0, 2-vCPU
// AMD EPYC (Zen 3), minima of 3: 2816 x 1024 at 32 rows 2.13 vs 2.29 ms, 48 rows 3.38 vs 2.78;
// 384 x 1024 at 32 rows 279 vs 296 us, 48 rows 398 vs 336.
constexpr std::int64_t kMinGemmRowsBf16Dot = 64;

std::int64_t max_gemv_rows() {
  return active_isa() == Isa::avx512 ? std::numeric_limits<std::int64_t>::max() : kMaxGemvRows;
}

// Output rows per task on the sgemm path: each task dequantises a [kPanelRows, cols] panel of the
// weight once and reuses it for every input row, so the weight stays in its compact dtype in memory.
constexpr std::int64_t kPanelRows = 64;

// Weight bytes per GEMV task: large enough that scheduling costs nothing next to streaming them,
// small enough that a 2-core machine still splits a 384 x 1024 matrix.
constexpr std::int64_t kGemvTaskBytes = 64 * 1024;

#if defined(__x86_64__) || defined(__i386__)
// clang 14's __builtin_cpu_supports does not know "f16c"; CPUID leaf 1, ECX bit 29 is that fact.
bool cpu_has_f16c() {
#if defined(__clang__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
#else
  return __builtin_cpu_supports("f16c");
#endif
}
#endif

Isa best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && cpu_has_f16c())
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
    return Isa::avx2;
#endif
  return Isa::scalar;
}

// -1: no override.
std::atomic<int> g_forced_isa{-1};

const WeightKernels& weight_kernels() {
  static const Isa best = best_isa();
  const int forced = g_forced_isa.load(std::memory_order_relaxed);
  switch (forced >= 0 ? static_cast<Isa>(forced) : best) {
    case Isa::avx512:
      return *avx512_weight_kernels();
    case Isa::avx2:
      return *avx2_weight_kernels();
    case Isa::scalar:
      break;
  }
  return scalar_weight_kernels();
}

void check_weight(const Matrix& weight) {
  switch (weight.dtype) {
    case DType::F32:
    case DType::BF16:
    case DType::F16:
      return;
    case DType::F8_E4M3:
      if (!weight.scales || static_cast<std::int64_t>(weight.scales->size()) <
                                ((weight.rows + weight.block_rows - 1) / weight.block_rows) * weight.scale_cols())
        fail("{}: FP8 weight without its block scales", weight.name);
      return;
    default:
      fail("{}: dtype {} is not a weight dtype", weight.name, dtype_name(weight.dtype));
  }
}

}  // namespace

bool fast_bf16_products() { return !exact_arithmetic() && gemm_uses_bf16(); }

bool few_row_bf16_dot_products() { return fast_bf16_products() && weight_kernels().gemv_bf16_dot != nullptr; }

std::atomic<std::int64_t> g_gemm_rows_for_testing{0};  // 0: the measured thresholds

// A test's threshold if one is set, else the measured one.
std::int64_t gemm_rows_or(std::int64_t measured) {
  const std::int64_t rows = g_gemm_rows_for_testing.load(std::memory_order_relaxed);
  return rows > 0 ? rows : measured;
}

std::int64_t min_gemm_rows() { return gemm_rows_or(kMinGemmRows); }

std::int64_t min_gemm_rows_bf16_dot() { return gemm_rows_or(kMinGemmRowsBf16Dot); }

void set_min_gemm_rows_for_testing(std::optional<std::int64_t> rows) {
  if (rows && *rows < 1) fail("min_gemm_rows: {} rows", *rows);
  g_gemm_rows_for_testing.store(rows.value_or(0), std::memory_order_relaxed);
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::scalar:
      break;
  }
  return "scalar";
}

bool isa_supported(Isa isa) {
  static const Isa best = best_isa();
  return static_cast<int>(isa) <= static_cast<int>(best);
}

Isa active_isa() {
  const int forced = g_forced_isa.load(std::memory_order_relaxed);
  static const Isa best = best_isa();
  return forced >= 0 ? static_cast<Isa>(forced) : best;
}

void set_isa_for_testing(std::optional<Isa> isa) {
  if (isa && !isa_supported(*isa)) fail("instruction set {} is not supported by this CPU", isa_name(*isa));
  g_forced_isa.store(isa ? static_cast<int>(*isa) : -1, std::memory_order_relaxed);
}

float exp_sum(float* values, std::int64_t count, float shift) { return weight_kernels().exp_sum(values, count, shift); }

void combine_rows(const Matrix& weight, std::int64_t first, std::int64_t count, const float* coeffs,
                  std::int64_t coeff_stride, std::int64_t rows, float* out, std::int64_t out_stride) {
  check_weight(weight);
  if (first < 0 || count < 0 || first + count > weight.rows)
    fail("{}: rows [{}, {}) outside [0, {})", weight.name, first, first + count, weight.rows);
  const WeightKernels& kernels = weight_kernels();
  if (kernels.combine_rows && (weight.dtype != DType::F8_E4M3 || weight.block_cols % kCombineFp8BlockMultiple == 0))
    return kernels.combine_rows(weight, first, count, coeffs, coeff_stride, rows, out, out_stride);
  // Elsewhere, or FP8 blocks that split a kernel's vector: row by row, dequantised into a per-thread
  // buffer, in the same order of i.
  std::vector<float>& row = thread_buffer(static_cast<std::size_t>(weight.cols));
  for (std::int64_t m = 0; m < rows; ++m) std::fill_n(out + m * out_stride, weight.cols, 0.0f);
  for (std::int64_t i = 0; i < count; ++i) {
    kernels.dequantize(weight, first + i, first + i + 1, row.data());
    for (std::int64_t m = 0; m < rows; ++m) {
      const float factor = coeffs[m * coeff_stride + i];
      float* target = out + m * out_stride;
      for (std::int64_t c = 0; c < weight.cols; ++c) target[c] += factor * row[static_cast<std::size_t>(c)];
    }
  }
}

void dequantize_rows(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out) {
  check_weight(weight);
  weight_kernels().dequantize(weight, begin, end, out);
}

namespace {

// Fast mode's few-row products with a BF16 weight, where the GEMM takes BF16 inputs: the
// activations rounded to BF16 as the GEMM rounds them, and AVX512-BF16's dot products, twice the
// multiplications an instruction of FP32 FMAs with the weights widened. A batch's decode step is
// compute-bound there: `dsv3 bench --batch 16 --profile`, bench-1b, 2-vCPU AMD EPYC: a step 76.8 ->
// 57.8 ms, the output head 18.8 -> 10.5 ms, the 16-row linears about halved. One activation row
// reads the weights as fast either way; it rounds the same so that a row's logits do not depend on
// its batch, and a prompt's prefill through the GEMM rounds as its decode steps do (the fixture's
// error is the GEMM's: test_fast_arithmetic.cpp).
bool bf16_dot_products(const Matrix& weight, const WeightKernels& kernels) {
  return weight.dtype == DType::BF16 && kernels.gemv_bf16_dot && fast_bf16_products();
}

// BF16 activations of this many elements go on the calling thread's stack (256 KiB).
constexpr std::int64_t kStackBf16 = 2 * kStackScratchFloats;

// Room for `count` values of T: `stack` (kStackBf16 BF16 values' bytes) when they fit, else this
// thread's buffer.
template <typename T>
T* stack_or_thread_buffer(T* stack, std::int64_t count) {
  const auto bytes = static_cast<std::size_t>(count) * sizeof(T);
  if (bytes <= kStackBf16 * sizeof(std::uint16_t)) return stack;
  return reinterpret_cast<T*>(thread_buffer((bytes + sizeof(float) - 1) / sizeof(float)).data());
}

// `rows` rows of x rounded to BF16 into `stack` (kStackBf16 values) when they fit, else into this
// thread's buffer.
const std::uint16_t* rounded_rows(const float* x, std::int64_t rows, std::int64_t cols, std::uint16_t* stack) {
  std::uint16_t* out = stack_or_thread_buffer(stack, rows * cols);
  round_to_bf16(x, rows * cols, out);
  return out;
}

// `rows` rows of x as gemv_pair_tiles reads them (pair_tile_activations) into `stack`
// (kStackBf16 / 2 dwords) when they fit, else into this thread's buffer.
const std::uint32_t* pair_tile_rows(const float* x, std::int64_t rows, std::int64_t cols, std::uint32_t* stack) {
  std::uint32_t* out = stack_or_thread_buffer(stack, rows * pair_tile_pairs(cols));
  pair_tile_activations(x, rows, cols, out);
  return out;
}

// Whether a BF16 weight's dot products read its pair tiles.
bool reads_pair_tiles(const Matrix& weight, const WeightKernels& kernels) {
  return kernels.gemv_pair_tiles && weight.packed_copy();
}

// On the calling thread (its own stack frame: linear_rows' BF16 scratch is another 256 KiB).
__attribute__((noinline)) void gemv_pair_tiles_here(const float* x, std::int64_t rows, const Matrix& weight,
                                                    std::int64_t n_begin, std::int64_t n_end, float* y,
                                                    const WeightKernels& kernels) {
  alignas(64) std::uint32_t stack[kStackBf16 / 2];
  kernels.gemv_pair_tiles(pair_tile_rows(x, rows, weight.cols, stack), rows, weight, n_begin, n_end, y);
}

}  // namespace

void pair_tile_activations(const float* x, std::int64_t rows, std::int64_t cols, std::uint32_t* out) {
  pair_tile_activations(x, rows, cols, cols, out);
}

void pair_tile_activations(const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::uint32_t* out) {
  // (vcvtne2ps2bf16 is AVX512-BF16's; the AVX-512 kernels run on CPUs without it too.)
  if (const auto vector = weight_kernels().pair_tile_activations; vector && gemm_bf16_supported())
    return vector(x, rows, cols, ld, out);
  const std::int64_t pairs = pair_tile_pairs(cols);
  constexpr std::int64_t kPiece = 2048;  // columns rounded at a time: even, so pairs stay whole
  std::uint16_t piece[kPiece];
  for (std::int64_t m = 0; m < rows; ++m) {
    const std::int64_t group = m / kPairTileRows;
    const std::int64_t group_rows = std::min(kPairTileRows, rows - group * kPairTileRows);
    std::uint32_t* to = out + group * kPairTileRows * pairs + m % kPairTileRows;
    for (std::int64_t c0 = 0; c0 < cols; c0 += kPiece) {
      const std::int64_t n = std::min(kPiece, cols - c0);
      round_to_bf16(x + m * ld + c0, n, piece);
      for (std::int64_t c = 0; c < n; c += 2) {
        const std::uint32_t low = piece[c], high = c + 1 < n ? piece[c + 1] : 0u;
        to[(c0 + c) / 2 * group_rows] = low | high << 16;
      }
    }
  }
}

void* kernel_memory(std::size_t bytes) {
  constexpr std::size_t kAlignment = 64, kHugePage = 2u << 20;
  const std::size_t alignment = bytes >= kHugePage ? kHugePage : kAlignment;
  const std::size_t reserved = (std::max<std::size_t>(bytes, 1) + alignment - 1) / alignment * alignment;
  void* memory = std::aligned_alloc(alignment, reserved);
#if defined(MADV_HUGEPAGE)
  if (memory && alignment == kHugePage) madvise(memory, reserved, MADV_HUGEPAGE);
#endif
  return memory;
}

namespace {

// Memory for a packed copy of `weight` (kernel_memory's: huge pages from 2 MiB), failing by name.
std::shared_ptr<void> packed_memory(const Matrix& weight, std::size_t bytes, std::string_view what) {
  void* memory = kernel_memory(bytes);
  if (!memory) fail("{}: no memory for its {} MiB of {}", weight.name, bytes >> 20, what);
  return {memory, std::free};
}

// Gives `weight` the packed copy in `order` that `owner` holds (`bytes` of it); returns bytes.
std::size_t attach_packed(Matrix& weight, PackedOrder order, std::shared_ptr<void> owner, std::size_t bytes) {
  auto packed = std::make_shared<PackedWeight>();
  packed->order = order;
  packed->source = weight.data;
  packed->rows = weight.rows;
  packed->cols = weight.cols;
  packed->data = static_cast<const std::uint32_t*>(owner.get());
  packed->bytes = bytes;
  packed->owner = std::move(owner);
  weight.packed = std::move(packed);
  return bytes;
}

}  // namespace

std::size_t pair_tile_copy_bytes(std::int64_t rows, std::int64_t cols) {
  const std::int64_t tiles = (rows + kPairTileRows - 1) / kPairTileRows;
  return static_cast<std::size_t>(tiles * pair_tile_pairs(cols) * kPairTileRows) * sizeof(std::uint32_t);
}

std::size_t pack_for_few_rows(Matrix& weight) {
  if (weight.dtype != DType::BF16 || weight.empty() || !few_row_bf16_dot_products() ||
      !weight_kernels().gemv_pair_tiles)
    return 0;
  if (weight.packed_copy()) return 0;
  const std::int64_t tiles = (weight.rows + kPairTileRows - 1) / kPairTileRows, pairs = pair_tile_pairs(weight.cols);
  const std::size_t bytes = pair_tile_copy_bytes(weight.rows, weight.cols);
  // In huge pages: the tiles are streamed whole every decode step.
  std::shared_ptr<void> owner = packed_memory(weight, bytes, "pair tiles");
  auto* data = static_cast<std::uint32_t*>(owner.get());
  const Matrix& w = weight;
  // 16 pairs of the tile's 16 rows at a time: read as 16 short row pieces, written as one 1 KiB run.
  ThreadPool::global().parallel_for(tiles, 16, [&](std::int64_t first, std::int64_t last) {
    std::uint32_t piece[kPairTileRows][kPairTileRows];
    for (std::int64_t t = first; t < last; ++t) {
      std::uint32_t* tile = data + t * pairs * kPairTileRows;
      for (std::int64_t p0 = 0; p0 < pairs; p0 += kPairTileRows) {
        const std::int64_t count = std::min(kPairTileRows, pairs - p0);
        for (std::int64_t j = 0; j < kPairTileRows; ++j) {
          std::fill_n(piece[j], kPairTileRows, 0u);
          const std::int64_t row = t * kPairTileRows + j;
          if (row >= w.rows) continue;
          // Whole pairs, then an odd last column alone (its pair's high half stays 0).
          const std::int64_t columns = std::min<std::int64_t>(2 * count, w.cols - 2 * p0);
          std::memcpy(piece[j], w.data + (row * w.cols + 2 * p0) * 2, static_cast<std::size_t>(columns) * 2);
        }
        for (std::int64_t p = 0; p < count; ++p)
          for (std::int64_t j = 0; j < kPairTileRows; ++j) tile[(p0 + p) * kPairTileRows + j] = piece[j][p];
      }
    }
  });
  return attach_packed(weight, PackedOrder::pair_tiles, std::move(owner), bytes);
}

namespace {

// One head's dwords of absorb tiles: W_UK[h]ᵀ's, then W_UV[h]'s.
struct AbsorbLayout {
  std::int64_t keys, values;
};
AbsorbLayout absorb_layout(std::int64_t nope, std::int64_t v, std::int64_t kv_lora) {
  const auto tiles = [](std::int64_t rows) { return (rows + kPairTileRows - 1) / kPairTileRows * kPairTileRows; };
  return {tiles(kv_lora) * pair_tile_pairs(nope), tiles(v) * pair_tile_pairs(kv_lora)};
}

}  // namespace

std::size_t absorb_tile_copy_bytes(std::int64_t rows, std::int64_t cols, std::int64_t nope, std::int64_t v) {
  const AbsorbLayout layout = absorb_layout(nope, v, cols);
  return static_cast<std::size_t>(rows / (nope + v) * (layout.keys + layout.values)) * sizeof(std::uint32_t);
}

std::size_t pack_for_absorb(Matrix& weight, std::int64_t nope, std::int64_t v) {
  if (weight.dtype != DType::BF16 || weight.empty() || !few_row_bf16_dot_products() ||
      !weight_kernels().pair_tile_products)
    return 0;
  if (nope <= 0 || v <= 0 || weight.rows % (nope + v) != 0)
    fail("{}: {} rows are not heads of {} + {} rows", weight.name, weight.rows, nope, v);
  if (weight.packed_copy(PackedOrder::absorb_tiles)) return 0;
  const std::int64_t heads = weight.rows / (nope + v), kv_lora = weight.cols;
  const AbsorbLayout layout = absorb_layout(nope, v, kv_lora);
  const std::size_t bytes = absorb_tile_copy_bytes(weight.rows, kv_lora, nope, v);
  std::shared_ptr<void> owner = packed_memory(weight, bytes, "absorb tiles");
  auto* data = static_cast<std::uint32_t*>(owner.get());
  const Matrix& w = weight;
  // Element (row, col) of the weight, 0 outside it (the tiles' padding).
  const auto at = [&](std::int64_t row, std::int64_t col, std::int64_t rows_end) -> std::uint32_t {
    if (row >= rows_end || col >= kv_lora) return 0;
    std::uint16_t bits;
    std::memcpy(&bits, w.data + (row * w.cols + col) * 2, sizeof bits);
    return bits;
  };
  ThreadPool::global().parallel_for(heads, 1, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t h = first; h < last; ++h) {
      std::uint32_t* keys = data + h * (layout.keys + layout.values);
      std::uint32_t* values = keys + layout.keys;
      const std::int64_t k0 = h * (nope + v), v0 = k0 + nope;
      // W_UK[h]ᵀ: output c (a latent column), input pair (nope rows 2p, 2p + 1).
      const std::int64_t key_pairs = pair_tile_pairs(nope), value_pairs = pair_tile_pairs(kv_lora);
      for (std::int64_t c = 0; c < layout.keys / key_pairs; ++c)
        for (std::int64_t p = 0; p < key_pairs; ++p)
          keys[(c / kPairTileRows * key_pairs + p) * kPairTileRows + c % kPairTileRows] =
              at(k0 + 2 * p, c, v0) | at(k0 + 2 * p + 1, c, v0) << 16;
      // W_UV[h]: output j (a value row), input pair (latent columns 2p, 2p + 1).
      for (std::int64_t j = 0; j < layout.values / value_pairs; ++j)
        for (std::int64_t p = 0; p < value_pairs; ++p)
          values[(j / kPairTileRows * value_pairs + p) * kPairTileRows + j % kPairTileRows] =
              at(v0 + j, 2 * p, v0 + v) | at(v0 + j, 2 * p + 1, v0 + v) << 16;
    }
  });
  return attach_packed(weight, PackedOrder::absorb_tiles, std::move(owner), bytes);
}

AbsorbTileViews absorb_tile_views(const PackedWeight& tiles, std::int64_t head, std::int64_t nope, std::int64_t v) {
  const std::int64_t kv_lora = tiles.cols;
  const AbsorbLayout layout = absorb_layout(nope, v, kv_lora);
  AbsorbTileViews views;
  views.keys.rows = kv_lora;
  views.keys.cols = nope;
  views.keys.data = tiles.data + head * (layout.keys + layout.values);
  views.values.rows = v;
  views.values.cols = kv_lora;
  views.values.data = views.keys.data + layout.keys;
  return views;
}

void pair_tile_products(const std::uint32_t* x, std::int64_t rows, const PackedWeight& tiles, float* y, std::int64_t ld) {
  const WeightKernels& kernels = weight_kernels();
  if (!kernels.pair_tile_products) fail("pair-tile products on the {} kernels", isa_name(active_isa()));
  kernels.pair_tile_products(x, rows, tiles, y, ld);
}

void linear_rows(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin, std::int64_t n_end,
                 float* y) {
  check_weight(weight);
  if (n_begin < 0 || n_end > weight.rows || n_begin > n_end)
    fail("{}: output rows [{}, {}) outside [0, {})", weight.name, n_begin, n_end, weight.rows);
  if (rows == 0 || n_begin == n_end) return;
  const WeightKernels& kernels = weight_kernels();
  if (bf16_dot_products(weight, kernels)) {
    if (reads_pair_tiles(weight, kernels)) return gemv_pair_tiles_here(x, rows, weight, n_begin, n_end, y, kernels);
    alignas(64) std::uint16_t stack[kStackBf16];
    return kernels.gemv_bf16_dot(rounded_rows(x, rows, weight.cols, stack), rows, weight, n_begin, n_end, y);
  }
  kernels.gemv(x, rows, weight, n_begin, n_end, y);
}

namespace {
// The activations rounded to BF16 once on this thread's stack, then the tasks.
__attribute__((noinline)) void gemv_bf16_dot_tasks(const float* x, std::int64_t rows, const Matrix& weight, float* y,
                                                   std::int64_t grain, const WeightKernels& kernels) {
  alignas(64) std::uint16_t stack[kStackBf16];
  const std::uint16_t* rounded = rounded_rows(x, rows, weight.cols, stack);
  ThreadPool::global().parallel_for(weight.rows, grain, [&](std::int64_t begin, std::int64_t end) {
    kernels.gemv_bf16_dot(rounded, rows, weight, begin, end, y);
  });
}

// The same over a weight's pair tiles, handed out four tiles a task (the four one activation row
// reads side by side).
constexpr std::int64_t kPairTileTaskRows = 4 * kPairTileRows;
__attribute__((noinline)) void gemv_pair_tile_tasks(const float* x, std::int64_t rows, const Matrix& weight, float* y,
                                                    const WeightKernels& kernels) {
  alignas(64) std::uint32_t stack[kStackBf16 / 2];
  const std::uint32_t* paired = pair_tile_rows(x, rows, weight.cols, stack);
  const std::int64_t tasks = (weight.rows + kPairTileTaskRows - 1) / kPairTileTaskRows;
  ThreadPool::global().parallel_for(tasks, 1, [&](std::int64_t first, std::int64_t last) {
    kernels.gemv_pair_tiles(paired, rows, weight, first * kPairTileTaskRows,
                            std::min(weight.rows, last * kPairTileTaskRows), y);
  });
}

// The BF16 activations paired once on this thread's stack, then the tasks: each task pairing every
// row itself cost a 16-row q_a_proj (8 tasks of 48 weight rows) about a tenth of its time.
__attribute__((noinline)) void gemv_paired_tasks(const float* x, std::int64_t rows, const Matrix& weight, float* y,
                                                 std::int64_t grain, const WeightKernels& kernels) {
  alignas(64) float paired[kStackScratchFloats];
  kernels.pair_rows(x, rows, weight.cols, paired);
  ThreadPool::global().parallel_for(weight.rows, grain, [&](std::int64_t begin, std::int64_t end) {
    kernels.gemv_paired_bf16(paired, rows, weight, begin, end, y);
  });
}
}  // namespace

bool linear_through_gemm(std::int64_t rows, const Matrix& weight) {
  if (exact_arithmetic()) return false;
  return rows >= (bf16_dot_products(weight, weight_kernels()) ? min_gemm_rows_bf16_dot() : min_gemm_rows());
}

void linear(const float* x, std::int64_t rows, const Matrix& weight, float* y) {
  const std::int64_t out_features = weight.rows;
  const std::int64_t in_features = weight.cols;
  if (rows == 0 || out_features == 0) return;
  check_weight(weight);
  if (in_features == 0) {
    std::fill(y, y + rows * out_features, 0.0f);
    return;
  }
  const WeightKernels& kernels = weight_kernels();
  if (linear_through_gemm(rows, weight)) return linear_gemm(x, rows, weight, y, kernels);
  const bool dot = bf16_dot_products(weight, kernels);
  if (rows <= max_gemv_rows()) {
    const std::int64_t row_bytes = static_cast<std::int64_t>(in_features * dtype_size(weight.dtype));
    const std::int64_t grain = std::max<std::int64_t>(4, kGemvTaskBytes / row_bytes);
    if (dot && reads_pair_tiles(weight, kernels)) return gemv_pair_tile_tasks(x, rows, weight, y, kernels);
    if (dot) return gemv_bf16_dot_tasks(x, rows, weight, y, grain, kernels);
    if (weight.dtype == DType::BF16 && kernels.gemv_paired_bf16 && rows * in_features <= kStackScratchFloats)
      return gemv_paired_tasks(x, rows, weight, y, grain, kernels);
    ThreadPool::global().parallel_for(out_features, grain, [&](std::int64_t begin, std::int64_t end) {
      kernels.gemv(x, rows, weight, begin, end, y);
    });
    return;
  }
  use_single_threaded_blas();
  if (weight.dtype == DType::F32 && (reinterpret_cast<std::uintptr_t>(weight.data) % alignof(float)) == 0) {
    const auto* w = reinterpret_cast<const float*>(weight.data);
    ThreadPool::global().parallel_for(out_features, kPanelRows, [&](std::int64_t begin, std::int64_t end) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(end - begin),
                  static_cast<int>(in_features), 1.0f, x, static_cast<int>(in_features), w + begin * in_features,
                  static_cast<int>(in_features), 0.0f, y + begin, static_cast<int>(out_features));
    });
    return;
  }
  const std::int64_t panels = (out_features + kPanelRows - 1) / kPanelRows;
  ThreadPool::global().parallel_for(panels, 1, [&](std::int64_t first, std::int64_t last) {
    std::vector<float>& panel = thread_buffer(static_cast<std::size_t>(kPanelRows * in_features));
    for (std::int64_t p = first; p < last; ++p) {
      const std::int64_t begin = p * kPanelRows;
      const std::int64_t end = std::min(out_features, begin + kPanelRows);
      kernels.dequantize(weight, begin, end, panel.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(end - begin),
                  static_cast<int>(in_features), 1.0f, x, static_cast<int>(in_features), panel.data(),
                  static_cast<int>(in_features), 0.0f, y + begin, static_cast<int>(out_features));
    }
  });
}

}  // namespace dsv3::kernels
