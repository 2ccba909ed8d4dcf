// CPU kernel benchmarks: decode-shaped linear (few activation rows) in BF16 and FP8 against the
// machine's own read bandwidth measured in the same run, and against the previous implementation
// (dequantise 64-row panels + OpenBLAS sgemm) across activation rows, to place the GEMV / sgemm switch.
//
//   build/bench_kernels                      all shapes
//   build/bench_kernels --benchmark_filter=Gemv/129280
//
// Weights are random and cycled through copies totalling > 64 MiB, so every call streams them
// from memory as decode does (each layer's weights are distinct), not from cache.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/machine.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

constexpr std::size_t kMinStreamedBytes = std::size_t{64} << 20;

// The read-bandwidth roofline of core/machine.h, over a 256 MB buffer (well past the caches).
double measure_read_bandwidth(int passes) { return dsv3::measure_read_bandwidth(std::int64_t{256} << 20, passes); }

// Copy bandwidth (memcpy on every thread), the usual "stream copy" figure; bytes read + written.
void BM_CopyBandwidth(benchmark::State& state) {
  const std::size_t bytes = std::size_t{256} << 20;
  std::vector<std::byte> source(bytes, std::byte{1}), target(bytes, std::byte{0});
  ThreadPool& pool = ThreadPool::global();
  const std::int64_t per_thread = static_cast<std::int64_t>(bytes) / pool.size();
  for (auto _ : state) {
    pool.parallel_for(pool.size(), 1, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t t = first; t < last; ++t)
        std::memcpy(target.data() + t * per_thread, source.data() + t * per_thread, static_cast<std::size_t>(per_thread));
    });
    benchmark::DoNotOptimize(target.data());
  }
  state.counters["GB/s(r+w)"] = benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * bytes / 1e9,
                                                   benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CopyBandwidth)->UseRealTime()->Unit(benchmark::kMillisecond);

// Enough random copies of one weight matrix to stream > 64 MiB per cycle through them.
struct Weights {
  std::vector<std::vector<std::byte>> bytes;
  std::vector<Matrix> matrices;
  std::size_t weight_bytes = 0;  // per matrix, scales included
};

// FP8 block scales map 4 sigma of the N(0, 0.02) weights to the top code, times `fp8_scale_factor`
// (10^4: the codes then N(0, 0.011), about 3/4 of them subnormal).
Weights make_weights(std::int64_t rows, std::int64_t cols, DType dtype, float fp8_scale_factor = 1.0f) {
  Weights w;
  const std::size_t bytes = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
  const std::size_t copies = std::max<std::size_t>(1, (kMinStreamedBytes + bytes - 1) / bytes);
  auto scales = std::make_shared<std::vector<float>>(static_cast<std::size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (auto& s : *scales) s = 0.02f * 4 / kFp8E4M3Max * fp8_scale_factor;
  for (std::size_t copy = 0; copy < copies; ++copy) {
    std::vector<std::byte> data(bytes);
    for (std::size_t i = 0; i < static_cast<std::size_t>(rows * cols); ++i) {
      const float value = normal(rng);
      if (dtype == DType::BF16) {
        const std::uint16_t bits = float_to_bf16(value);
        std::memcpy(data.data() + 2 * i, &bits, 2);
      } else {
        data[i] = static_cast<std::byte>(float_to_fp8_e4m3(value / (*scales)[0]));
      }
    }
    w.bytes.push_back(std::move(data));
    Matrix m;
    m.name = "bench.weight";
    m.dtype = dtype;
    m.rows = rows;
    m.cols = cols;
    m.data = w.bytes.back().data();
    if (dtype == DType::F8_E4M3) m.scales = scales;
    w.matrices.push_back(m);
  }
  w.weight_bytes = bytes + (dtype == DType::F8_E4M3 ? scales->size() * sizeof(float) : 0);
  return w;
}

// GB/s of weight bytes streamed, the read bandwidth measured just before and after (the better of
// the two), and their ratio.
void report(benchmark::State& state, const Weights& w, double read_bandwidth_before) {
  const double read_bandwidth = std::max(read_bandwidth_before, measure_read_bandwidth(2));
  const double streamed = static_cast<double>(state.iterations()) * static_cast<double>(w.weight_bytes);
  state.counters["GB/s"] = benchmark::Counter(streamed / 1e9, benchmark::Counter::kIsRate);
  state.counters["read_GB/s"] = read_bandwidth / 1e9;
  state.counters["of_read_bw"] = benchmark::Counter(streamed / read_bandwidth, benchmark::Counter::kIsRate);
}

// args: activation rows, out features N, in features K, 0 = BF16 / 1 = FP8, 1 = exact arithmetic
// (FP32 GEMV or sgemm) / 0 = oneDNN from the measured thresholds on (kernels::linear_through_gemm) /
// 2 = oneDNN at any row count /
// 3 = the few-row kernels (with a BF16 GEMM, BF16 dot products) at any row count /
// 4 = as 0 with the weight in pair tiles too (kernels::pack_for_few_rows, as the output head is).
void BM_Linear(benchmark::State& state) {
  const std::int64_t rows = state.range(0), n = state.range(1), k = state.range(2);
  const bool exact = state.range(4) == 1, force_gemm = state.range(4) == 2, force_few = state.range(4) == 3;
  kernels::set_exact_arithmetic(exact);
  if (force_gemm) kernels::set_min_gemm_rows_for_testing(1);
  if (force_few) kernels::set_min_gemm_rows_for_testing(std::numeric_limits<std::int64_t>::max());
  Weights w = make_weights(n, k, state.range(3) ? DType::F8_E4M3 : DType::BF16);
  bool tiles = false;
  if (state.range(4) == 4)
    for (Matrix& m : w.matrices) tiles = kernels::pack_for_few_rows(m) > 0;
  const bool gemm = kernels::linear_through_gemm(rows, w.matrices.front());
  std::vector<float> x(static_cast<std::size_t>(rows * k), 0.5f), y(static_cast<std::size_t>(rows * n));
  const double read_bandwidth = measure_read_bandwidth(2);
  std::size_t next = 0;
  for (auto _ : state) {
    kernels::linear(x.data(), rows, w.matrices[next], y.data());
    next = (next + 1) % w.matrices.size();
    benchmark::DoNotOptimize(y.data());
  }
  if (force_gemm || force_few) kernels::set_min_gemm_rows_for_testing(std::nullopt);
  report(state, w, read_bandwidth);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * n * k) * static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  const bool dot = !exact && !gemm && !state.range(3) && kernels::few_row_bf16_dot_products();
  state.SetLabel(std::string(state.range(3) ? "fp8 " : "bf16 ") + std::string(kernels::isa_name(kernels::active_isa())) +
                 (gemm ? " onednn" : dot && tiles ? " bf16-dot pair tiles" : dot ? " gemv bf16-dot" : " gemv"));
}

// The implementation before the GEMV kernels, as the baseline: dequantise 64-row panels, then sgemm.
void BM_LinearPanelSgemm(benchmark::State& state) {
  const std::int64_t rows = state.range(0), n = state.range(1), k = state.range(2);
  const Weights w = make_weights(n, k, state.range(3) ? DType::F8_E4M3 : DType::BF16);
  std::vector<float> x(static_cast<std::size_t>(rows * k), 0.5f), y(static_cast<std::size_t>(rows * n));
  openblas_set_num_threads(1);
  constexpr std::int64_t kPanel = 64;
  const double read_bandwidth = measure_read_bandwidth(2);
  std::size_t next = 0;
  for (auto _ : state) {
    const Matrix& m = w.matrices[next];
    ThreadPool::global().parallel_for((n + kPanel - 1) / kPanel, 1, [&](std::int64_t first, std::int64_t last) {
      thread_local std::vector<float> panel;
      panel.resize(static_cast<std::size_t>(kPanel * k));
      for (std::int64_t p = first; p < last; ++p) {
        const std::int64_t begin = p * kPanel, end = std::min(n, begin + kPanel);
        kernels::dequantize_rows(m, begin, end, panel.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(end - begin),
                    static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k), panel.data(), static_cast<int>(k), 0.0f,
                    y.data() + begin, static_cast<int>(n));
      }
    });
    next = (next + 1) % w.matrices.size();
    benchmark::DoNotOptimize(y.data());
  }
  report(state, w, read_bandwidth);
}

// Decode shapes of bench-1b (hidden 1024: q_a 384, dense MLP 2816, vocab 129280) and of
// DeepSeek-V3 itself (hidden 7168, expert intermediate 2048).
void decode_shapes(benchmark::internal::Benchmark* b) {
  const std::int64_t shapes[][2] = {{384, 1024}, {2816, 1024}, {1024, 2816}, {2048, 7168}, {7168, 2048}, {129280, 1024}};
  for (std::int64_t dtype : {0, 1})
    for (const auto& s : shapes) b->Args({1, s[0], s[1], dtype, 1});
}

void row_sweep(benchmark::internal::Benchmark* b) {
  for (std::int64_t dtype : {0, 1})
    for (std::int64_t rows : {1, 2, 4, 8, 12, 16, 32, 64, 128, 512}) b->Args({rows, 2816, 1024, dtype, 1});
}

// Exact GEMV against oneDNN around the thresholds, on bench-1b's dense MLP and expert shapes; and
// from 32 to 128 rows the few-row kernels forced (exact:3) against oneDNN.
void gemm_sweep(benchmark::internal::Benchmark* b) {
  for (std::int64_t dtype : {0, 1})
    for (std::int64_t n : {2816, 384})
      for (std::int64_t rows : {4, 8, 12, 16, 24, 32, 48, 64, 128, 512}) {
        for (std::int64_t exact : {1, 0}) b->Args({rows, n, 1024, dtype, exact});
        if (rows >= 32 && rows <= 128) b->Args({rows, n, 1024, dtype, 3});
      }
}

// Batched decode's widest linear, bench-1b's output head (vocab 129280 x hidden 1024): the GEMV
// kernels (exact; and fast, which with a BF16 GEMM are BF16 dot products for BF16 weights) against
// oneDNN at the row counts of a batch of 1 to 64 sequences.
void head_sweep(benchmark::internal::Benchmark* b) {
  for (std::int64_t dtype : {0, 1})
    for (std::int64_t rows : {1, 4, 8, 12, 16, 24, 32, 48, 64}) {
      for (std::int64_t exact : {1, 0, 2}) b->Args({rows, 129280, 1024, dtype, exact});
      if (dtype == 0 && rows < 64) b->Args({rows, 129280, 1024, dtype, 4});
      if (rows >= 32) b->Args({rows, 129280, 1024, dtype, 3});
    }
}

// A batched decode step's attention projections and shared experts, bench-1b's shapes (o_proj,
// shared gate/up and down, q_b, kv_a_proj_with_mqa, q_a), from their pair tiles at 1 and 16 rows.
void tile_shapes(benchmark::internal::Benchmark* b) {
  const std::int64_t shapes[][2] = {{1024, 1024}, {768, 1024}, {1024, 768}, {1536, 384}, {288, 1024}, {384, 1024}};
  for (const auto& s : shapes)
    for (std::int64_t rows : {1, 16}) b->Args({rows, s[0], s[1], 0, 4});
}

// A routed expert's matrices as a batched decode step runs them: 1 to 6 rows (bench-1b's 16 rows x
// top 6 are 96 routes over 64 experts), on the calling thread alone
// (kernels::linear_rows, as moe_experts runs an expert on one core while the others take theirs).
// args: rows, out features N, in features K, 0 = BF16 / 1 = FP8 / 2 = FP8, about 3/4 of the codes
// subnormal (what a CPU that slows subnormal operands pays; real weights have few) (fast mode).
void BM_ExpertRows(benchmark::State& state) {
  const std::int64_t rows = state.range(0), n = state.range(1), k = state.range(2);
  kernels::set_exact_arithmetic(false);
  const Weights w = make_weights(n, k, state.range(3) ? DType::F8_E4M3 : DType::BF16, state.range(3) == 2 ? 1e4f : 1.0f);
  std::vector<float> x(static_cast<std::size_t>(rows * k), 0.5f), y(static_cast<std::size_t>(rows * n));
  std::size_t next = 0;
  for (auto _ : state) {
    kernels::linear_rows(x.data(), rows, w.matrices[next], 0, n, y.data());
    next = (next + 1) % w.matrices.size();
    benchmark::DoNotOptimize(y.data());
  }
  // GB/s of one core's stream (the bandwidth probe's figures are for all the cores).
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(w.weight_bytes) / 1e9,
                                             benchmark::Counter::kIsRate);
  state.SetLabel(std::string(state.range(3) == 2 ? "fp8 subnormal " : state.range(3) ? "fp8 " : "bf16 ") +
                 std::string(kernels::isa_name(kernels::active_isa())) + " one core");
}
BENCHMARK(BM_ExpertRows)->ArgNames({"rows", "N", "K", "fp8"})->ArgsProduct({{1, 2, 3, 4, 5, 6}, {384}, {1024}, {0, 1}})->ArgsProduct({{1, 2, 3, 4, 5, 6}, {1024}, {384}, {0, 1}})->ArgsProduct({{1, 6}, {384}, {1024}, {2}})->UseRealTime();

BENCHMARK(BM_Linear)->Name("Gemv")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(decode_shapes)->UseRealTime();
BENCHMARK(BM_Linear)->Name("LinearRows")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(row_sweep)->UseRealTime();
BENCHMARK(BM_Linear)->Name("GemmRows")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(gemm_sweep)->UseRealTime();
BENCHMARK(BM_Linear)->Name("TileRows")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(tile_shapes)->UseRealTime();
BENCHMARK(BM_Linear)->Name("HeadRows")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(head_sweep)->UseRealTime();
BENCHMARK(BM_LinearPanelSgemm)->Name("PanelSgemmRows")->ArgNames({"rows", "N", "K", "fp8", "exact"})->Apply(row_sweep)->UseRealTime();

// A prefill's routed experts, bench-1b's shape: 512 tokens x 6 of 64 experts (384 x 1024), random
// routes (about 48 rows per expert), BF16 or FP8 weights streamed from memory as in a prefill.
// args: tokens, BF16 / FP8, exact arithmetic (the GEMV kernels) / fast (oneDNN from min_gemm_rows rows).
void BM_MoeExperts(benchmark::State& state) {
  constexpr std::int64_t top_k = 6, n_experts = 64, hidden = 1024, intermediate = 384;
  const std::int64_t tokens = state.range(0);
  const DType dtype = state.range(1) ? DType::F8_E4M3 : DType::BF16;
  kernels::set_exact_arithmetic(state.range(2) == 1);
  const Weights gate_up = make_weights(intermediate, hidden, dtype), down = make_weights(hidden, intermediate, dtype);
  std::vector<MlpWeights> experts;
  for (std::int64_t e = 0; e < n_experts; ++e) {
    const auto at = [](const Weights& w, std::int64_t i) { return w.matrices[static_cast<std::size_t>(i) % w.matrices.size()]; };
    experts.push_back({at(gate_up, 2 * e), at(gate_up, 2 * e + 1), at(down, e)});
  }
  std::mt19937 rng(11);
  std::vector<std::int32_t> routes;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<std::int32_t> all(n_experts);
    for (std::int32_t e = 0; e < n_experts; ++e) all[static_cast<std::size_t>(e)] = e;
    std::shuffle(all.begin(), all.end(), rng);
    routes.insert(routes.end(), all.begin(), all.begin() + top_k);
  }
  const kernels::Backend& backend = kernels::default_backend();
  std::vector<float> x(static_cast<std::size_t>(tokens * hidden), 0.5f), out(static_cast<std::size_t>(tokens * top_k * hidden));
  kernels::Workspace workspace(backend);
  for (auto _ : state) {
    // Other experts each call, as in a decode step's next layer: their weights come from memory,
    // not from the cache the last call left them in (a step's 6 x 2.25 MiB fit the L3).
    for (std::int32_t& route : routes) route = (route + static_cast<std::int32_t>(top_k)) % n_experts;
    workspace.reset();
    const kernels::Dispatch dispatch =
        backend.moe_dispatch(kernels::Tensor(x.data(), tokens, hidden), routes, n_experts, top_k, workspace);
    backend.moe_experts(dispatch, experts, kernels::Tensor(out.data(), tokens * top_k, hidden), workspace, {}, {});
    benchmark::DoNotOptimize(out.data());
  }
  kernels::set_exact_arithmetic(false);
  state.counters["GFLOP/s"] = benchmark::Counter(6.0 * static_cast<double>(tokens * top_k * hidden * intermediate) *
                                                     static_cast<double>(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_MoeExperts)->ArgNames({"tokens", "fp8", "exact"})->ArgsProduct({{1, 16, 128, 512, 2048}, {0, 1}, {0, 1}})->UseRealTime()->Unit(benchmark::kMillisecond);

// Prefill attention of bench-1b's shape (16 heads, q/k 96 = 64 nope + 32 rope, v 64) over a
// `tokens`-token prompt, causal; FLOP/s counts the unmasked half of QKᵀ and PV. With DSV3_ISA=scalar
// the softmax's exponentials take the scalar path (the products are oneDNN's either way).
void BM_AttentionCausal(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), heads = 16, qk = 96, vd = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<std::size_t>(tokens * heads * qk)), k(q.size()),
      v(static_cast<std::size_t>(tokens * heads * vd)), out(v.size());
  for (auto* buffer : {&q, &k, &v})
    for (float& x : *buffer) x = normal(rng);
  kernels::AttentionShape shape;
  shape.tokens = tokens;
  shape.heads = heads;
  shape.qk_dim = qk;
  shape.v_dim = vd;
  shape.q_stride = shape.k_stride = heads * qk;
  shape.q_head_stride = shape.k_head_stride = qk;
  shape.v_stride = heads * vd;
  shape.v_head_stride = vd;
  for (auto _ : state) {
    kernels::attention_causal(q.data(), k.data(), v.data(), shape, 0.1f, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double flop = static_cast<double>(tokens * tokens) * static_cast<double>(heads * (qk + vd));
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * flop / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AttentionCausal)->ArgName("tokens")->Arg(512)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);

// Cache pages 64-byte aligned, as the CPU backend allocates the latent cache: rows of whole cache
// lines are then read without split loads.
struct CacheStorage {
  std::vector<std::uint16_t> values;
  std::uint16_t* data;
  explicit CacheStorage(std::size_t count) : values(count + 32) {
    const auto address = reinterpret_cast<std::uintptr_t>(values.data());
    data = values.data() + (64 - address % 64) % 64 / sizeof(std::uint16_t);
  }
  std::span<std::uint16_t> span(std::size_t count) { return {data, count}; }
};

// Decode attention over the latent cache, one layer of bench-1b (16 heads, width 256 + 32, BF16
// pages of 16 tokens), `keys` cached tokens, on the calling thread. exact: 1 = float32 products,
// 0 = fast mode (with a BF16 GEMM, AVX512-BF16 dot products on rounded queries and probabilities).
void BM_AttentionLatent(benchmark::State& state) {
  const std::int64_t keys = state.range(0), heads = 16, kv = 256, width = kv + 32, block = 16;
  kernels::set_exact_arithmetic(state.range(1) == 1);
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::int64_t blocks = (keys + block - 1) / block;
  CacheStorage storage(static_cast<std::size_t>(blocks * block * width));
  for (auto& x : storage.span(static_cast<std::size_t>(blocks * block * width))) x = float_to_bf16(normal(rng));
  std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
  for (std::int64_t b = 0; b < blocks; ++b) table[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(blocks - 1 - b);
  kernels::LatentPages pages;
  pages.storage = reinterpret_cast<std::byte*>(storage.data);
  pages.dtype = DType::BF16;
  pages.width = width;
  pages.block_tokens = block;
  pages.block_stride_rows = block;
  pages.blocks = table;
  std::vector<float> q(static_cast<std::size_t>(heads * width)), max(heads), sum(heads),
      acc(static_cast<std::size_t>(heads * kv));
  for (float& x : q) x = normal(rng);
  kernels::LatentPartial partial{max.data(), sum.data(), acc.data()};
  for (auto _ : state) {
    kernels::attention_latent(q.data(), heads, pages, 0, keys, kv, 0.1f, partial);
    benchmark::DoNotOptimize(acc.data());
  }
  const double flop = 2.0 * static_cast<double>(keys * heads * (width + kv));
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * flop / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AttentionLatent)->ArgNames({"keys", "exact"})->ArgsProduct({{512, 4096}, {1, 0}})->UseRealTime()->Unit(benchmark::kMicrosecond);

// A decode step's latent attention for `sequences` sequences of bench-1b (12 layers, 16 heads,
// 256 + 32, BF16 pages of 16 tokens) with 576 cached keys each, every (sequence, layer) a task
// over the thread pool as the CPU backend runs them: the caches (64 MB at 16 sequences) come from
// memory, not from a core's cache as above. exact as above.
void BM_AttentionLatentStep(benchmark::State& state) {
  const std::int64_t sequences = state.range(0), layers = 12, keys = 576, heads = 16, kv = 256, width = kv + 32,
                     block = 16;
  kernels::set_exact_arithmetic(state.range(1) == 1);
  const std::int64_t blocks = keys / block;
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Each sequence's pages hold every layer's rows (LatentCache's layout); sequences interleave.
  const auto stored = static_cast<std::size_t>(sequences * blocks * layers * block * width);
  CacheStorage storage(stored);
  for (auto& x : storage.span(stored)) x = float_to_bf16(normal(rng));
  std::vector<std::vector<std::int32_t>> tables(static_cast<std::size_t>(sequences));
  for (std::int64_t s = 0; s < sequences; ++s)
    for (std::int64_t b = 0; b < blocks; ++b) tables[s].push_back(static_cast<std::int32_t>(b * sequences + s));
  std::vector<float> q(static_cast<std::size_t>(heads * width));
  for (float& x : q) x = normal(rng);
  const std::int64_t tasks = sequences * layers;
  std::vector<float> results(static_cast<std::size_t>(tasks * heads * (2 + kv)));
  const auto task = [&](std::int64_t sequence, std::int64_t layer) {
    kernels::LatentPages pages;
    pages.storage = reinterpret_cast<std::byte*>(storage.data);
    pages.dtype = DType::BF16;
    pages.width = width;
    pages.block_tokens = block;
    pages.block_stride_rows = layers * block;
    pages.layer_offset_rows = layer * block;
    pages.blocks = tables[static_cast<std::size_t>(sequence)];
    float* base = results.data() + (sequence * layers + layer) * heads * (2 + kv);
    kernels::LatentPartial partial{base, base + heads, base + 2 * heads};
    kernels::attention_latent(q.data(), heads, pages, 0, keys, kv, 0.1f, partial);
  };
  for (auto _ : state) {
    if (state.range(2) == 1) {  // as the engine runs them: a layer's sequences, then the next layer's
      for (std::int64_t layer = 0; layer < layers; ++layer)
        ThreadPool::global().parallel_for(sequences, 1, [&](std::int64_t first, std::int64_t last) {
          for (std::int64_t s = first; s < last; ++s) task(s, layer);
        });
    } else {
      ThreadPool::global().parallel_for(tasks, 1, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t t = first; t < last; ++t) task(t / layers, t % layers);
      });
    }
    benchmark::DoNotOptimize(results.data());
  }
  const double flop = 2.0 * static_cast<double>(tasks * keys * heads * (width + kv));
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * flop / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AttentionLatentStep)->ArgNames({"sequences", "exact", "by_layer"})->ArgsProduct({{1, 16}, {1, 0}, {0, 1}})->UseRealTime()->Unit(benchmark::kMillisecond);

// MLA's absorbed products of a decode step, bench-1b's shape (16 heads, nope 64, rope 32, v 64,
// kv_lora 256): mla_absorb_query then mla_absorb_output for `rows` rows, each pass on the next of
// enough kv_b_proj copies to come from memory as a step's 12 layers do. mode: 1 exact, 0 fast with
// the weight as it is stored, 4 fast from its absorb tiles (pack_for_absorb, as a loaded model's).
void BM_MlaAbsorb(benchmark::State& state) {
  const std::int64_t rows = state.range(0), mode = state.range(1);
  const kernels::MlaShape d{.heads = 16, .nope = 64, .rope = 32, .v = 64, .kv_lora = 256};
  kernels::set_exact_arithmetic(mode == 1);
  Weights w = make_weights(d.heads * (d.nope + d.v), d.kv_lora, DType::BF16);
  if (mode == 4)
    for (Matrix& m : w.matrices)
      if (kernels::pack_for_absorb(m, d.nope, d.v) == 0) return state.SkipWithError("no absorb tiles on this CPU");
  const kernels::Backend& backend = kernels::default_backend();
  kernels::Workspace workspace(backend);
  std::vector<float> q(static_cast<std::size_t>(rows * d.heads * d.qk()), 0.5f),
      q_latent(static_cast<std::size_t>(rows * d.heads * d.width())),
      o(static_cast<std::size_t>(rows * d.heads * d.kv_lora), 0.25f), out(static_cast<std::size_t>(rows * d.heads * d.v));
  std::size_t next = 0;
  for (auto _ : state) {
    const Matrix& m = w.matrices[next];
    backend.mla_absorb_query({q.data(), rows, d.heads * d.qk()}, m, d, {q_latent.data(), rows, d.heads * d.width()},
                             workspace);
    backend.mla_absorb_output({o.data(), rows, d.heads * d.kv_lora}, m, d, {out.data(), rows, d.heads * d.v}, workspace);
    next = (next + 1) % w.matrices.size();
    benchmark::DoNotOptimize(out.data());
  }
  kernels::set_exact_arithmetic(false);
}
BENCHMARK(BM_MlaAbsorb)->ArgNames({"rows", "mode"})->ArgsProduct({{1, 16}, {1, 0, 4}})->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace dsv3

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (const char* isa = std::getenv("DSV3_ISA")) {  // scalar | avx2 | avx512: measure another path
    bool known = false;
    for (auto candidate : {dsv3::kernels::Isa::scalar, dsv3::kernels::Isa::avx2, dsv3::kernels::Isa::avx512})
      if (dsv3::kernels::isa_name(candidate) == isa) {
        dsv3::kernels::set_isa_for_testing(candidate);
        known = true;
      }
    if (!known) {
      std::fprintf(stderr, "DSV3_ISA=%s: expected scalar, avx2 or avx512\n", isa);
      return 2;
    }
  }
  benchmark::AddCustomContext("cpu_model", dsv3::cpu_model());
  benchmark::AddCustomContext("isa", std::string(dsv3::kernels::isa_name(dsv3::kernels::active_isa())));
  benchmark::AddCustomContext("threads", std::to_string(dsv3::ThreadPool::global().size()));
  benchmark::AddCustomContext("read_bandwidth_GB/s", std::to_string(dsv3::measure_read_bandwidth(5) / 1e9));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
