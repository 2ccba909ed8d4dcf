// The CPU backend's row-wise ops at a bench-1b prefill's shapes (512 tokens, hidden 1024, dense
// intermediate 2816, top 6 of 64 experts, 16 heads with a rope of 32): what `dsv3 bench --profile`
// lists as swiglu, rmsnorm, moe_combine, add, copy_rows and rope, one op at a time; and greedy
// sampling's arg-max over one row of bench-1b's 129,280 logits (the engine's, outside the ops).
//
//   build/bench_row_ops
//   DSV3_THREADS=1 build/bench_row_ops      one core
//   DSV3_ISA=scalar build/bench_row_ops     another instruction-set path (scalar | avx2 | avx512)
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "engine/sampler.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

using kernels::Tensor;

constexpr std::int64_t kTokens = 512, kHidden = 1024, kIntermediate = 2816, kTopK = 6, kExperts = 64;

std::vector<float> random_floats(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& v : values) v = normal(rng);
  return values;
}

const kernels::Backend& cpu() { return kernels::default_backend(); }

void BM_Swiglu(benchmark::State& state) {
  const std::int64_t rows = state.range(0), cols = state.range(1);
  std::vector<float> gate = random_floats(static_cast<std::size_t>(rows * cols), 1), up = random_floats(gate.size(), 2),
                     out(gate.size());
  for (auto _ : state) {
    cpu().swiglu(Tensor(gate.data(), rows, cols), Tensor(up.data(), rows, cols), Tensor(out.data(), rows, cols));
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Swiglu)->ArgNames({"rows", "cols"})->Args({kTokens, kIntermediate})->Args({16, 768})->UseRealTime();

void BM_Rmsnorm(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  std::vector<float> x = random_floats(static_cast<std::size_t>(rows * kHidden), 3), weight = random_floats(kHidden, 4),
                     out(x.size());
  for (auto _ : state) {
    cpu().rmsnorm(Tensor(x.data(), rows, kHidden), weight, 1e-6f, Tensor(out.data(), rows, kHidden));
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Rmsnorm)->ArgName("rows")->Arg(kTokens)->Arg(16)->UseRealTime();

void BM_Add(benchmark::State& state) {
  std::vector<float> x = random_floats(static_cast<std::size_t>(kTokens * kHidden), 5), y = random_floats(x.size(), 6);
  for (auto _ : state) {
    cpu().add(Tensor(x.data(), kTokens, kHidden), Tensor(y.data(), kTokens, kHidden));
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_Add)->UseRealTime();

// k_rope repeated over the heads, as the expanded attention builds its keys: [512 * 16, 32].
void BM_CopyRowsRepeated(benchmark::State& state) {
  constexpr std::int64_t heads = 16, rope = 32;
  std::vector<float> src = random_floats(static_cast<std::size_t>(kTokens * rope), 7),
                     dst(static_cast<std::size_t>(kTokens * heads * 96));
  for (auto _ : state) {
    cpu().copy_rows(Tensor(src.data(), kTokens, rope), Tensor(dst.data() + 64, kTokens * heads, rope, 96), heads);
    benchmark::DoNotOptimize(dst.data());
  }
}
BENCHMARK(BM_CopyRowsRepeated)->UseRealTime();

// The queries' rope columns: [512 * 16, 64 | 32], 16 rows per position.
void BM_Rope(benchmark::State& state) {
  constexpr std::int64_t heads = 16, rope = 32, qk = 96;
  std::vector<double> inverse_frequencies(rope / 2);
  for (std::size_t i = 0; i < inverse_frequencies.size(); ++i)
    inverse_frequencies[i] = std::pow(10000.0, -2.0 * static_cast<double>(i) / rope);
  const kernels::RopeParams params{inverse_frequencies, 1.0, true};
  std::vector<std::int64_t> positions(kTokens);
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<float> q = random_floats(static_cast<std::size_t>(kTokens * heads * qk), 8);
  for (auto _ : state) {
    cpu().rope(Tensor(q.data(), kTokens * heads, qk).columns(qk - rope, qk), heads, positions, params);
    benchmark::DoNotOptimize(q.data());
  }
}
BENCHMARK(BM_Rope)->UseRealTime();

// 512 tokens' 6 expert rows each, in expert order, added into the residual.
void BM_MoeCombine(benchmark::State& state) {
  const std::int64_t routes = kTokens * kTopK;
  std::mt19937 rng(9);
  std::vector<std::int32_t> experts(static_cast<std::size_t>(routes));
  for (auto& e : experts) e = static_cast<std::int32_t>(rng() % kExperts);
  std::vector<float> x = random_floats(static_cast<std::size_t>(kTokens * kHidden), 10), weights = random_floats(routes, 11),
                     y(x.size());
  kernels::Workspace workspace(cpu());
  const kernels::Dispatch dispatch = cpu().moe_dispatch(Tensor(x.data(), kTokens, kHidden), experts, kExperts, kTopK, workspace);
  for (auto _ : state) {
    cpu().moe_combine(dispatch, weights, dispatch.rows, Tensor(y.data(), kTokens, kHidden));
    benchmark::DoNotOptimize(y.data());
  }
}
BENCHMARK(BM_MoeCombine)->UseRealTime();

// Greedy sampling of one sequence's row of logits: the first arg-max, checked for NaN and +inf.
void BM_GreedyRow(benchmark::State& state) {
  const std::vector<float> logits = random_floats(129280, 12);
  std::vector<float> scratch(logits.size());
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  Rng rng(1);
  for (auto _ : state) benchmark::DoNotOptimize(sample_token(logits, {}, greedy, rng, scratch));
}
BENCHMARK(BM_GreedyRow)->UseRealTime();

}  // namespace
}  // namespace dsv3

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (const char* isa = std::getenv("DSV3_ISA")) {
    const std::string name = isa;
    dsv3::kernels::set_isa_for_testing(name == "scalar" ? dsv3::kernels::Isa::scalar
                                       : name == "avx2" ? dsv3::kernels::Isa::avx2
                                                        : dsv3::kernels::Isa::avx512);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
