// The op harness (DESIGN.md habit 3; llama.cpp's test-backend-ops is the model): every op of
// kernels::Backend, on every backend and every instruction-set path, on random inputs of awkward
// sizes, against its slow twin in kernels/reference.
//
// A backend plugs in with one line in kTargets below. The harness builds each input once on the
// host and copies it into memory from the backend's allocate() (weights, activations, cache
// pages); every copy between host and device memory goes through `to_device` and `to_host`, a
// memcpy today (the CPU's memory is host memory). A device with separate memory (CUDA) changes
// those two functions (or allocates host-visible memory), and nothing else.
//
// Tolerances. Every check is |got - want| <= c·u·M element by element, u = 2^-24 (float32's unit
// roundoff), M the accumulated magnitude of that element and c the length of its longest chain
// of float32 roundings. A float32 sum of n products, in any order and with or without FMA, lies
// within n·u·Σ|terms| of the exact sum (the recursive-summation bound holds for any summation
// tree), so M is Σ|terms|: the reference run on absolute values (Σ|x||w| for linear, Σ p|v| for
// attention), and c is the reduction length plus a few roundings for conversions, scales, exp and
// division. The reference itself is exact to float32 output rounding (double accumulation). The
// bounds are derived, not tuned, so no summation order or FMA use makes them flake, yet they stay
// far below what a real bug costs: a dropped, doubled or misplaced term, a wrong FP8 block scale,
// a key the mask should hide, each moves a result by about M/n or more, and n^2·u << 1 for the
// sizes here. Ops that only move or round values (embedding, add, copies, the cache, routing's
// choice, dispatch) must match exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "kernels/reference/reference.h"
#include "fast_arithmetic.h"
#include "support.h"

namespace dsv3 {
namespace {

using kernels::Backend;
using kernels::Tensor;
using test::random_values;

constexpr double kUnit = 0x1p-24;

// The backends under test, each on each of its instruction-set paths: a new device (CUDA) adds
// its line here, e.g. {"cuda", cuda_backend, std::nullopt}, and nothing else.
struct Target {
  const char* name;
  const Backend& (*backend)();
  std::optional<kernels::Isa> isa;  // the CPU weight kernels' path, forced for the test
};
const Target kTargets[] = {
    {"cpu_avx512", kernels::default_backend, kernels::Isa::avx512},
    {"cpu_avx2", kernels::default_backend, kernels::Isa::avx2},
    {"cpu_scalar", kernels::default_backend, kernels::Isa::scalar},
};

// ---------------------------------------------------------------------------------------------
// Memory on the device under test.

std::shared_ptr<std::byte> device_memory(const Backend& backend, std::size_t bytes) {
  return {static_cast<std::byte*>(backend.allocate(std::max<std::size_t>(bytes, 1))),
          [&backend](std::byte* data) { backend.release(data); }};
}

void to_device(void* device, const void* host, std::size_t bytes) { std::memcpy(device, host, bytes); }
void to_host(void* host, const void* device, std::size_t bytes) { std::memcpy(host, device, bytes); }

void upload(const std::vector<float>& values, Tensor t) {
  for (std::int64_t r = 0; r < t.rows; ++r)
    to_device(t.row(r), values.data() + r * t.cols, static_cast<std::size_t>(t.cols) * sizeof(float));
}

std::vector<float> download(Tensor t) {
  std::vector<float> values(static_cast<std::size_t>(t.rows * t.cols));
  for (std::int64_t r = 0; r < t.rows; ++r)
    to_host(values.data() + r * t.cols, t.row(r), static_cast<std::size_t>(t.cols) * sizeof(float));
  return values;
}

// Spare columns of a strided tensor hold this; ops writing a view must leave it.
constexpr float kSentinel = -1234.5f;

// A [rows, cols] float32 tensor in a backend's memory, rows `stride` floats apart (a column view
// of a wider buffer when stride > cols).
struct DeviceTensor {
  std::shared_ptr<std::byte> memory;
  Tensor view;
  DeviceTensor(const Backend& backend, std::int64_t rows, std::int64_t cols, std::int64_t stride = 0) {
    stride = std::max(stride, cols);
    memory = device_memory(backend, static_cast<std::size_t>(std::max<std::int64_t>(rows, 1) * stride) * sizeof(float));
    view = {reinterpret_cast<float*>(memory.get()), rows, cols, stride};
    const std::vector<float> fill(static_cast<std::size_t>(rows * stride), kSentinel);
    upload(fill, Tensor(view.data, rows, stride));
  }
  DeviceTensor(const Backend& backend, const std::vector<float>& values, std::int64_t rows, std::int64_t cols,
               std::int64_t stride = 0)
      : DeviceTensor(backend, rows, cols, stride) {
    upload(values, view);
  }
  std::vector<float> values() const { return download(view); }
  bool spare_columns_intact() const {
    const std::vector<float> all = download(Tensor(view.data, view.rows, view.stride));
    for (std::int64_t r = 0; r < view.rows; ++r)
      for (std::int64_t c = view.cols; c < view.stride; ++c)
        if (std::bit_cast<std::uint32_t>(all[r * view.stride + c]) != std::bit_cast<std::uint32_t>(kSentinel))
          return false;
    return true;
  }
};

// A weight built once on the host and copied to each backend.
struct HostWeight {
  std::string name;
  DType dtype = DType::F32;
  std::int64_t rows = 0, cols = 0;
  std::vector<std::byte> bytes;
  std::shared_ptr<const std::vector<float>> scales;

  Matrix on(const Backend& backend) const {
    auto memory = device_memory(backend, bytes.size());
    to_device(memory.get(), bytes.data(), bytes.size());
    Matrix m;
    m.name = name;
    m.dtype = dtype;
    m.rows = rows;
    m.cols = cols;
    m.data = memory.get();
    m.scales = scales;
    m.owner = memory;
    return m;
  }
  // |weight|, element by element: the sign bit cleared in every dtype (scales are positive).
  HostWeight absolute() const {
    HostWeight a = *this;
    const std::size_t size = dtype_size(dtype);
    for (std::size_t i = size - 1; i < a.bytes.size(); i += size) a.bytes[i] &= std::byte{0x7f};
    return a;
  }
};

std::int64_t scale_blocks(std::int64_t n) { return (n + 127) / 128; }

// A random [rows, cols] weight in `dtype` with values about normal(0, 1/cols). FP8 codes span
// the format's range and the 128x128 block scales differ by up to 2^6 from block to block, so a
// scale taken from the wrong block is an error the size of that block's terms.
HostWeight random_weight(DType dtype, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  HostWeight w{"weight." + std::string(dtype_name(dtype)), dtype, rows, cols, {}, {}};
  const std::vector<float> values =
      random_values(static_cast<std::size_t>(rows * cols), seed, 1.0f / std::sqrt(static_cast<float>(cols)));
  w.bytes.resize(values.size() * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::F32:
        std::memcpy(w.bytes.data() + 4 * i, &values[i], 4);
        break;
      case DType::BF16:
      case DType::F16: {
        const std::uint16_t bits = dtype == DType::BF16 ? float_to_bf16(values[i]) : float_to_f16(values[i]);
        std::memcpy(w.bytes.data() + 2 * i, &bits, 2);
        break;
      }
      case DType::F8_E4M3:
        w.bytes[i] = static_cast<std::byte>(float_to_fp8_e4m3(values[i] * std::sqrt(static_cast<float>(cols)) * 100.0f));
        break;
      default:
        ADD_FAILURE() << "not a weight dtype";
    }
  }
  if (dtype == DType::F8_E4M3) {
    std::vector<float> scales(static_cast<std::size_t>(scale_blocks(rows) * scale_blocks(cols)));
    for (std::size_t b = 0; b < scales.size(); ++b)
      scales[b] = std::ldexp(1.0f, static_cast<int>((b * 3 + seed) % 7) - 3) / (100.0f * std::sqrt(static_cast<float>(cols)));
    w.scales = std::make_shared<const std::vector<float>>(std::move(scales));
  }
  return w;
}

const DType kWeightDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3};

std::vector<float> absolute(std::vector<float> values) {
  for (float& v : values) v = std::fabs(v);
  return values;
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

// Fails unless |got - want| <= tolerance * magnitude for every element of a [rows, cols] result,
// naming the worst element.
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& magnitude,
                   double tolerance, std::int64_t cols, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(magnitude.size(), want.size()) << what;
  std::int64_t bad = 0, worst = -1;
  double worst_ratio = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double error = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double bound = tolerance * magnitude[i];
    if (!(error <= bound)) {
      ++bad;
      const double ratio = bound > 0 ? error / bound : INFINITY;
      if (worst < 0 || !(ratio <= worst_ratio)) worst_ratio = ratio, worst = static_cast<std::int64_t>(i);
    }
  }
  if (bad > 0)
    ADD_FAILURE() << what << ": " << bad << " of " << got.size() << " values outside " << tolerance
                  << " x magnitude; worst at [" << worst / cols << ", " << worst % cols << "]: got " << got[worst]
                  << ", want " << want[worst] << ", magnitude " << magnitude[worst];
}

// Exact equality (bit for bit), naming the first difference.
void expect_identical(const std::vector<float>& got, const std::vector<float>& want, std::int64_t cols,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::int64_t bad = 0, first = -1;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(want[i])) {
      if (first < 0) first = static_cast<std::int64_t>(i);
      ++bad;
    }
  if (bad > 0)
    ADD_FAILURE() << what << ": " << bad << " of " << got.size() << " values differ; first at [" << first / cols
                  << ", " << first % cols << "]: got " << got[first] << ", want " << want[first];
}

std::string describe(std::string_view op, std::initializer_list<std::pair<const char*, std::int64_t>> sizes) {
  std::string text(op);
  for (const auto& [name, value] : sizes) text += " " + std::string(name) + "=" + std::to_string(value);
  return text;
}

// The reference's results for a case depend only on the case's inputs, which every target shares,
// so each is computed once per process (one static map per call site: `compute` is a lambda).
template <typename Compute>
const std::invoke_result_t<Compute>& reference_once(const std::string& key, Compute&& compute) {
  static std::map<std::string, std::invoke_result_t<Compute>> results;
  auto found = results.find(key);
  if (found == results.end()) found = results.emplace(key, compute()).first;
  return found->second;
}

// ---------------------------------------------------------------------------------------------
// The harness.

class OpHarness : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    if (const auto isa = GetParam().isa) {
      if (!kernels::isa_supported(*isa)) GTEST_SKIP() << "this machine has no " << kernels::isa_name(*isa) << " path";
      kernels::set_isa_for_testing(*isa);
    }
  }
  void TearDown() override {
    if (GetParam().isa) kernels::set_isa_for_testing(std::nullopt);
  }
  const Backend& device() const { return GetParam().backend(); }
  const Backend& reference() const { return kernels::reference_backend(); }
};

const std::int64_t kRows[] = {1, 7, 129, 1000};

TEST_P(OpHarness, EmbeddingWidensEveryDtypeExactlyAndZeroRowGivesZeros) {
  // 300 x 200: FP8 blocks partial in both dimensions (128 + 128 + 44, 128 + 72).
  constexpr std::int64_t vocab = 300, hidden = 200;
  for (DType dtype : kWeightDtypes) {
    const HostWeight table = random_weight(dtype, vocab, hidden, 11);
    const Matrix on_device = table.on(device()), on_reference = table.on(reference());
    for (std::int64_t rows : kRows) {
      const std::string what = describe(std::string("embedding ") + std::string(dtype_name(dtype)), {{"rows", rows}});
      std::mt19937_64 generator(rows);
      std::vector<std::int64_t> ids(static_cast<std::size_t>(rows));
      for (auto& id : ids) id = static_cast<std::int64_t>(generator() % vocab);
      ids.front() = vocab - 1;  // the last row: the partial block of scales
      if (rows > 1) ids[1] = Backend::kZeroRow;
      if (rows > 2) ids.back() = 0;
      DeviceTensor got(device(), rows, hidden), want(reference(), rows, hidden);
      device().embedding(on_device, ids, got.view);
      reference().embedding(on_reference, ids, want.view);
      expect_identical(got.values(), want.values(), hidden, what);
      if (rows > 1) {
        const std::vector<float> values = got.values();
        EXPECT_TRUE(std::all_of(values.begin() + hidden, values.begin() + 2 * hidden, [](float v) { return v == 0.0f; }))
            << what << ": kZeroRow";
      }
    }
    const std::vector<std::int64_t> outside = {3, vocab};
    DeviceTensor out(device(), 2, hidden);
    EXPECT_THROW(device().embedding(on_device, outside, out.view), Error) << dtype_name(dtype);
  }
}

TEST_P(OpHarness, LinearMatchesForEveryDtypeRowCountAndPartialFp8Block) {
  struct Case {
    std::int64_t rows, out, in;
  };
  // (200, 300): FP8 scale blocks partial in both dimensions; (37, 19): nothing a multiple of 16.
  std::vector<Case> cases;
  for (std::int64_t rows : {1, 7, 129}) cases.push_back({rows, 200, 300}), cases.push_back({rows, 37, 19});
  cases.push_back({1000, 136, 130});
  for (DType dtype : kWeightDtypes)
    for (const Case& c : cases) {
      const std::string what =
          describe(std::string("linear ") + std::string(dtype_name(dtype)), {{"rows", c.rows}, {"out", c.out}, {"in", c.in}});
      const HostWeight w = random_weight(dtype, c.out, c.in, static_cast<std::uint64_t>(c.rows + c.out));
      const std::vector<float> x = random_values(static_cast<std::size_t>(c.rows * c.in), 7 + c.rows);
      DeviceTensor x_device(device(), x, c.rows, c.in), y_device(device(), c.rows, c.out);
      device().linear(x_device.view, w.on(device()), y_device.view);
      const auto& [want, magnitude] = reference_once(what, [&] {
        DeviceTensor x_reference(reference(), x, c.rows, c.in), y_reference(reference(), c.rows, c.out);
        reference().linear(x_reference.view, w.on(reference()), y_reference.view);
        DeviceTensor x_absolute(reference(), absolute(x), c.rows, c.in), magnitude(reference(), c.rows, c.out);
        reference().linear(x_absolute.view, w.absolute().on(reference()), magnitude.view);
        return std::pair{y_reference.values(), magnitude.values()};
      });
      // `in` products summed, plus the FP8 scale and a rescaled activation.
      expect_within(y_device.values(), want, magnitude, (c.in + 4) * kUnit, c.out, what);
    }
}

// Fast mode: from min_gemm_rows() rows on, linear goes through oneDNN's GEMM (the FP8 panels
// dequantised by this target's kernels). FP32 inputs hold exact mode's bound (any order of the
// sums); BF16 inputs add up to 2^-8 relative to each of x and w: (2 * 2^-8 + 2^-16) more.
TEST_P(OpHarness, LinearThroughTheGemmMatchesInFastMode) {
  const std::int64_t threshold = kernels::min_gemm_rows();
  struct Case {
    std::int64_t rows, out, in;
  };
  const Case cases[] = {{threshold, 200, 300}, {threshold + 97, 37, 19}, {1000, 300, 130}, {threshold, 600, 64}};
  for (const bool bf16 : {false, true}) {
    if (bf16 && !kernels::gemm_bf16_supported()) continue;
    test::FastArithmetic fast(bf16, threshold);
    for (DType dtype : kWeightDtypes)
      for (const Case& c : cases) {
        const std::string what = describe(std::string("fast linear ") + (bf16 ? "bf16 gemm " : "f32 gemm ") +
                                              std::string(dtype_name(dtype)),
                                          {{"rows", c.rows}, {"out", c.out}, {"in", c.in}});
        const HostWeight w = random_weight(dtype, c.out, c.in, static_cast<std::uint64_t>(c.rows + c.out));
        const std::vector<float> x = random_values(static_cast<std::size_t>(c.rows * c.in), 7 + c.rows);
        DeviceTensor x_device(device(), x, c.rows, c.in), y_device(device(), c.rows, c.out);
        device().linear(x_device.view, w.on(device()), y_device.view);
        DeviceTensor x_reference(reference(), x, c.rows, c.in), y_reference(reference(), c.rows, c.out);
        reference().linear(x_reference.view, w.on(reference()), y_reference.view);
        DeviceTensor x_absolute(reference(), absolute(x), c.rows, c.in), magnitude(reference(), c.rows, c.out);
        reference().linear(x_absolute.view, w.absolute().on(reference()), magnitude.view);
        const double tolerance = (c.in + 4) * kUnit + (bf16 ? 0x1p-7 + 0x1p-16 : 0.0);
        expect_within(y_device.values(), y_reference.values(), magnitude.values(), tolerance, c.out, what);
      }
  }
}

TEST_P(OpHarness, LinearUnderTheFp8RecipeRoundsItsInputIn1x128Tiles) {
  // Training's FP8 recipe: each row's inputs go through E4M3 per 128 values (the last tile partial),
  // each tile scaled by its own amax / 448. Tiles of very different magnitudes show a shared scale.
  constexpr std::int64_t rows = 7, out = 37, in = 300;
  const HostWeight w = random_weight(DType::F32, out, in, 5);
  std::vector<float> x = random_values(rows * in, 6);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 128; c < 256; ++c) x[static_cast<std::size_t>(r * in + c)] *= 1e-3f;
  auto run = [&](const Backend& backend, bool fp8) {
    Matrix m = w.on(backend);
    m.fp8_input_tiles = fp8;
    DeviceTensor x_on(backend, x, rows, in), y_on(backend, rows, out);
    backend.linear(x_on.view, m, y_on.view);
    return y_on.values();
  };
  const std::vector<float> got = run(device(), true), want = run(reference(), true), plain = run(reference(), false);
  DeviceTensor x_absolute(reference(), absolute(x), rows, in), magnitude(reference(), rows, out);
  reference().linear(x_absolute.view, w.absolute().on(reference()), magnitude.view);
  expect_within(got, want, magnitude.values(), (in + 4) * kUnit, out, "linear with fp8_input_tiles");
  // The rounding is visible: E4M3 keeps 3 mantissa bits, so results move by far more than FP32 noise.
  double moved = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) moved = std::max(moved, std::abs(static_cast<double>(got[i]) - plain[i]));
  EXPECT_GT(moved, 1e-3) << "fp8_input_tiles changed nothing";
}

TEST_P(OpHarness, LinearOnColumnViewsComputesOrRefuses) {
  // A device may refuse strided activations (the CPU's GEMV and BLAS paths want contiguous rows),
  // but must say so rather than read them as contiguous.
  constexpr std::int64_t rows = 7, out = 37, in = 19;
  const HostWeight w = random_weight(DType::BF16, out, in, 3);
  const std::vector<float> x = random_values(rows * in, 4);
  DeviceTensor x_device(device(), x, rows, in, in + 5), y_device(device(), rows, out, out + 3);
  try {
    device().linear(x_device.view, w.on(device()), y_device.view);
  } catch (const Error&) {
    return;
  }
  DeviceTensor x_reference(reference(), x, rows, in), y_reference(reference(), rows, out);
  reference().linear(x_reference.view, w.on(reference()), y_reference.view);
  DeviceTensor x_absolute(reference(), absolute(x), rows, in), magnitude(reference(), rows, out);
  reference().linear(x_absolute.view, w.absolute().on(reference()), magnitude.view);
  expect_within(y_device.values(), y_reference.values(), magnitude.values(), (in + 4) * kUnit, out, "linear on views");
  EXPECT_TRUE(y_device.spare_columns_intact()) << "linear wrote outside its output view";
}

TEST_P(OpHarness, RmsnormOnColumnViewsInPlaceAndNot) {
  // c_kv normalised inside a latent row [rows, 37 + 8].
  constexpr std::int64_t dim = 37, width = 45;
  const std::vector<float> weight = random_values(dim, 5);
  for (std::int64_t rows : kRows)
    for (bool in_place : {true, false}) {
      const std::string what = describe(in_place ? "rmsnorm in place" : "rmsnorm", {{"rows", rows}});
      const std::vector<float> x = random_values(static_cast<std::size_t>(rows * dim), rows, 3.0f);
      DeviceTensor x_device(device(), x, rows, dim, width), out_device(device(), rows, dim, width + 2);
      const Tensor out_view = in_place ? x_device.view : out_device.view;
      device().rmsnorm(x_device.view, weight, 1e-6f, out_view);
      DeviceTensor x_reference(reference(), x, rows, dim), want(reference(), rows, dim);
      reference().rmsnorm(x_reference.view, weight, 1e-6f, want.view);
      // The mean of `dim` squares, a square root and a division, then two products.
      const std::vector<float> reference_values = want.values();
      expect_within(download(out_view), reference_values, absolute(reference_values), (dim / 2 + 8) * kUnit, dim, what);
      EXPECT_TRUE(x_device.spare_columns_intact() && out_device.spare_columns_intact()) << what << ": wrote outside the view";
    }
}

TEST_P(OpHarness, RopeBothLayoutsWithYarnFrequenciesAndAttentionFactor) {
  struct Case {
    std::int64_t heads, nope, rope;
  };
  // Queries [rows * heads, nope | rope] rotate the rope columns with heads rows per position;
  // keys (heads = 1) the k_rope columns of a latent row. rope 64 is DeepSeek-V3's.
  for (const Case& c : {Case{3, 5, 8}, Case{1, 37, 8}, Case{2, 3, 64}})
    for (bool interleaved : {true, false})
      for (std::int64_t rows : kRows) {
        const std::string what = describe(interleaved ? "rope interleaved" : "rope rotate-half",
                                          {{"rows", rows}, {"heads", c.heads}, {"rope", c.rope}});
        // YaRN-like frequencies: the high ones kept, the low ones divided by 40, a ramp between.
        std::vector<double> inverse_frequencies(static_cast<std::size_t>(c.rope / 2));
        for (std::size_t i = 0; i < inverse_frequencies.size(); ++i) {
          const double base = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(c.rope));
          const double ramp = std::clamp((static_cast<double>(i) - 1.0) / 2.0, 0.0, 1.0);
          inverse_frequencies[i] = base * (1.0 - ramp) + base / 40.0 * ramp;
        }
        kernels::RopeParams params{inverse_frequencies, 0.1 * std::log(40.0) + 1.0, interleaved};
        std::mt19937_64 generator(rows);
        std::vector<std::int64_t> positions(static_cast<std::size_t>(rows));
        for (auto& p : positions) p = static_cast<std::int64_t>(generator() % 163840);  // YaRN's long context
        positions.front() = 0;
        const std::int64_t qk = c.nope + c.rope, x_rows = rows * c.heads;
        const std::vector<float> x = random_values(static_cast<std::size_t>(x_rows * qk), 9 + rows);
        DeviceTensor on_device(device(), x, x_rows, qk), on_reference(reference(), x, x_rows, qk);
        device().rope(on_device.view.columns(c.nope, qk), c.heads, positions, params);
        reference().rope(on_reference.view.columns(c.nope, qk), c.heads, positions, params);
        const std::vector<float> got = on_device.values(), want = on_reference.values();
        // Each output is a·cos - b·sin with cos and sin (times the factor) rounded once: its
        // magnitude is (|a| + |b|) · factor; the nope columns must not change at all.
        std::vector<float> magnitude(x.size(), 0.0f);
        const std::int64_t half = c.rope / 2;
        for (std::int64_t r = 0; r < x_rows; ++r)
          for (std::int64_t i = 0; i < half; ++i) {
            const std::int64_t a = c.nope + (interleaved ? 2 * i : i), b = c.nope + (interleaved ? 2 * i + 1 : i + half);
            const auto m = static_cast<float>((std::fabs(x[r * qk + a]) + std::fabs(x[r * qk + b])) * params.attention_factor);
            magnitude[r * qk + a] = magnitude[r * qk + b] = m;
          }
        expect_within(got, want, magnitude, 8 * kUnit, qk, what);
      }
}

TEST_P(OpHarness, ReadAddFillSwigluCopyAndGatherRowsOnViews) {
  constexpr std::int64_t cols = 37, stride = 41;
  for (std::int64_t rows : kRows) {
    const std::vector<float> a = random_values(static_cast<std::size_t>(rows * cols), rows, 3.0f);
    const std::vector<float> b = random_values(a.size(), rows + 1, 3.0f);
    {
      DeviceTensor x_device(device(), a, rows, cols, stride), y_device(device(), b, rows, cols);
      device().add(x_device.view, y_device.view);
      DeviceTensor x_reference(reference(), a, rows, cols), y_reference(reference(), b, rows, cols);
      reference().add(x_reference.view, y_reference.view);
      expect_identical(x_device.values(), x_reference.values(), cols, describe("add", {{"rows", rows}}));
      EXPECT_TRUE(x_device.spare_columns_intact()) << "add wrote outside its view";
    }
    {
      DeviceTensor x(device(), a, rows, cols, stride);
      std::vector<float> packed(a.size(), kSentinel);
      device().read(x.view, packed);
      expect_identical(packed, a, cols, describe("read", {{"rows", rows}}));
      EXPECT_THROW(device().read(x.view, std::span(packed).first(packed.size() - 1)), Error);
    }
    {
      DeviceTensor x(device(), a, rows, cols, stride);
      device().fill(x.view, -0.375f);
      expect_identical(x.values(), std::vector<float>(a.size(), -0.375f), cols, describe("fill", {{"rows", rows}}));
      EXPECT_TRUE(x.spare_columns_intact()) << "fill wrote outside its view";
    }
    for (bool in_place : {false, true}) {
      const std::string what = describe(in_place ? "swiglu in place" : "swiglu", {{"rows", rows}});
      DeviceTensor gate(device(), a, rows, cols, stride), up(device(), b, rows, cols), out(device(), rows, cols, stride);
      const Tensor out_view = in_place ? gate.view : out.view;
      device().swiglu(gate.view, up.view, out_view);
      DeviceTensor gate_reference(reference(), a, rows, cols), up_reference(reference(), b, rows, cols);
      reference().swiglu(gate_reference.view, up_reference.view, gate_reference.view);
      // silu(g)·up = g·up / (1 + exp(-g)): exp, a sum, a division and two products.
      const std::vector<float> want = gate_reference.values();
      expect_within(download(out_view), want, absolute(want), 8 * kUnit, cols, what);
      EXPECT_TRUE(gate.spare_columns_intact() && out.spare_columns_intact()) << what << ": wrote outside the view";
    }
    for (std::int64_t repeat : {1, 3}) {
      DeviceTensor src(device(), a, rows, cols, stride), dst(device(), rows * repeat, cols, stride);
      device().copy_rows(src.view, dst.view, repeat);
      std::vector<float> want(static_cast<std::size_t>(rows * repeat * cols));
      for (std::int64_t r = 0; r < rows * repeat; ++r) std::copy_n(a.begin() + (r / repeat) * cols, cols, want.begin() + r * cols);
      expect_identical(dst.values(), want, cols, describe("copy_rows", {{"rows", rows}, {"repeat", repeat}}));
      EXPECT_TRUE(dst.spare_columns_intact()) << "copy_rows wrote outside its view";
    }
    {
      constexpr std::int64_t source_rows = 200;
      const std::vector<float> source = random_values(source_rows * cols, 77);
      std::mt19937_64 generator(rows);
      std::vector<std::int64_t> picked(static_cast<std::size_t>(rows));
      for (auto& r : picked) r = static_cast<std::int64_t>(generator() % source_rows);  // repeats too
      picked.front() = source_rows - 1;
      DeviceTensor src(device(), source, source_rows, cols, stride), dst(device(), rows, cols, stride);
      device().gather_rows(src.view, picked, dst.view);
      std::vector<float> want(static_cast<std::size_t>(rows * cols));
      for (std::int64_t i = 0; i < rows; ++i) std::copy_n(source.begin() + picked[i] * cols, cols, want.begin() + i * cols);
      expect_identical(dst.values(), want, cols, describe("gather_rows", {{"rows", rows}}));
      EXPECT_TRUE(dst.spare_columns_intact()) << "gather_rows wrote outside its view";
    }
  }
}

TEST_P(OpHarness, MatmulBothTransposesWithBetaAndLeadingDimensions) {
  struct Case {
    std::int64_t m, n, k;
    bool b_transposed;
    float beta;
  };
  for (const Case& c : {Case{7, 37, 129, false, 0.0f}, Case{129, 19, 1000, true, 0.5f}, Case{1, 1000, 7, true, 0.0f},
                        Case{1000, 7, 37, false, 1.0f}, Case{7, 129, 19, true, -2.0f}}) {
    const std::string what = fmt::format(
        "{} beta={}", describe(c.b_transposed ? "matmul b transposed" : "matmul", {{"m", c.m}, {"n", c.n}, {"k", c.k}}),
        c.beta);
    // Leading dimensions beyond the rows' widths: the spare columns must stay untouched.
    const std::int64_t b_rows = c.b_transposed ? c.n : c.k, b_cols = c.b_transposed ? c.k : c.n;
    const std::vector<float> a = random_values(static_cast<std::size_t>(c.m * c.k), c.m);
    const std::vector<float> b = random_values(static_cast<std::size_t>(b_rows * b_cols), c.n);
    const std::vector<float> c0 = random_values(static_cast<std::size_t>(c.m * c.n), c.k);
    kernels::MatmulShape shape{c.m, c.n, c.k, c.k + 3, b_cols + 5, c.n + 2, c.b_transposed, c.beta};
    auto run = [&](const Backend& backend, const std::vector<float>& a_values, const std::vector<float>& b_values,
                   const std::vector<float>& c_values) {
      DeviceTensor a_tensor(backend, a_values, c.m, c.k, shape.lda), b_tensor(backend, b_values, b_rows, b_cols, shape.ldb);
      DeviceTensor c_tensor(backend, c_values, c.m, c.n, shape.ldc);
      backend.matmul(a_tensor.view.data, b_tensor.view.data, c_tensor.view.data, shape);
      EXPECT_TRUE(c_tensor.spare_columns_intact()) << what << ": wrote beyond n";
      return c_tensor.values();
    };
    const std::vector<float> got = run(device(), a, b, c0), want = run(reference(), a, b, c0);
    // Σ|a||b| + |beta c|.
    std::vector<float> bound = run(reference(), absolute(a), absolute(b), std::vector<float>(c0.size(), 0.0f));
    for (std::size_t i = 0; i < bound.size(); ++i) bound[i] += std::fabs(c.beta * c0[i]);
    expect_within(got, want, bound, (c.k + 4) * kUnit, c.n, what);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention.

// The bound for softmax attention (see "Tolerances"): a score over `dim` products is off by at
// most (dim + 1)·u·S, S = scale · max|q| · max|k| (Cauchy-Schwarz bounds Σ|q_d k_d|); exp turns
// score errors into relative errors of the weights (twice: the score and the maximum), and the
// normaliser and the weighted sum of values each add `keys` roundings. Relative to Σ p |v|.
double attention_tolerance(std::int64_t dim, double score_bound, std::int64_t keys) {
  return (4.0 * (static_cast<double>(dim) + 1.0) * score_bound + 2.0 * static_cast<double>(keys) + 16.0) * kUnit;
}

double max_norm(const std::vector<float>& values, std::int64_t rows, std::int64_t stride, std::int64_t offset,
                std::int64_t heads, std::int64_t head_stride, std::int64_t dim) {
  double best = 0.0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t h = 0; h < heads; ++h) {
      double squares = 0.0;
      for (std::int64_t d = 0; d < dim; ++d) {
        const double v = values[r * stride + offset + h * head_stride + d];
        squares += v * v;
      }
      best = std::max(best, std::sqrt(squares));
    }
  return best;
}

TEST_P(OpHarness, CausalAttentionWithACachedPrefixHidesLaterKeys) {
  // MLA's expanded form: q and k [positions, heads, nope + rope], v read in place from kv_b_proj's
  // packed output [positions, heads, nope + v] at offset nope. Nothing a multiple of 16.
  constexpr std::int64_t heads = 3, nope = 13, rope = 8, v_dim = 19, qk = nope + rope, kv_dim = nope + v_dim;
  struct Case {
    std::int64_t tokens, query_offset;
  };
  // query_offset > 0 is chunked prefill past a cached prefix (and every prefix-cache hit): the
  // queries sit at query_offset + i and must not see the keys after them.
  for (const Case& c : {Case{1, 0}, Case{1, 700}, Case{7, 0}, Case{7, 130}, Case{129, 0}, Case{129, 40}, Case{1000, 24}}) {
    const std::string what = describe("attention_causal", {{"tokens", c.tokens}, {"query_offset", c.query_offset}});
    const std::int64_t keys = c.query_offset + c.tokens;
    const float scale = 0.8f / std::sqrt(static_cast<float>(qk));
    const std::vector<float> q = random_values(static_cast<std::size_t>(c.tokens * heads * qk), c.tokens, 0.5f);
    const std::vector<float> k = random_values(static_cast<std::size_t>(keys * heads * qk), keys + 1);
    const std::vector<float> kv = random_values(static_cast<std::size_t>(keys * heads * kv_dim), keys + 2);
    kernels::AttentionShape shape;
    shape.tokens = c.tokens;
    shape.query_offset = c.query_offset;
    shape.heads = heads;
    shape.qk_dim = qk;
    shape.v_dim = v_dim;
    shape.q_stride = shape.k_stride = heads * qk;
    shape.q_head_stride = shape.k_head_stride = qk;
    shape.v_stride = heads * kv_dim;
    shape.v_head_stride = kv_dim;
    auto run = [&](const Backend& backend, const std::vector<float>& kv_values) {
      DeviceTensor q_tensor(backend, q, c.tokens, heads * qk), k_tensor(backend, k, keys, heads * qk);
      DeviceTensor kv_tensor(backend, kv_values, keys, heads * kv_dim), out(backend, c.tokens, heads * v_dim);
      backend.attention_causal(q_tensor.view.data, k_tensor.view.data, kv_tensor.view.data + nope, shape, scale,
                               out.view.data);
      return out.values();
    };
    const std::vector<float> got = run(device(), kv);
    const auto& [want, magnitude, tolerance] = reference_once(what, [&] {
      const double score_bound = scale * max_norm(q, c.tokens, heads * qk, 0, heads, qk, qk) *
                                 max_norm(k, keys, heads * qk, 0, heads, qk, qk);
      // Σ p |v|: the weights p depend on q and k only.
      return std::tuple{run(reference(), kv), run(reference(), absolute(kv)), attention_tolerance(qk, score_bound, keys)};
    });
    expect_within(got, want, magnitude, tolerance, heads * v_dim, what);
  }
}

// A pool of latent cache pages on the host, copied to each backend: `blocks` blocks of
// block_tokens rows for each of `layers` layers, as LatentCache lays them out.
struct LatentPool {
  DType dtype = DType::F32;
  std::int64_t width = 0, block_tokens = 0, layers = 0, blocks = 0;
  std::vector<std::byte> bytes;

  LatentPool(DType dtype, std::int64_t width, std::int64_t block_tokens, std::int64_t layers, std::int64_t blocks)
      : dtype(dtype), width(width), block_tokens(block_tokens), layers(layers), blocks(blocks),
        bytes(static_cast<std::size_t>(blocks * layers * block_tokens * width) * dtype_size(dtype), std::byte{0xa5}) {}
  void fill_random(std::uint64_t seed) {
    const std::vector<float> values = random_values(bytes.size() / dtype_size(dtype), seed);
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::F32) {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      } else {
        const std::uint16_t bits = float_to_bf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &bits, 2);
      }
    }
  }
  std::shared_ptr<std::byte> on(const Backend& backend) const {
    auto memory = device_memory(backend, bytes.size());
    to_device(memory.get(), bytes.data(), bytes.size());
    return memory;
  }
  kernels::LatentPages pages(std::byte* storage, std::int64_t layer, std::span<const std::int32_t> table) const {
    return {storage, dtype, width, block_tokens, layers * block_tokens, layer * block_tokens, table};
  }
};

// Distinct random block tables of `pages` blocks each from a pool: sequences' pages interleave.
std::vector<std::vector<std::int32_t>> block_tables(std::int64_t pool_blocks, std::initializer_list<std::int64_t> pages,
                                                    std::uint64_t seed) {
  std::vector<std::int32_t> free(static_cast<std::size_t>(pool_blocks));
  std::iota(free.begin(), free.end(), 0);
  std::shuffle(free.begin(), free.end(), std::mt19937_64(seed));
  std::vector<std::vector<std::int32_t>> tables;
  std::size_t next = 0;
  for (std::int64_t count : pages) {
    tables.emplace_back(free.begin() + static_cast<std::ptrdiff_t>(next), free.begin() + static_cast<std::ptrdiff_t>(next + count));
    next += static_cast<std::size_t>(count);
  }
  return tables;
}

// Values whose BF16 rounding is a tie (and its neighbours): round to nearest even must be kept.
std::vector<float> with_bf16_ties(std::vector<float> values) {
  const std::uint32_t patterns[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0xbf818000u, 0x3f807fffu, 0x3f808001u,
                                    0x7f7f8000u, 0x00008000u};
  for (std::size_t i = 0; i < values.size(); i += 5) values[i] = std::bit_cast<float>(patterns[(i / 5) % 8]);
  return values;
}

TEST_P(OpHarness, CacheStoreAndLoadRoundTripAcrossPagesExactly) {
  constexpr std::int64_t width = 45, layers = 3, layer = 1;
  for (DType dtype : {DType::F32, DType::BF16})
    for (std::int64_t block_tokens : {16, 5}) {
      const std::string what = describe(std::string("cache ") + std::string(dtype_name(dtype)), {{"block_tokens", block_tokens}});
      // Chunks of 1, 7, 129 and 1000 rows, as prefill and decode steps write them.
      const std::int64_t positions = 1 + 7 + 129 + 1000;
      const std::int64_t pages = (positions + block_tokens - 1) / block_tokens;
      const LatentPool pool(dtype, width, block_tokens, layers, pages + 9);
      const auto tables = block_tables(pool.blocks, {pages}, block_tokens);
      const std::vector<float> rows = with_bf16_ties(random_values(static_cast<std::size_t>(positions * width), 21));
      auto run = [&](const Backend& backend) {
        const auto storage = pool.on(backend);
        const kernels::LatentPages latent = pool.pages(storage.get(), layer, tables[0]);
        std::int64_t first = 0;
        for (std::int64_t count : {1, 7, 129, 1000}) {
          std::vector<float> chunk(rows.begin() + first * width, rows.begin() + (first + count) * width);
          DeviceTensor chunk_tensor(backend, chunk, count, width, width + 3);  // a view of wider rows
          backend.cache_store(latent, first, chunk_tensor.view);
          first += count;
        }
        DeviceTensor all(backend, positions, width), part(backend, 13, width);
        backend.cache_load(latent, all.view);
        backend.cache_load(latent, part.view);  // ends inside a page
        std::vector<std::byte> bytes(pool.bytes.size());
        to_host(bytes.data(), storage.get(), bytes.size());
        return std::tuple{bytes, all.values(), part.values()};
      };
      const auto [got_bytes, got_all, got_part] = run(device());
      const auto [want_bytes, want_all, want_part] = run(reference());
      // Byte for byte, other layers' and blocks' rows included: no stray writes, the same rounding.
      EXPECT_TRUE(got_bytes == want_bytes) << what << ": the pages differ from the reference's";
      expect_identical(got_all, want_all, width, what + " load");
      expect_identical(got_part, std::vector<float>(want_all.begin(), want_all.begin() + 13 * width), width,
                       what + " partial load");
      std::vector<float> stored = rows;
      if (dtype == DType::BF16)
        for (float& v : stored) v = bf16_to_float(float_to_bf16(v));
      expect_identical(want_all, stored, width, what + " reference against the rounding of its input");
    }
}

TEST_P(OpHarness, LatentAttentionOverPagesOfSeveralSequences) {
  // heads 4, c_kv 37 + k_rope 8 per cached row.
  kernels::MlaShape shape{.heads = 4, .nope = 13, .rope = 8, .v = 11, .kv_lora = 37};
  const std::int64_t width = shape.width();
  const float scale = 0.8f / std::sqrt(static_cast<float>(shape.qk()));
  for (DType dtype : {DType::F32, DType::BF16})
    for (std::int64_t block_tokens : {16, 7}) {
      // Sequence A: 700 keys, one decoding row over a long context that a device splits into key
      // ranges and merges; B: 640 keys, a chunk of many rows; C: 17 keys, one past a page.
      const std::int64_t a_keys = 700, b_keys = 640, c_keys = 17;
      auto pages_for = [&](std::int64_t keys) { return (keys + block_tokens - 1) / block_tokens; };
      const std::int64_t used = pages_for(a_keys) + pages_for(b_keys) + pages_for(c_keys);
      constexpr std::int64_t layers = 2, layer = 1;
      LatentPool pool(dtype, width, block_tokens, layers, used + 5);
      pool.fill_random(block_tokens);  // every block holds plausible rows: a wrong page is a wrong value
      const auto tables = block_tables(pool.blocks, {pages_for(a_keys), pages_for(b_keys), pages_for(c_keys)}, 3);
      struct RowSpec {
        std::int64_t sequence, keys;
      };
      for (std::int64_t rows : kRows) {
        std::vector<RowSpec> specs;
        if (rows == 1) specs = {{0, a_keys}};
        if (rows == 7) specs = {{0, a_keys}, {1, 1}, {1, 2}, {2, c_keys}, {0, a_keys - 1}, {2, 16}, {1, 3}};
        if (rows == 129)
          for (std::int64_t i = 0; i < rows; ++i) specs.push_back({1, b_keys - 128 + i});
        if (rows == 1000)
          for (std::int64_t i = 0; i < rows; ++i) specs.push_back({i % 3, 1 + (i * 7) % (i % 3 == 2 ? c_keys : 40)});
        const std::string what = describe(std::string("attention_latent ") + std::string(dtype_name(dtype)),
                                          {{"rows", rows}, {"block_tokens", block_tokens}});
        const std::vector<float> q = random_values(static_cast<std::size_t>(rows * shape.heads * width), rows, 0.5f);
        auto run = [&](const Backend& backend) {
          const auto storage = pool.on(backend);
          std::vector<kernels::LatentPages> pages;
          for (const auto& table : tables) pages.push_back(pool.pages(storage.get(), layer, table));
          std::vector<kernels::LatentQuery> queries;
          for (const RowSpec& spec : specs) queries.push_back({&pages[spec.sequence], spec.keys});
          DeviceTensor q_latent(backend, q, rows, shape.heads * width), o_latent(backend, rows, shape.heads * shape.kv_lora);
          kernels::Workspace workspace(backend);
          backend.attention_latent(q_latent.view, queries, shape, scale, o_latent.view, workspace);
          return o_latent.values();
        };
        const std::vector<float> got = run(device());
        const auto& [want, magnitude, tolerance] = reference_once(what, [&] {
          // Magnitude per (row, head, c): max over the row's keys of |c_kv[c]| bounds Σ p |v|.
          const auto storage = pool.on(reference());
          std::vector<std::vector<float>> cached;
          for (const auto& table : tables) {
            DeviceTensor rows_tensor(reference(), static_cast<std::int64_t>(table.size()) * block_tokens, width);
            reference().cache_load(pool.pages(storage.get(), layer, table), rows_tensor.view);
            cached.push_back(rows_tensor.values());
          }
          std::vector<float> magnitude(static_cast<std::size_t>(rows * shape.heads * shape.kv_lora), 0.0f);
          double key_norm = 0.0;
          std::int64_t most_keys = 0;
          for (std::int64_t r = 0; r < rows; ++r) {
            const RowSpec& spec = specs[static_cast<std::size_t>(r)];
            most_keys = std::max(most_keys, spec.keys);
            key_norm = std::max(key_norm, max_norm(cached[spec.sequence], spec.keys, width, 0, 1, 0, width));
            float* row = magnitude.data() + r * shape.heads * shape.kv_lora;
            for (std::int64_t j = 0; j < spec.keys; ++j)
              for (std::int64_t c = 0; c < shape.kv_lora; ++c) row[c] = std::max(row[c], std::fabs(cached[spec.sequence][j * width + c]));
            for (std::int64_t h = 1; h < shape.heads; ++h) std::copy_n(row, shape.kv_lora, row + h * shape.kv_lora);
          }
          const double score_bound = scale * max_norm(q, rows, shape.heads * width, 0, shape.heads, width, width) * key_norm;
          return std::tuple{run(reference()), magnitude, attention_tolerance(width, score_bound, most_keys)};
        });
        expect_within(got, want, magnitude, tolerance, shape.heads * shape.kv_lora, what);
      }
    }
}

TEST_P(OpHarness, MlaAbsorbQueryAndOutputForEveryDtype) {
  // kv_b_proj [heads (nope + v), kv_lora] = [132, 136]: FP8 blocks partial in both dimensions,
  // and head 2's rows (88 .. 131) cross the 128-row block boundary.
  kernels::MlaShape shape{.heads = 3, .nope = 27, .rope = 8, .v = 17, .kv_lora = 136};
  const std::int64_t q_cols = shape.heads * shape.qk(), latent_cols = shape.heads * shape.width();
  const std::int64_t o_cols = shape.heads * shape.kv_lora, out_cols = shape.heads * shape.v;
  for (DType dtype : kWeightDtypes) {
    const HostWeight kv_b_proj = random_weight(dtype, shape.heads * (shape.nope + shape.v), shape.kv_lora, 31);
    const HostWeight kv_b_absolute = kv_b_proj.absolute();
    for (std::int64_t rows : kRows) {
      if (rows == 1000 && (dtype == DType::F32 || dtype == DType::F16)) continue;  // runtime; BF16 and FP8 cover it
      const std::string what = describe(std::string("mla_absorb ") + std::string(dtype_name(dtype)), {{"rows", rows}});
      const std::vector<float> q = random_values(static_cast<std::size_t>(rows * q_cols), rows);
      const std::vector<float> o = random_values(static_cast<std::size_t>(rows * o_cols), rows + 1);
      auto run = [&](const Backend& backend, const HostWeight& weight, const std::vector<float>& q_values,
                     const std::vector<float>& o_values) {
        const Matrix w = weight.on(backend);
        kernels::Workspace workspace(backend);
        DeviceTensor q_tensor(backend, q_values, rows, q_cols), q_latent(backend, rows, latent_cols);
        backend.mla_absorb_query(q_tensor.view, w, shape, q_latent.view, workspace);
        DeviceTensor o_tensor(backend, o_values, rows, o_cols), out(backend, rows, out_cols);
        backend.mla_absorb_output(o_tensor.view, w, shape, out.view, workspace);
        return std::pair{q_latent.values(), out.values()};
      };
      const auto [got_query, got_output] = run(device(), kv_b_proj, q, o);
      const auto& [want, magnitude] = reference_once(what, [&] {
        return std::pair{run(reference(), kv_b_proj, q, o), run(reference(), kv_b_absolute, absolute(q), absolute(o))};
      });
      const auto& [want_query, want_output] = want;
      const auto& [query_magnitude, output_magnitude] = magnitude;
      // W_UK[h]ᵀ q_nope sums nope products; W_UV[h] o_latent sums kv_lora; q_rope is copied.
      expect_within(got_query, want_query, query_magnitude, (shape.nope + 4) * kUnit, latent_cols, what + " query");
      expect_within(got_output, want_output, output_magnitude, (shape.kv_lora + 4) * kUnit, out_cols, what + " output");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Routing and the MoE.

struct Routed {
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
};

Routed route_on(const Backend& backend, const std::vector<float>& logits, std::int64_t tokens, std::int64_t n_experts,
                const std::vector<float>& bias, const kernels::RouteParams& params) {
  DeviceTensor logits_tensor(backend, logits, tokens, n_experts);
  Routed routed{std::vector<std::int32_t>(static_cast<std::size_t>(tokens * params.top_k)),
                std::vector<float>(static_cast<std::size_t>(tokens * params.top_k))};
  backend.route(logits_tensor.view, bias, params, routed.experts, routed.weights);
  return routed;
}

// Ties must be exact to have one answer: equal (logit, bias) pairs tie on every device, but values
// that are only nearly equal would be ordered by rounding. The inputs below are drawn so that, per
// token, distinct experts' choices and distinct groups' scores are at least 1e-4 apart.
void expect_ties_are_exact(const std::vector<float>& logits, const std::vector<float>& bias, std::int64_t tokens,
                           std::int64_t n_experts, std::int64_t n_group) {
  const std::int64_t group_size = n_experts / n_group;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<double> choice(static_cast<std::size_t>(n_experts));
    for (std::int64_t e = 0; e < n_experts; ++e)
      choice[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[t * n_experts + e]))) + bias[e];
    for (std::int64_t a = 0; a < n_experts; ++a)
      for (std::int64_t b = 0; b < a; ++b)
        if (choice[a] != choice[b]) {
          ASSERT_GT(std::fabs(choice[a] - choice[b]), 1e-4) << "token " << t;
        }
    if (n_group == 1) continue;
    std::vector<double> group_score;
    for (std::int64_t g = 0; g < n_group; ++g) {
      std::vector<double> members(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
      std::sort(members.rbegin(), members.rend());
      group_score.push_back(members[0] + members[1]);
    }
    for (std::size_t a = 0; a < group_score.size(); ++a)
      for (std::size_t b = 0; b < a; ++b)
        if (group_score[a] != group_score[b]) {
          ASSERT_GT(std::fabs(group_score[a] - group_score[b]), 1e-4) << "token " << t;
        }
  }
}

TEST_P(OpHarness, RoutingWithTiesMaskedGroupsNormalisationAndScaling) {
  struct Case {
    std::int64_t experts;
    kernels::RouteParams params;
  };
  // DeepSeek-V3's shape scaled down (8 groups, 3 kept), one group (norm off), and 4 groups of 5.
  for (const Case& c : {Case{64, {8, 3, 6, true, 2.5}}, Case{24, {1, 1, 5, false, 1.0}}, Case{20, {4, 2, 4, false, 1.5}},
                        Case{20, {4, 2, 4, true, 1.0}}})
    for (std::int64_t tokens : kRows) {
      const std::string what = describe("route", {{"tokens", tokens},
                                                  {"experts", c.experts},
                                                  {"n_group", c.params.n_group},
                                                  {"topk_group", c.params.topk_group},
                                                  {"top_k", c.params.top_k},
                                                  {"norm", c.params.norm_topk_prob}});
      // Logits on a grid of 9 levels (0.37 apart, none opposite another: sigmoid(x) + sigmoid(-x)
      // = 1 would tie group sums only up to rounding) and biases of three levels: many exact ties.
      std::mt19937_64 generator(tokens * 131 + c.experts);
      std::vector<float> logits(static_cast<std::size_t>(tokens * c.experts)), bias(static_cast<std::size_t>(c.experts));
      for (float& l : logits) l = 0.37f * static_cast<float>(static_cast<int>(generator() % 9) - 4) + 0.11f;
      for (float& b : bias) b = 0.03125f * static_cast<float>(static_cast<int>(generator() % 3) - 1);
      std::fill_n(logits.begin(), c.experts, 0.11f);  // token 0: every expert ties
      if (tokens > 1) std::fill_n(logits.begin() + c.experts, c.experts, 0.48f);
      expect_ties_are_exact(logits, bias, tokens, c.experts, c.params.n_group);
      if (HasFatalFailure()) return;
      const Routed got = route_on(device(), logits, tokens, c.experts, bias, c.params);
      const Routed want = route_on(reference(), logits, tokens, c.experts, bias, c.params);
      EXPECT_EQ(got.experts, want.experts) << what;
      // A sigmoid, a sum of top_k scores, a division and the scaling factor.
      expect_within(got.weights, want.weights, absolute(want.weights), (c.params.top_k + 16) * kUnit, c.params.top_k, what);
    }
}

TEST(OpsReference, RoutingFollowsTheDefinitionOnAWorkedExample) {
  // 8 experts in 4 groups of 2, keep 2 groups, top 3, normalised, scaled by 2. Token 0's biased
  // choices: group 0 {0.5, 0.5} scores 1; group 1 {0.5 + 1/8, 0.5 - 1/8} also exactly 1; group 2
  // {σ(2), σ(-3) + 1/2} 1.43; group 3 {σ(0.6), σ(-3)} 0.69. Groups 2 and 0 are kept (0 wins the
  // tie with 1 by its lower index), so expert 2 (0.625) and expert 6 (0.646) are out despite
  // beating expert 0 (0.5): the choice is 4, 5, then 0 over 1 (a tie). Weights use the unbiased
  // scores. Token 1: every logit 0, so group 2 (bias 1/2) then group 0 (ties with 1 and 3), and
  // experts 5, 0, 1 (4 ties with 0 and 1 and loses on index), each weighted 2/3.
  const std::vector<float> bias = {0.0f, 0.0f, 0.125f, -0.125f, 0.0f, 0.5f, 0.0f, 0.0f};
  std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f, 2.0f, -3.0f, 0.6f, -3.0f,  // token 0
                               0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};   // token 1
  const kernels::RouteParams params{4, 2, 3, true, 2.0};
  std::vector<std::int32_t> experts(6);
  std::vector<float> weights(6);
  kernels::reference_backend().route(Tensor(logits.data(), 2, 8), bias, params, experts, weights);
  EXPECT_EQ(experts, (std::vector<std::int32_t>{4, 5, 0, 5, 0, 1}));
  const double s4 = 1.0 / (1.0 + std::exp(-2.0)), s5 = 1.0 / (1.0 + std::exp(3.0)), s0 = 0.5;
  EXPECT_NEAR(weights[0], 2.0 * s4 / (s4 + s5 + s0), 1e-6);
  EXPECT_NEAR(weights[1], 2.0 * s5 / (s4 + s5 + s0), 1e-6);
  EXPECT_NEAR(weights[2], 2.0 * s0 / (s4 + s5 + s0), 1e-6);
  for (int k = 3; k < 6; ++k) EXPECT_NEAR(weights[k], 2.0 / 3.0, 1e-6);
  const kernels::RouteParams unnormalised{4, 2, 3, false, 2.0};
  kernels::reference_backend().route(Tensor(logits.data(), 2, 8), bias, unnormalised, experts, weights);
  EXPECT_NEAR(weights[0], 2.0 * s4, 1e-6);
}

// A MoE layer's routes: each token picks top_k distinct experts, in a choice order that is not
// expert order; experts in `unused` get no rows, expert 0 gets many.
std::vector<std::int32_t> crafted_routes(std::int64_t tokens, std::int64_t top_k, std::int64_t n_experts,
                                         const std::vector<std::int32_t>& unused, std::uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<std::int32_t> candidates;
  for (std::int32_t e = 0; e < n_experts; ++e)
    if (std::find(unused.begin(), unused.end(), e) == unused.end()) candidates.push_back(e);
  std::vector<std::int32_t> routes;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::shuffle(candidates.begin(), candidates.end(), generator);
    std::vector<std::int32_t> chosen(candidates.begin(), candidates.begin() + top_k);
    if (t % 2 == 0 && std::find(chosen.begin(), chosen.end(), 0) == chosen.end()) chosen[generator() % top_k] = 0;
    routes.insert(routes.end(), chosen.begin(), chosen.end());
  }
  return routes;
}

// The dispatch row serving each route slot.
std::vector<std::int64_t> row_of_slot(const kernels::Dispatch& dispatch) {
  std::vector<std::int64_t> rows(dispatch.slots.size(), -1);
  for (std::size_t i = 0; i < dispatch.slots.size(); ++i) rows[static_cast<std::size_t>(dispatch.slots[i])] = static_cast<std::int64_t>(i);
  return rows;
}

TEST_P(OpHarness, MoeDispatchGroupsRowsByExpert) {
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 37;
  for (std::int64_t tokens : kRows) {
    const std::string what = describe("moe_dispatch", {{"tokens", tokens}});
    const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens);
    const std::vector<float> x = random_values(static_cast<std::size_t>(tokens * hidden), tokens);
    DeviceTensor x_device(device(), x, tokens, hidden, hidden + 3);
    kernels::Workspace workspace(device());
    const kernels::Dispatch got = device().moe_dispatch(x_device.view, routes, n_experts, top_k, workspace);
    DeviceTensor x_reference(reference(), x, tokens, hidden);
    kernels::Workspace reference_workspace(reference());
    const kernels::Dispatch want = reference().moe_dispatch(x_reference.view, routes, n_experts, top_k, reference_workspace);
    ASSERT_EQ(got.top_k, top_k) << what;
    ASSERT_EQ(std::vector<std::int64_t>(got.offsets.begin(), got.offsets.end()),
              std::vector<std::int64_t>(want.offsets.begin(), want.offsets.end()))
        << what << ": rows per expert";
    ASSERT_EQ(got.slots.size(), routes.size()) << what;
    // Within an expert a token appears once, so the order of its rows is the device's choice.
    for (std::int64_t e = 0; e < n_experts; ++e) {
      std::vector<std::int64_t> got_slots(got.slots.begin() + got.offsets[e], got.slots.begin() + got.offsets[e + 1]);
      std::vector<std::int64_t> want_slots(want.slots.begin() + want.offsets[e], want.slots.begin() + want.offsets[e + 1]);
      std::sort(got_slots.begin(), got_slots.end());
      EXPECT_EQ(got_slots, want_slots) << what << ": expert " << e;
    }
    const std::vector<float> rows = download(got.rows);
    std::vector<float> expected(rows.size());
    for (std::size_t i = 0; i < got.slots.size(); ++i)
      std::copy_n(x.begin() + (got.slots[i] / top_k) * hidden, hidden, expected.begin() + static_cast<std::ptrdiff_t>(i) * hidden);
    expect_identical(rows, expected, hidden, what + ": rows");
  }
}

TEST_P(OpHarness, MoeExpertsOfEveryDtypeWithIdleExpertsKeepingGateAndUp) {
  // Expert e in kWeightDtypes[e % 4]; [130, 136] and [136, 130] matrices: FP8 blocks partial in
  // both dimensions. Experts 4 and 8 get no rows.
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 136, intermediate = 130;
  std::vector<std::array<HostWeight, 3>> weights;
  for (std::int64_t e = 0; e < n_experts; ++e) {
    const DType dtype = kWeightDtypes[e % 4];
    weights.push_back({random_weight(dtype, intermediate, hidden, 100 + e), random_weight(dtype, intermediate, hidden, 200 + e),
                       random_weight(dtype, hidden, intermediate, 300 + e)});
  }
  auto experts_on = [&](const Backend& backend, bool absolute_values) {
    std::vector<MlpWeights> experts;
    for (const auto& w : weights) {
      auto on = [&](const HostWeight& h) { return absolute_values ? h.absolute().on(backend) : h.on(backend); };
      experts.push_back({on(w[0]), on(w[1]), on(w[2])});
    }
    return experts;
  };
  const std::vector<MlpWeights> device_experts = experts_on(device(), false), reference_experts = experts_on(reference(), false);
  const std::vector<MlpWeights> absolute_experts = experts_on(reference(), true);
  for (std::int64_t tokens : {1, 7, 129}) {
    for (bool save : {false, true}) {
      const std::string what = describe(save ? "moe_experts keeping gate and up" : "moe_experts", {{"tokens", tokens}});
      const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens + 5);
      const std::vector<float> x = random_values(static_cast<std::size_t>(tokens * hidden), tokens + 6);
      struct Result {
        std::vector<float> out, saved;
        std::vector<std::int64_t> row_of_slot;
      };
      auto run = [&](const Backend& backend, const std::vector<MlpWeights>& experts) {
        DeviceTensor x_tensor(backend, x, tokens, hidden);
        kernels::Workspace workspace(backend);
        const kernels::Dispatch dispatch = backend.moe_dispatch(x_tensor.view, routes, n_experts, top_k, workspace);
        DeviceTensor out(backend, tokens * top_k, hidden), gate(backend, tokens * top_k, intermediate),
            up(backend, tokens * top_k, intermediate);
        backend.moe_experts(dispatch, experts, out.view, workspace, save ? gate.view : Tensor{}, save ? up.view : Tensor{});
        std::vector<float> saved;  // [rows, gate | up]
        for (std::int64_t r = 0; save && r < tokens * top_k; ++r) {
          const std::vector<float> gate_row = download(gate.view.row_range(r, r + 1)), up_row = download(up.view.row_range(r, r + 1));
          saved.insert(saved.end(), gate_row.begin(), gate_row.end());
          saved.insert(saved.end(), up_row.begin(), up_row.end());
        }
        return Result{out.values(), saved, row_of_slot(dispatch)};
      };
      // Rows compared by the route slot they serve; a device orders rows within an expert itself.
      auto by_slot = [&](const Result& result, const std::vector<float>& values, std::int64_t cols) {
        std::vector<float> ordered(values.size());
        for (std::size_t slot = 0; slot < result.row_of_slot.size(); ++slot)
          std::copy_n(values.begin() + result.row_of_slot[slot] * cols, cols, ordered.begin() + static_cast<std::ptrdiff_t>(slot) * cols);
        return ordered;
      };
      const Result got = run(device(), device_experts);
      const auto& [want_out, want_saved, out_magnitude, saved_magnitude] = reference_once(what, [&] {
        const Result want = run(reference(), reference_experts);
        // Magnitudes: M_g = Σ|x||W_gate|, M_u likewise; |silu'| <= 1.1 and |silu(g)| <= |g|, so
        // the activation is off by at most 2.1 (hidden + 4) u M_g M_u, and the output by
        // (2.1 (hidden + 4) + intermediate + 6) u Σ|W_down| M_g M_u.
        std::vector<float> out_magnitude, saved_magnitude;
        for (std::int64_t slot = 0; slot < tokens * top_k; ++slot) {
          const MlpWeights& w = absolute_experts[routes[slot]];
          const std::vector<float> x_row(x.begin() + (slot / top_k) * hidden, x.begin() + (slot / top_k + 1) * hidden);
          DeviceTensor x_absolute(reference(), absolute(x_row), 1, hidden);
          DeviceTensor gate(reference(), 1, intermediate), up(reference(), 1, intermediate), out(reference(), 1, hidden);
          reference().linear(x_absolute.view, w.gate_proj, gate.view);
          reference().linear(x_absolute.view, w.up_proj, up.view);
          std::vector<float> product = gate.values();
          const std::vector<float> up_values = up.values();
          for (std::int64_t i = 0; i < intermediate; ++i) product[i] *= up_values[i];
          DeviceTensor product_tensor(reference(), product, 1, intermediate);
          reference().linear(product_tensor.view, w.down_proj, out.view);
          const std::vector<float> gate_values = gate.values(), out_values = out.values();
          out_magnitude.insert(out_magnitude.end(), out_values.begin(), out_values.end());
          saved_magnitude.insert(saved_magnitude.end(), gate_values.begin(), gate_values.end());
          saved_magnitude.insert(saved_magnitude.end(), up_values.begin(), up_values.end());
        }
        return std::tuple{by_slot(want, want.out, hidden), save ? by_slot(want, want.saved, 2 * intermediate) : std::vector<float>{},
                          out_magnitude, saved_magnitude};
      });
      expect_within(by_slot(got, got.out, hidden), want_out, out_magnitude, (2.1 * (hidden + 4) + intermediate + 6) * kUnit,
                    hidden, what);
      if (save)
        expect_within(by_slot(got, got.saved, 2 * intermediate), want_saved, saved_magnitude, (hidden + 4) * kUnit,
                      2 * intermediate, what + ": gate | up");
    }
  }
}

// Runs moe_combine on `backend` with expert outputs given per route slot.
std::vector<float> combine_on(const Backend& backend, std::int64_t tokens, std::int64_t hidden, std::int64_t n_experts,
                              const std::vector<std::int32_t>& routes, const std::vector<float>& weights,
                              const std::vector<float>& out_by_slot, const std::vector<float>& y0) {
  const std::int64_t top_k = static_cast<std::int64_t>(routes.size()) / tokens;
  DeviceTensor x(backend, std::vector<float>(static_cast<std::size_t>(tokens * hidden), 0.0f), tokens, hidden);
  kernels::Workspace workspace(backend);
  const kernels::Dispatch dispatch = backend.moe_dispatch(x.view, routes, n_experts, top_k, workspace);
  std::vector<float> out(out_by_slot.size());
  for (std::size_t i = 0; i < dispatch.slots.size(); ++i)
    std::copy_n(out_by_slot.begin() + dispatch.slots[i] * hidden, hidden, out.begin() + static_cast<std::ptrdiff_t>(i) * hidden);
  DeviceTensor out_tensor(backend, out, tokens * top_k, hidden), y(backend, y0, tokens, hidden, hidden + 2);
  backend.moe_combine(dispatch, weights, out_tensor.view, y.view);
  EXPECT_TRUE(y.spare_columns_intact()) << "moe_combine wrote outside its view";
  return y.values();
}

TEST_P(OpHarness, MoeCombineAddsWeightedRowsToTheResidual) {
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 37;
  for (std::int64_t tokens : kRows) {
    const std::string what = describe("moe_combine", {{"tokens", tokens}});
    const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, tokens + 9);
    const std::vector<float> weights = absolute(random_values(routes.size(), tokens + 10));
    const std::vector<float> out = random_values(routes.size() * hidden, tokens + 11);
    const std::vector<float> y0 = random_values(static_cast<std::size_t>(tokens * hidden), tokens + 12);
    const std::vector<float> got = combine_on(device(), tokens, hidden, n_experts, routes, weights, out, y0);
    const std::vector<float> want = combine_on(reference(), tokens, hidden, n_experts, routes, weights, out, y0);
    // y + Σ_k w_k o_k: top_k products and sums, relative to |y| + Σ |w| |o|.
    std::vector<float> magnitude = absolute(y0);
    for (std::int64_t slot = 0; slot < tokens * top_k; ++slot)
      for (std::int64_t c = 0; c < hidden; ++c) magnitude[(slot / top_k) * hidden + c] += weights[slot] * std::fabs(out[slot * hidden + c]);
    expect_within(got, want, magnitude, (2 * top_k + 2) * kUnit, hidden, what);
  }
}

TEST_P(OpHarness, MoeCombineSumsInExpertOrder) {
  // Each token's terms, in expert order, are +B, -B and 1 (B = 2^25, where float32's spacing is
  // 4), with power-of-two gate weights so every product is exact and FMA changes nothing. In
  // expert order (B - B) + 1 = 1; in any order that adds the 1 before either B it is lost (B + 1
  // rounds to B) and the sum is 0. The choice (slot) order differs from expert order for most
  // tokens, so only the promised order reproduces the reference bit for bit.
  constexpr std::int64_t n_experts = 9, top_k = 3, hidden = 5, tokens = 7;
  const std::vector<std::int32_t> routes = crafted_routes(tokens, top_k, n_experts, {4, 8}, 17);
  std::vector<float> weights(routes.size()), out(routes.size() * hidden);
  for (std::int64_t t = 0; t < tokens; ++t) {
    const auto begin = routes.begin() + t * top_k;
    const std::int32_t low = *std::min_element(begin, begin + top_k), high = *std::max_element(begin, begin + top_k);
    for (std::int64_t k = 0; k < top_k; ++k) {
      const std::int64_t slot = t * top_k + k;
      weights[slot] = std::ldexp(1.0f, static_cast<int>(k) - 1);
      const float term = routes[slot] == low ? 0x1p25f : routes[slot] == high ? 1.0f : -0x1p25f;
      for (std::int64_t c = 0; c < hidden; ++c) out[slot * hidden + c] = term / weights[slot] * static_cast<float>(c + 1);
    }
  }
  const std::vector<float> y0(static_cast<std::size_t>(tokens * hidden), 0.0f);
  const std::vector<float> got = combine_on(device(), tokens, hidden, n_experts, routes, weights, out, y0);
  const std::vector<float> want = combine_on(reference(), tokens, hidden, n_experts, routes, weights, out, y0);
  ASSERT_EQ(want[0], 1.0f) << "the reference no longer sums in expert order";
  expect_identical(got, want, hidden, "moe_combine order");
}

TEST_P(OpHarness, OpsRejectMismatchedShapes) {
  const HostWeight w = random_weight(DType::BF16, 8, 16, 1);
  DeviceTensor x(device(), 2, 15), y(device(), 2, 8);
  EXPECT_THROW(device().linear(x.view, w.on(device()), y.view), Error);
  DeviceTensor a(device(), 3, 4), b(device(), 3, 5);
  EXPECT_THROW(device().add(a.view, b.view), Error);
}

INSTANTIATE_TEST_SUITE_P(Ops, OpHarness, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsv3
