// Many-row linears through oneDNN's matmul (the library made for GEMMs): BF16 x BF16 -> FP32 or
// FP32 throughout, whichever the CPU runs faster (gemm_bf16_setting below). The weight stays in its storage dtype; each task
// hands oneDNN one panel of output rows, read in place when the weight is already BF16 (or F32 on
// the FP32 path), otherwise converted into a per-thread panel first (FP8 and F16 weights, never
// stored wide). oneDNN runs single-threaded inside our own thread pool's tasks, so MoE experts
// can keep running one per core, and one primitive per shape is created once and shared.
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <dnnl.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace dsv3::kernels {
namespace {

using dnnl::memory;

// Output rows per task: enough columns for oneDNN's register blocking to run at full rate on a
// 512-row prompt (its weight panel, 128 x 7168 BF16 at most for DeepSeek-V3, stays in L2), few
// enough that a 384-row expert matrix still splits over the cores.
constexpr std::int64_t kPanelRows = 256;

bool cpu_has_bf16() {
  static const bool has = [] {
    const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
    return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  }();
  return has;
}

bool cpu_is_amd() {
#if defined(__x86_64__)
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

// BF16 inputs where the CPU multiplies them faster than FP32. With AMX they are; with AVX512-BF16
// alone it depends on the core: on this project's Intel machines (Xeon model 207, AMX hidden by the
// hypervisor) oneDNN 2.6's brg:avx512_core_bf16 ran a 512 x 1024 x 2816 product at ~87 GFLOP/s a
// core against ~160 for brg:avx512_core in FP32 (CPU time, one thread), while AMD's AVX512-BF16
// cores run it at about twice FP32 (2-vCPU EPYC, family 26, 2 threads: 612-692 GFLOP/s BF16 against
// 345-362 FP32, `dsv3 bench`'s gemm rate). So BF16 is the default with AMX, and with AVX512-BF16 on
// an AMD CPU; FP32 on Intel without AMX. DSV3_GEMM=bf16 or f32 chooses otherwise.
std::atomic<int>& gemm_bf16_setting() {
  static std::atomic<int> setting = [] {
    const char* value = std::getenv("DSV3_GEMM");
    const std::string_view text = value ? value : "";
    if (text == "bf16") {
      if (!cpu_has_bf16()) fail("DSV3_GEMM=bf16: this CPU has neither AVX512-BF16 nor AMX");
      return 1;
    }
    if (text == "f32") return 0;
    if (!text.empty()) fail("DSV3_GEMM={}: expected bf16 or f32", text);
    if (dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx512_core_amx) return 1;
    return cpu_has_bf16() && cpu_is_amd() ? 1 : 0;
  }();
  return setting;
}

// As AVX512-BF16's conversion rounds: NaN quieted, denormals to zero of their sign, the rest to
// nearest with ties to even; so an element rounds the same in the vector loop and in its tail.
std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  if ((bits & 0x7f800000u) == 0) return static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<std::uint16_t>(bits >> 16);
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void to_bf16_avx512(const float* in, std::int64_t count,
                                                                                std::uint16_t* out) {
  std::int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(in + i + 16), _mm512_loadu_ps(in + i));
    _mm512_storeu_si512(out + i, reinterpret_cast<__m512i>(pair));
  }
  for (; i < count; ++i) out[i] = float_to_bf16(in[i]);
}
#endif


// One matmul shape: src [m, k] (rows k apart), weights [k, n] read from an [n, k] row-major panel,
// dst [m, n] with rows ldc apart.
struct Shape {
  std::int64_t m, n, k, ldc;
  bool bf16;
  auto tie() const { return std::tie(m, n, k, ldc, bf16); }
  bool operator<(const Shape& other) const { return tie() < other.tie(); }
};

struct Primitive {
  dnnl::matmul matmul;
  memory::desc src, weights, dst, scratchpad;
  std::size_t scratchpad_bytes = 0;
  std::string implementation;
};

// Panels of at most kPanelRows rows, as many as a multiple of the pool's threads, of equal size
// (in 16-row steps): in 3 panels of 256, a 768-row matrix (bench-1b's shared experts) kept one of 2
// cores idle a third of the time (dsv3 bench --profile: 41.7 -> 33.3 ms per prefill).
std::int64_t panel_rows_for(std::int64_t out_features, std::int64_t threads) {
  const std::int64_t panels = ((out_features + kPanelRows - 1) / kPanelRows + threads - 1) / threads * threads;
  return ((out_features + panels - 1) / panels + 15) / 16 * 16;
}

const dnnl::engine& engine() {
  static const dnnl::engine cpu(dnnl::engine::kind::cpu, 0);
  return cpu;
}

// Created once per shape, behind a lock; execution needs none (each call brings its own
// scratchpad). A server sees a new row count with almost every prompt length, so the cache keeps
// the kMaxPrimitives shapes used most recently; a caller holds its primitive by shared_ptr, so
// evicting one that another thread is running is safe.
constexpr std::size_t kMaxPrimitives = 256;

struct PrimitiveCache {
  struct Entry {
    std::shared_ptr<const Primitive> primitive;
    std::uint64_t last_use = 0;
  };
  std::mutex mutex;
  std::map<Shape, Entry> entries;
  std::uint64_t clock = 0;
};
PrimitiveCache& primitive_cache() {
  static PrimitiveCache cache;
  return cache;
}

std::shared_ptr<const Primitive> primitive(const Shape& shape) {
  PrimitiveCache& state = primitive_cache();
  std::lock_guard lock(state.mutex);
  auto& cache = state.entries;
  auto& clock = state.clock;
  PrimitiveCache::Entry& slot = cache[shape];
  slot.last_use = ++clock;
  if (!slot.primitive) {
    const auto type = shape.bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    auto made = std::make_shared<Primitive>();
    made->src = memory::desc({shape.m, shape.k}, type, memory::dims{shape.k, 1});
    made->weights = memory::desc({shape.k, shape.n}, type, memory::dims{1, shape.k});
    made->dst = memory::desc({shape.m, shape.n}, memory::data_type::f32, memory::dims{shape.ldc, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(made->src, made->weights, made->dst), attr, engine());
    made->implementation = pd.impl_info_str();
    made->scratchpad = pd.scratchpad_desc();
    made->scratchpad_bytes = made->scratchpad.get_size();
    made->matmul = dnnl::matmul(pd);
    slot.primitive = std::move(made);
    if (cache.size() > kMaxPrimitives) {
      auto oldest = cache.begin();
      for (auto it = cache.begin(); it != cache.end(); ++it)
        if (it->second.last_use < oldest->second.last_use) oldest = it;
      cache.erase(oldest);  // never the new one: it was used last
    }
  }
  return cache.at(shape).primitive;
}

// What a thread keeps between calls: oneDNN's single-threaded setting, its stream and its buffers.
struct ThreadState {
  ThreadState() : stream(engine()) { omp_set_num_threads(1); }
  dnnl::stream stream;
  std::vector<std::uint16_t> panel16;
  std::vector<float> panel32;
  std::vector<float> dst;
  std::vector<std::byte> scratchpad;
};
ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

void run(const Primitive& p, const void* src, const void* weights, float* dst) {
  ThreadState& state = thread_state();
  if (state.scratchpad.size() < p.scratchpad_bytes) state.scratchpad.resize(p.scratchpad_bytes);
  const dnnl::engine& cpu = engine();
  memory src_memory(p.src, cpu, const_cast<void*>(src));
  memory weights_memory(p.weights, cpu, const_cast<void*>(weights));
  memory dst_memory(p.dst, cpu, dst);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, src_memory}, {DNNL_ARG_WEIGHTS, weights_memory}, {DNNL_ARG_DST, dst_memory}};
  if (p.scratchpad_bytes > 0)
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(p.scratchpad, cpu, state.scratchpad.data()));
  p.matmul.execute(state.stream, args);
}

}  // namespace

void round_to_bf16(const float* in, std::int64_t count, std::uint16_t* out) {
#if defined(__x86_64__)
  if (cpu_has_bf16()) return to_bf16_avx512(in, count, out);
#endif
  for (std::int64_t i = 0; i < count; ++i) out[i] = float_to_bf16(in[i]);
}

void sgemm(bool b_transposed, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
           std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  thread_state();  // oneDNN single-threaded on this thread
  const dnnl::status status = dnnl::sgemm('N', b_transposed ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (status != dnnl::status::success) fail("oneDNN sgemm [{}, {}] x [{}, {}]: status {}", m, k, k, n, static_cast<int>(status));
}

std::size_t gemm_primitives_cached() {
  PrimitiveCache& state = primitive_cache();
  std::lock_guard lock(state.mutex);
  return state.entries.size();
}

void use_f32_gemm_unless_chosen() {
  if (std::getenv("DSV3_GEMM") == nullptr) set_gemm_bf16(false);
}

bool gemm_uses_bf16() { return gemm_bf16_setting().load(std::memory_order_relaxed) != 0; }

bool gemm_bf16_supported() { return cpu_has_bf16(); }

void set_gemm_bf16(bool bf16) {
  if (bf16 && !cpu_has_bf16()) fail("BF16 GEMM: this CPU has neither AVX512-BF16 nor AMX");
  gemm_bf16_setting().store(bf16 ? 1 : 0, std::memory_order_relaxed);
}

std::string gemm_implementation(std::int64_t rows, std::int64_t out_features, std::int64_t in_features) {
  const std::int64_t n = std::min(out_features, panel_rows_for(out_features, ThreadPool::global().size()));
  const Shape shape{rows, n, in_features, n, gemm_uses_bf16()};
  return primitive(shape)->implementation;
}

void linear_gemm(const float* x, std::int64_t rows, const Matrix& weight, float* y, const WeightKernels& kernels) {
  const std::int64_t out_features = weight.rows, in_features = weight.cols;
  const bool bf16 = gemm_uses_bf16();
  // The activations once in the GEMM's input type, shared by every panel's task.
  thread_local std::vector<std::uint16_t> x16;
  const void* src = x;
  if (bf16) {
    x16.resize(static_cast<std::size_t>(rows * in_features));
    round_to_bf16(x, rows * in_features, x16.data());
    src = x16.data();
  }
  const bool in_place = bf16 ? weight.dtype == DType::BF16 : weight.dtype == DType::F32;
  ThreadPool& pool = ThreadPool::global();
  const std::int64_t panel_rows = panel_rows_for(out_features, pool.size());
  const std::int64_t panels = (out_features + panel_rows - 1) / panel_rows;
  pool.parallel_for(panels, 1, [&](std::int64_t first, std::int64_t last) {
    ThreadState& state = thread_state();
    for (std::int64_t p = first; p < last; ++p) {
      const std::int64_t begin = p * panel_rows, end = std::min(out_features, begin + panel_rows);
      // oneDNN's fast kernels (brg:*) want a dense destination: a panel narrower than y goes
      // through a per-thread buffer.
      const bool direct = end - begin == out_features;
      const std::shared_ptr<const Primitive> held = primitive({rows, end - begin, in_features, end - begin, bf16});
      const Primitive& prim = *held;
      const void* panel = nullptr;
      if (in_place) {
        panel = static_cast<const std::byte*>(weight.data) + begin * in_features * dtype_size(weight.dtype);
      } else {
        state.panel32.resize(static_cast<std::size_t>(panel_rows * in_features));
        kernels.dequantize(weight, begin, end, state.panel32.data());
        panel = state.panel32.data();
        if (bf16) {
          state.panel16.resize(state.panel32.size());
          round_to_bf16(state.panel32.data(), (end - begin) * in_features, state.panel16.data());
          panel = state.panel16.data();
        }
      }
      if (direct) {
        run(prim, src, panel, y);
        continue;
      }
      state.dst.resize(static_cast<std::size_t>(rows * (end - begin)));
      run(prim, src, panel, state.dst.data());
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(y + r * out_features + begin, state.dst.data() + r * (end - begin),
                    static_cast<std::size_t>(end - begin) * sizeof(float));
    }
  });
}

}  // namespace dsv3::kernels
