// The CPU backend: every op of kernels/ops.h on host memory, over the SIMD weight kernels
// (linear*.cpp), OpenBLAS for the float32 products of attention, and the thread pool.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace dsv3::kernels {
namespace {

void check_rows(std::string_view op, Tensor a, Tensor b) {
  if (a.rows != b.rows) fail("{}: {} rows against {}", op, a.rows, b.rows);
}
void check_shape(std::string_view op, Tensor a, Tensor b) {
  if (a.rows != b.rows || a.cols != b.cols) fail("{}: [{}, {}] against [{}, {}]", op, a.rows, a.cols, b.rows, b.cols);
}
// kv_b_proj's absorb tiles where fast mode's BF16 products read them (pack_for_absorb), else nullptr.
const PackedWeight* absorb_tiles(const Matrix& kv_b_proj) {
  return fast_bf16_products() ? kv_b_proj.packed_copy(PackedOrder::absorb_tiles) : nullptr;
}

// Fast mode's absorbed products: each head's task rounds its rows of x (head h's first x.cols
// values at x.data + h * x_step, rows x.stride apart) to BF16 pairs in place of a copy, multiplies
// them by its `part` of kv_b_proj's absorb tiles into y + h * y_step (rows ld apart), then runs
// also(h).
template <typename Also>
void absorb_products(const PackedWeight& tiles, PackedWeight AbsorbTileViews::*part, const MlaShape& d, Tensor x,
                     std::int64_t x_step, float* y, std::int64_t ld, std::int64_t y_step, Workspace& workspace,
                     Also&& also) {
  const std::int64_t pairs = pair_tile_pairs(x.cols);
  std::span<std::uint32_t> paired = workspace.array<std::uint32_t>(d.heads * x.rows * pairs);
  ThreadPool::global().parallel_for(d.heads, 1, [&](std::int64_t h0, std::int64_t h1) {
    for (std::int64_t h = h0; h < h1; ++h) {
      std::uint32_t* rows = paired.data() + h * x.rows * pairs;
      pair_tile_activations(x.data + h * x_step, x.rows, x.cols, x.stride, rows);
      pair_tile_products(rows, x.rows, absorb_tile_views(tiles, h, d.nope, d.v).*part, y + h * y_step, ld);
      also(h);
    }
  });
}

void check_contiguous(std::string_view op, Tensor t) {
  if (!t.contiguous()) fail("{}: needs a contiguous tensor, got [{}, {}] with stride {}", op, t.rows, t.cols, t.stride);
}

std::byte* page_row(const LatentPages& pages, std::int64_t position) {
  const std::int64_t block = pages.blocks[static_cast<std::size_t>(position / pages.block_tokens)];
  const std::int64_t row = block * pages.block_stride_rows + pages.layer_offset_rows + position % pages.block_tokens;
  return pages.storage + static_cast<std::size_t>(row * pages.width) * dtype_size(pages.dtype);
}

void check_pages(std::string_view op, const LatentPages& pages, std::int64_t end, std::int64_t width) {
  if (pages.width != width) fail("{}: rows of {} values for a cache of width {}", op, width, pages.width);
  if (end > static_cast<std::int64_t>(pages.blocks.size()) * pages.block_tokens)
    fail("{}: position {} beyond the {} tokens the sequence's pages hold", op, end - 1,
         static_cast<std::int64_t>(pages.blocks.size()) * pages.block_tokens);
}

// Below this many rows, an expert running on one core streams its 2-byte (BF16) or F32 weights
// through the GEMV kernels, whichever arithmetic mode: bench_kernels MoeExperts (512 tokens x 6
// of 64 experts, ~48 rows each, 2 threads, Xeon model 207) took 42.0 ms through them against 45.1
// through oneDNN (which at 192 rows each wins, 140 against 171 ms). FP8 weights were slower
// through the GEMV kernels (59.8 against 44.6 ms) and keep linear's choice.
constexpr std::int64_t kExpertGemvRows = 64;

// The row-wise ops (norms, elementwise products, copies) run over the pool in tasks of at least
// this many values times the op's weight below, so that an op as small as one row's stays on the
// calling thread, where waking the pool would cost more than it saves, while a batch's 16 rows
// split: bench-1b, `dsv3 bench --batch 1,16 --profile`, 2-vCPU AMD EPYC, with 4x these sizes (each
// such op of a 16-row step inline) moe_combine took 0.57 ms a step, rmsnorm 0.47, swiglu 0.21,
// rope 0.20; split, 0.32-0.35, 0.38-0.42, 0.12 and 0.09-0.10. A row's result never depends on
// which task computes it.
constexpr std::int64_t kCopyValuesPerTask = std::int64_t{1} << 13;  // a copy, an add: memory-bound
constexpr std::int64_t kNormValuesPerTask = std::int64_t{1} << 12;  // rmsnorm: two passes
constexpr std::int64_t kSiluValuesPerTask = std::int64_t{1} << 12;  // swiglu: an exp and a division

// body(first, last) over [0, rows) in tasks of at least `min_values` values of rows of `cols`.
template <typename Body>
void for_rows(std::int64_t rows, std::int64_t cols, std::int64_t min_values, Body&& body) {
  // The pool runs a loop of no more than `grain` rows on the calling thread, waking nobody.
  ThreadPool::global().parallel_for(rows, std::max<std::int64_t>(1, min_values / std::max<std::int64_t>(cols, 1)), body);
}

// moe_combine's map from route to dispatched row, kept per calling thread so that it is allocated
// once, at the largest step's size.
std::vector<std::int64_t>& combine_row_map() {
  thread_local std::vector<std::int64_t> rows;
  return rows;
}

// A SwiGLU MLP on the calling thread's share: linear parallelises itself unless it runs inside a
// parallel task (nested loops run inline).
void swiglu_mlp(const Backend& backend, const MlpWeights& w, Tensor x, Tensor gate, Tensor up, Tensor act, Tensor out) {
  backend.linear(x, w.gate_proj, gate);
  backend.linear(x, w.up_proj, up);
  backend.swiglu(gate, up, act);
  backend.linear(act, w.down_proj, out);
}

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  // kernel_memory's: from 2 MiB (the latent cache, the workspaces' blocks) 2 MiB aligned and
  // advised into huge pages, as the weights are (io/safetensors.cpp): the cache's pages and a
  // step's activations otherwise cost a TLB miss every 4 KiB, each a page walk that the weights'
  // streaming has pushed out of the caches. bench-1b, 2-vCPU AMD EPYC, `dsv3 bench --batch 1,16`,
  // 3 runs alternated with the 64-byte version: batch 16 296-304 tokens/s against 274-279 (latent
  // attention 7.7-8.0 ms a step against 8.4-10.4 in profiled runs), prefill 1029-1133 against
  // 763-840, batch 1 the same.
  void* allocate(std::size_t bytes) const override {
    void* memory = kernel_memory(bytes);
    if (!memory) throw std::bad_alloc();
    return memory;
  }
  void release(void* data) const override { std::free(data); }

  void read(Tensor src, std::span<float> dst) const override {
    if (static_cast<std::int64_t>(dst.size()) != src.size())
      fail("read: [{}, {}] into {} values", src.rows, src.cols, dst.size());
    for (std::int64_t r = 0; r < src.rows; ++r) std::copy_n(src.row(r), src.cols, dst.data() + r * src.cols);
  }

  std::size_t prepare_decode_weight(Matrix& weight) const override { return pack_for_few_rows(weight); }
  std::size_t prepare_absorb_weight(Matrix& kv_b_proj, const MlaShape& d) const override {
    return pack_for_absorb(kv_b_proj, d.nope, d.v);
  }

  void embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const override {
    if (out.rows != static_cast<std::int64_t>(ids.size()) || out.cols != table.cols)
      fail("embedding: {} ids of {} values into [{}, {}]", ids.size(), table.cols, out.rows, out.cols);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] == kZeroRow) {
        std::fill_n(out.row(static_cast<std::int64_t>(i)), out.cols, 0.0f);
        continue;
      }
      if (ids[i] < 0 || ids[i] >= table.rows)
        fail("token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, table.rows);
      dequantize_rows(table, ids[i], ids[i] + 1, out.row(static_cast<std::int64_t>(i)));
    }
  }

  void linear(Tensor x, const Matrix& weight, Tensor y) const override {
    check_rows("linear", x, y);
    if (x.cols != weight.cols || y.cols != weight.rows)
      fail("{}: linear of [{}, {}] into [{}, {}] with a [{}, {}] weight", weight.name, x.rows, x.cols, y.rows, y.cols,
           weight.rows, weight.cols);
    check_contiguous("linear", x);
    check_contiguous("linear", y);
    if (weight.fp8_input_tiles) {
      thread_local std::vector<float> rounded;  // per worker: experts run their linears in parallel
      rounded.resize(static_cast<std::size_t>(x.size()));
      fp8_quantize_dequantize(x.data, x.rows, x.cols, 1, kFp8Tile, rounded.data());
      kernels::linear(rounded.data(), x.rows, weight, y.data);
      return;
    }
    kernels::linear(x.data, x.rows, weight, y.data);
  }

  void rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const override {
    check_shape("rmsnorm", x, out);
    if (static_cast<std::int64_t>(weight.size()) != x.cols)
      fail("rmsnorm: a weight of {} for rows of {}", weight.size(), x.cols);
    for_rows(x.rows, x.cols, kNormValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r) kernels::rmsnorm(x.row(r), 1, x.cols, weight.data(), eps, out.row(r));
    });
  }

  void rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
            const RopeParams& params) const override {
    const std::int64_t half = static_cast<std::int64_t>(params.inverse_frequencies.size());
    if (x.cols != 2 * half) fail("rope: rows of {} for {} frequencies", x.cols, half);
    if (rows_per_position <= 0 || x.rows != static_cast<std::int64_t>(positions.size()) * rows_per_position)
      fail("rope: {} rows for {} positions of {} rows", x.rows, positions.size(), rows_per_position);
    // Over positions, each task working out the cos and sin of its own positions once for all
    // of a position's rows.
    const auto count = static_cast<std::int64_t>(positions.size());
    const std::int64_t min_positions =
        std::max<std::int64_t>(1, kNormValuesPerTask / std::max<std::int64_t>(1, rows_per_position * x.cols + 4 * half));
    for_rows(count, 1, min_positions, [&](std::int64_t first, std::int64_t last) {
      thread_local std::vector<float> cos_values, sin_values;
      cos_values.resize(static_cast<std::size_t>(half));
      sin_values.resize(static_cast<std::size_t>(half));
      std::int64_t cached_position = std::numeric_limits<std::int64_t>::min();
      for (std::int64_t p = first; p < last; ++p) {
        const std::int64_t position = positions[static_cast<std::size_t>(p)];
        if (position != cached_position) {
          for (std::int64_t i = 0; i < half; ++i) {
            const double angle = static_cast<double>(position) * params.inverse_frequencies[i];
            cos_values[i] = static_cast<float>(std::cos(angle) * params.attention_factor);
            sin_values[i] = static_cast<float>(std::sin(angle) * params.attention_factor);
          }
          cached_position = position;
        }
        for (std::int64_t r = p * rows_per_position; r < (p + 1) * rows_per_position; ++r) {
          float* row = x.row(r);
          for (std::int64_t i = 0; i < half; ++i) {
            float& a = params.interleaved ? row[2 * i] : row[i];
            float& b = params.interleaved ? row[2 * i + 1] : row[i + half];
            const float a0 = a, b0 = b;
            a = a0 * cos_values[i] - b0 * sin_values[i];
            b = b0 * cos_values[i] + a0 * sin_values[i];
          }
        }
      }
    });
  }

  void add(Tensor x, Tensor y) const override {
    check_shape("add", x, y);
    for_rows(x.rows, x.cols, kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r) {
        float* target = x.row(r);
        const float* source = y.row(r);
        for (std::int64_t i = 0; i < x.cols; ++i) target[i] += source[i];
      }
    });
  }

  void fill(Tensor x, float value) const override {
    for (std::int64_t r = 0; r < x.rows; ++r) std::fill_n(x.row(r), x.cols, value);
  }

  void swiglu(Tensor gate, Tensor up, Tensor out) const override {
    check_shape("swiglu", gate, up);
    check_shape("swiglu", gate, out);
    for_rows(gate.rows, gate.cols, kSiluValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r) silu_mul(gate.row(r), up.row(r), gate.cols, out.row(r));
    });
  }

  void copy_rows(Tensor src, Tensor dst, std::int64_t repeat) const override {
    if (repeat <= 0 || dst.rows != src.rows * repeat || dst.cols != src.cols)
      fail("copy_rows: [{}, {}] repeated {} times into [{}, {}]", src.rows, src.cols, repeat, dst.rows, dst.cols);
    for_rows(dst.rows, dst.cols, kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r)
        std::memcpy(dst.row(r), src.row(r / repeat), static_cast<std::size_t>(src.cols) * sizeof(float));
    });
  }

  void gather_rows(Tensor src, std::span<const std::int64_t> rows, Tensor dst) const override {
    if (dst.rows != static_cast<std::int64_t>(rows.size()) || dst.cols != src.cols)
      fail("gather_rows: {} rows of {} into [{}, {}]", rows.size(), src.cols, dst.rows, dst.cols);
    for (const std::int64_t row : rows)
      if (row < 0 || row >= src.rows) fail("gather_rows: row {} outside [0, {})", row, src.rows);
    for_rows(dst.rows, dst.cols, kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t i = first; i < last; ++i)
        std::memcpy(dst.row(i), src.row(rows[static_cast<std::size_t>(i)]),
                    static_cast<std::size_t>(src.cols) * sizeof(float));
    });
  }

  void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape, float scale,
                        float* out) const override {
    kernels::attention_causal(q, k, v, shape, scale, out);
  }

  void cache_store(const LatentPages& pages, std::int64_t first_position, Tensor rows) const override {
    check_pages("cache_store", pages, first_position + rows.rows, rows.cols);
    for_rows(rows.rows, rows.cols, kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r) {
        std::byte* target = page_row(pages, first_position + r);
        const float* row = rows.row(r);
        if (pages.dtype == DType::F32) {
          std::memcpy(target, row, static_cast<std::size_t>(rows.cols) * sizeof(float));
        } else {
          auto* bits = reinterpret_cast<std::uint16_t*>(target);
          for (std::int64_t i = 0; i < rows.cols; ++i) bits[i] = float_to_bf16(row[i]);
        }
      }
    });
  }

  void cache_load(const LatentPages& pages, Tensor out) const override {
    check_pages("cache_load", pages, out.rows, out.cols);
    for_rows(out.rows, out.cols, kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t r = first; r < last; ++r) {
        const std::byte* source = page_row(pages, r);
        float* row = out.row(r);
        if (pages.dtype == DType::F32) {
          std::memcpy(row, source, static_cast<std::size_t>(out.cols) * sizeof(float));
        } else {
          const auto* bits = reinterpret_cast<const std::uint16_t*>(source);
          for (std::int64_t i = 0; i < out.cols; ++i) row[i] = bf16_to_float(bits[i]);
        }
      }
    });
  }

  void mla_absorb_query(Tensor q, const Matrix& kv_b_proj, const MlaShape& d, Tensor q_latent,
                        Workspace& workspace) const override {
    const std::int64_t rows = q.rows, kv_dim = d.nope + d.v;
    if (q.cols != d.heads * d.qk() || q_latent.rows != rows || q_latent.cols != d.heads * d.width())
      fail("mla_absorb_query: q [{}, {}] into [{}, {}] for {} heads", q.rows, q.cols, q_latent.rows, q_latent.cols,
           d.heads);
    check_contiguous("mla_absorb_query", q_latent);
    if (kv_b_proj.rows != d.heads * kv_dim || kv_b_proj.cols != d.kv_lora)
      fail("{}: [{}, {}] is not [{}, {}]", kv_b_proj.name, kv_b_proj.rows, kv_b_proj.cols, d.heads * kv_dim, d.kv_lora);
    Workspace::Scope scope(workspace);
    if (const PackedWeight* tiles = absorb_tiles(kv_b_proj)) {
      // Fast mode: W_UK[h]ᵀ from its tiles; each head's task also copies its q_rope.
      absorb_products(*tiles, &AbsorbTileViews::keys, d, {q.data, rows, d.nope, q.stride}, d.qk(), q_latent.data,
                      q_latent.stride, d.width(), workspace, [&](std::int64_t h) {
                        for (std::int64_t r = 0; r < rows; ++r)
                          std::copy_n(q.row(r) + h * d.qk() + d.nope, d.rope,
                                      q_latent.row(r) + h * d.width() + d.kv_lora);
                      });
      return;
    }
    // q_nope per head, [heads, rows, nope], so each head's product reads one block.
    Tensor q_nope = workspace.tensor(d.heads * rows, d.nope);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const float* q_row = q.row(r) + h * d.qk();
        std::copy_n(q_row, d.nope, q_nope.row(h * rows + r));
        std::copy_n(q_row + d.nope, d.rope, q_latent.row(r) + h * d.width() + d.kv_lora);
      }
    // Head h: q_latent = W_UK[h]ᵀ q_nope, a combination of the head's nope rows of kv_b_proj read in
    // their storage dtype (dequantising them and calling sgemm took ~6 us a head at batch 1).
    ThreadPool& pool = ThreadPool::global();
    parallel_lanes(pool, d.heads, lanes_for(pool, d.heads), [&](std::int64_t, std::int64_t h) {
      combine_rows(kv_b_proj, h * kv_dim, d.nope, q_nope.row(h * rows), d.nope, rows, q_latent.data + h * d.width(),
                   q_latent.stride);
    });
  }

  void attention_latent(Tensor q_latent, std::span<const LatentQuery> queries, const MlaShape& d, float scale,
                        Tensor o_latent, Workspace& workspace) const override {
    const auto rows = static_cast<std::int64_t>(queries.size());
    if (q_latent.rows != rows || q_latent.cols != d.heads * d.width() || o_latent.rows != rows ||
        o_latent.cols != d.heads * d.kv_lora)
      fail("attention_latent: q [{}, {}] and out [{}, {}] for {} queries of {} heads", q_latent.rows, q_latent.cols,
           o_latent.rows, o_latent.cols, rows, d.heads);
    for (const LatentQuery& query : queries) check_pages("attention_latent", *query.pages, query.keys, d.width());
    Workspace::Scope scope(workspace);
    // A row over a long context is split into key ranges of at least kMinKeysPerTask so every core
    // has work; the ranges' partial softmaxes are merged.
    constexpr std::int64_t kMinKeysPerTask = 256;
    ThreadPool& pool = ThreadPool::global();
    const std::int64_t wanted_splits = std::max<std::int64_t>(1, (2 * pool.size() + rows - 1) / std::max<std::int64_t>(rows, 1));
    std::span<std::int64_t> first_task = workspace.array<std::int64_t>(rows + 1);
    first_task[0] = 0;
    for (std::int64_t r = 0; r < rows; ++r)
      first_task[r + 1] = first_task[r] + std::clamp<std::int64_t>(queries[r].keys / kMinKeysPerTask, 1, wanted_splits);
    const std::int64_t tasks = first_task[rows];
    // Scratch for the most tasks these rows can have, whatever their keys, so that a step's
    // workspace does not grow as its sequences do.
    const std::int64_t most_tasks = rows * wanted_splits;
    std::span<std::int64_t> task_row = workspace.array<std::int64_t>(most_tasks);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t t = first_task[r]; t < first_task[r + 1]; ++t) task_row[t] = r;
    const std::int64_t partial_size = d.heads * (2 + d.kv_lora);
    Tensor storage = workspace.tensor(most_tasks, partial_size);
    std::span<LatentPartial> partials = workspace.array<LatentPartial>(most_tasks);
    for (std::int64_t t = 0; t < tasks; ++t) {
      float* base = storage.row(t);
      partials[t] = {base, base + d.heads, base + 2 * d.heads};
    }
    const std::int64_t lanes = lanes_for(pool, most_tasks);
    Tensor scratch = workspace.tensor(lanes, attention_latent_scratch(d.heads, d.width()));
    parallel_lanes(pool, tasks, lanes, [&](std::int64_t lane, std::int64_t task) {
      const std::int64_t r = task_row[task], part = task - first_task[r], splits = first_task[r + 1] - first_task[r];
      const std::int64_t keys = queries[r].keys;
      kernels::attention_latent(q_latent.row(r), d.heads, *queries[r].pages, keys * part / splits,
                                keys * (part + 1) / splits, d.kv_lora, scale, partials[task], scratch.row(lane));
      // A row in one task (a batch's decode step: every row) is finished here, on the core that
      // holds its sums: merged on the calling thread after the loop, a bench-1b batch-16 step's
      // rows took 0.3-0.4 ms more.
      if (splits == 1) merge_latent_partials(partials.subspan(task, 1), d.heads, d.kv_lora, o_latent.row(r));
    });
    for (std::int64_t r = 0; r < rows; ++r)
      if (first_task[r + 1] - first_task[r] > 1)
        merge_latent_partials(partials.subspan(first_task[r], first_task[r + 1] - first_task[r]), d.heads, d.kv_lora,
                              o_latent.row(r));
  }

  void mla_absorb_output(Tensor o_latent, const Matrix& kv_b_proj, const MlaShape& d, Tensor out,
                         Workspace& workspace) const override {
    const std::int64_t rows = o_latent.rows, kv_dim = d.nope + d.v, kv_rows = kv_b_proj.rows;
    if (o_latent.cols != d.heads * d.kv_lora || out.rows != rows || out.cols != d.heads * d.v)
      fail("mla_absorb_output: [{}, {}] into [{}, {}] for {} heads", o_latent.rows, o_latent.cols, out.rows, out.cols,
           d.heads);
    if (kv_rows != d.heads * kv_dim || kv_b_proj.cols != d.kv_lora)
      fail("{}: [{}, {}] is not [{}, {}]", kv_b_proj.name, kv_rows, kv_b_proj.cols, d.heads * kv_dim, d.kv_lora);
    Workspace::Scope scope(workspace);
    if (const PackedWeight* tiles = absorb_tiles(kv_b_proj)) {
      // Fast mode: W_UV[h] from its tiles into the head's columns of out.
      absorb_products(*tiles, &AbsorbTileViews::values, d, {o_latent.data, rows, d.kv_lora, o_latent.stride}, d.kv_lora,
                      out.data, out.stride, d.v, workspace, [](std::int64_t) {});
      return;
    }
    Tensor latent = workspace.tensor(d.heads * rows, d.kv_lora);  // [heads, rows, kv_lora]
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t h = 0; h < d.heads; ++h)
        std::copy_n(o_latent.row(r) + h * d.kv_lora, d.kv_lora, latent.row(h * rows + r));
    Tensor kv_out = workspace.tensor(rows, kv_rows);  // [rows, heads * (nope + v)], only the v parts written
    // W_UV[h] through the GEMV kernel, which converts the stored weights in registers.
    ThreadPool::global().parallel_for(d.heads, 1, [&](std::int64_t h0, std::int64_t h1) {
      for (std::int64_t h = h0; h < h1; ++h)
        linear_rows(latent.row(h * rows), rows, kv_b_proj, h * kv_dim + d.nope, (h + 1) * kv_dim, kv_out.data);
    });
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t h = 0; h < d.heads; ++h)
        std::copy_n(kv_out.row(r) + h * kv_dim + d.nope, d.v, out.row(r) + h * d.v);
  }

  void route(Tensor logits, std::span<const float> bias, const RouteParams& p, std::span<std::int32_t> experts,
             std::span<float> weights) const override {
    const std::int64_t tokens = logits.rows, n_experts = logits.cols, top_k = p.top_k;
    if (static_cast<std::int64_t>(bias.size()) != n_experts || p.n_group <= 0 || n_experts % p.n_group != 0 ||
        p.topk_group <= 0 || p.topk_group > p.n_group || top_k <= 0 ||
        top_k > p.topk_group * (n_experts / p.n_group))
      fail("route: {} experts in {} groups (keep {}), top {} with a bias of {}", n_experts, p.n_group, p.topk_group,
           top_k, bias.size());
    if (static_cast<std::int64_t>(experts.size()) != tokens * top_k ||
        static_cast<std::int64_t>(weights.size()) != tokens * top_k)
      fail("route: room for {} and {} routes, {} needed", experts.size(), weights.size(), tokens * top_k);
    const std::int64_t group_size = n_experts / p.n_group;
    // Tokens over the pool (a prefill's hundreds; a decode step's few stay here), each task with
    // its thread's scratch.
    const std::int64_t min_tokens = std::max<std::int64_t>(1, kSiluValuesPerTask / (4 * n_experts));
    for_rows(tokens, 1, min_tokens, [&](std::int64_t first, std::int64_t last) {
      thread_local std::vector<float> scores, choice, group_scores;
      thread_local std::vector<std::int32_t> order;
      scores.resize(static_cast<std::size_t>(n_experts));
      choice.resize(scores.size());
      group_scores.resize(static_cast<std::size_t>(p.n_group));
      order.resize(static_cast<std::size_t>(std::max(n_experts, p.n_group)));
      for (std::int64_t t = first; t < last; ++t) {
        const float* row = logits.row(t);
        for (std::int64_t e = 0; e < n_experts; ++e) {
          scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
          choice[e] = scores[e] + bias[e];
        }
        if (p.n_group > 1) {
          for (std::int64_t g = 0; g < p.n_group; ++g) {
            const float* begin = choice.data() + g * group_size;
            float best = -std::numeric_limits<float>::infinity(), second = best;
            for (std::int64_t i = 0; i < group_size; ++i) {
              if (begin[i] > best) {
                second = best;
                best = begin[i];
              } else if (begin[i] > second) {
                second = begin[i];
              }
            }
            group_scores[g] = best + second;
          }
          for (std::int64_t g = 0; g < p.n_group; ++g) order[g] = static_cast<std::int32_t>(g);
          // Best first, ties to the lower group (the order a stable sort gives; std::sort with the
          // tie broken by index needs no temporary buffer).
          std::sort(order.begin(), order.begin() + p.n_group, [&](std::int32_t a, std::int32_t b) {
            return group_scores[a] > group_scores[b] || (!(group_scores[b] > group_scores[a]) && a < b);
          });
          for (std::int64_t rank = p.topk_group; rank < p.n_group; ++rank)  // masked with -inf, as DeepSeek does
            std::fill_n(choice.begin() + order[rank] * group_size, group_size, -std::numeric_limits<float>::infinity());
        }
        for (std::int64_t e = 0; e < n_experts; ++e) order[e] = static_cast<std::int32_t>(e);
        std::partial_sort(
            order.begin(), order.begin() + top_k, order.begin() + n_experts,
            [&](std::int32_t a, std::int32_t b) { return choice[a] > choice[b] || (choice[a] == choice[b] && a < b); });
        double total = 0.0;
        for (std::int64_t k = 0; k < top_k; ++k) total += scores[order[k]];
        const double normaliser = p.norm_topk_prob ? total + 1e-20 : 1.0;
        for (std::int64_t k = 0; k < top_k; ++k) {
          experts[t * top_k + k] = order[k];
          weights[t * top_k + k] = static_cast<float>(scores[order[k]] / normaliser * p.routed_scaling_factor);
        }
      }
    });
  }

  Dispatch moe_dispatch(Tensor x, std::span<const std::int32_t> experts, std::int64_t n_experts, std::int64_t top_k,
                        Workspace& workspace) const override {
    const auto routes = static_cast<std::int64_t>(experts.size());
    if (top_k <= 0 || routes != x.rows * top_k)
      fail("moe_dispatch: {} routes for {} tokens of top {}", routes, x.rows, top_k);
    Dispatch dispatch;
    dispatch.top_k = top_k;
    dispatch.offsets = workspace.array<std::int64_t>(n_experts + 1);
    dispatch.slots = workspace.array<std::int64_t>(routes);
    dispatch.rows = workspace.tensor(routes, x.cols);
    std::fill(dispatch.offsets.begin(), dispatch.offsets.end(), 0);
    for (const std::int32_t e : experts) {
      if (e < 0 || e >= n_experts) fail("moe_dispatch: expert {} outside [0, {})", e, n_experts);
      ++dispatch.offsets[e + 1];
    }
    for (std::int64_t e = 0; e < n_experts; ++e) dispatch.offsets[e + 1] += dispatch.offsets[e];
    // Counting sort, stable: an expert's rows keep token order.
    std::span<std::int64_t> next = workspace.array<std::int64_t>(n_experts);
    std::copy_n(dispatch.offsets.begin(), n_experts, next.begin());
    for (std::int64_t slot = 0; slot < routes; ++slot) dispatch.slots[next[experts[slot]]++] = slot;
    // The copies (a prefill's are megabytes) over the cores; a decode step's few rows stay on this one.
    auto copy = [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t row = first; row < last; ++row)
        std::memcpy(dispatch.rows.row(row), x.row(dispatch.slots[row] / top_k),
                    static_cast<std::size_t>(x.cols) * sizeof(float));
    };
    if (routes * x.cols < (std::int64_t{1} << 16)) {
      copy(0, routes);
    } else {
      ThreadPool::global().parallel_for(routes, 64, copy);
    }
    return dispatch;
  }

  void moe_experts(const Dispatch& dispatch, std::span<const MlpWeights> experts, Tensor out, Workspace& workspace,
                   Tensor gate, Tensor up) const override {
    const auto n_experts = static_cast<std::int64_t>(experts.size());
    if (static_cast<std::int64_t>(dispatch.offsets.size()) != n_experts + 1)
      fail("moe_experts: a dispatch over {} experts for {} experts", dispatch.offsets.size() - 1, n_experts);
    check_shape("moe_experts", dispatch.rows, out);
    const std::int64_t total = dispatch.rows.rows;
    if (total == 0) return;
    const auto held = std::find_if(experts.begin(), experts.end(), [](const MlpWeights& w) { return !w.gate_proj.empty(); });
    const std::int64_t intermediate = held == experts.end() ? 0 : held->gate_proj.rows;
    Workspace::Scope scope(workspace);
    if (gate.data == nullptr) gate = workspace.tensor(total, intermediate);
    if (up.data == nullptr) up = workspace.tensor(total, intermediate);
    if (gate.rows != total || gate.cols != intermediate || up.rows != total || up.cols != intermediate)
      fail("moe_experts: gate and up of [{}, {}] and [{}, {}], [{}, {}] wanted", gate.rows, gate.cols, up.rows, up.cols,
           total, intermediate);
    Tensor act = workspace.tensor(total, intermediate);
    std::span<std::int64_t> active = workspace.array<std::int64_t>(n_experts);
    std::int64_t count = 0;
    for (std::int64_t e = 0; e < n_experts; ++e) {
      if (dispatch.offsets[e + 1] == dispatch.offsets[e]) continue;
      if (experts[e].gate_proj.empty()) {  // held by another rank: its rows add nothing here
        fill(out.row_range(dispatch.offsets[e], dispatch.offsets[e + 1]), 0.0f);
        continue;
      }
      active[count++] = e;
    }
    auto run = [&](std::int64_t e, bool one_core) {
      const std::int64_t begin = dispatch.offsets[e], end = dispatch.offsets[e + 1];
      const Tensor x = dispatch.rows.row_range(begin, end), g = gate.row_range(begin, end), u = up.row_range(begin, end),
                   a = act.row_range(begin, end), o = out.row_range(begin, end);
      const MlpWeights& w = experts[e];
      if (one_core && end - begin < kExpertGemvRows && dtype_size(w.gate_proj.dtype) >= 2 && x.contiguous()) {
        kernels::linear_rows(x.data, x.rows, w.gate_proj, 0, w.gate_proj.rows, g.data);
        kernels::linear_rows(x.data, x.rows, w.up_proj, 0, w.up_proj.rows, u.data);
        swiglu(g, u, a);
        kernels::linear_rows(a.data, a.rows, w.down_proj, 0, w.down_proj.rows, o.data);
        return;
      }
      swiglu_mlp(*this, w, x, g, u, a, o);
    };
    // With several experts per core, one task per expert (its small matrices on one core) beats
    // splitting each small matrix across the cores and meeting three times per expert. Handed out
    // one at a time, the busiest first, so that the cores finish together: in chunks of 8 experts,
    // one core could wait out most of another's last chunk.
    ThreadPool& pool = ThreadPool::global();
    if (count >= 2 * pool.size()) {
      const auto rows_of = [&](std::int64_t e) { return dispatch.offsets[e + 1] - dispatch.offsets[e]; };
      std::sort(active.begin(), active.begin() + count, [&](std::int64_t a, std::int64_t b) {
        return rows_of(a) != rows_of(b) ? rows_of(a) > rows_of(b) : a < b;  // std::stable_sort would allocate
      });
      parallel_lanes(pool, count, lanes_for(pool, count), [&](std::int64_t, std::int64_t i) { run(active[i], true); });
    } else {
      for (std::int64_t i = 0; i < count; ++i) run(active[i], false);
    }
  }

  void moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out, Tensor y) const override {
    check_shape("moe_combine", dispatch.rows, out);
    if (static_cast<std::int64_t>(weights.size()) != out.rows || y.rows * dispatch.top_k != out.rows || y.cols != out.cols)
      fail("moe_combine: {} weights and [{}, {}] expert rows into [{}, {}]", weights.size(), out.rows, out.cols, y.rows,
           y.cols);
    // Rows are in expert order: the sum's order does not depend on how experts were scheduled.
    // Token by token, each adding its rows in that order (ascending row), so tokens can be split
    // over the pool and each token's row of y is read and written once, not once per route.
    const std::int64_t top_k = dispatch.top_k;
    std::vector<std::int64_t>& row_of = combine_row_map();  // [slot] -> its row; this thread's, shared with the tasks
    row_of.assign(static_cast<std::size_t>(out.rows), -1);
    for (std::int64_t row = 0; row < out.rows; ++row) {
      const std::int64_t slot = dispatch.slots[row];
      if (slot < 0 || slot >= out.rows || row_of[slot] >= 0)
        fail("moe_combine: route {} dispatched twice or outside [0, {})", slot, out.rows);
      row_of[slot] = row;
    }
    // A task gets 4 times a copy's minimum (6 tokens' rows of bench-1b's 1024 columns at top 6):
    // a batch-16 decode step's 96 rows in 4 tasks.
    for_rows(y.rows, top_k * y.cols, 4 * kCopyValuesPerTask, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t t = first; t < last; ++t) {
        const auto rows =
            std::span(row_of).subspan(static_cast<std::size_t>(t * top_k), static_cast<std::size_t>(top_k));
        std::sort(rows.begin(), rows.end());
        float* target = y.row(t);
        for (const std::int64_t row : rows) {
          const float* source = out.row(row);
          const float gate = weights[dispatch.slots[row]];
          for (std::int64_t i = 0; i < y.cols; ++i) target[i] += gate * source[i];
        }
      }
    });
  }

  void matmul(const float* a, const float* b, float* c, const MatmulShape& shape) const override {
    kernels::matmul(a, b, c, shape);
  }
};

}  // namespace

const Backend& default_backend() {
  static const CpuBackend backend;
  return backend;
}

}  // namespace dsv3::kernels
