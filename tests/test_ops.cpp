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
//
// The tests are in test_ops_*.cpp by op family; op_harness.h declares what they share.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "op_harness.h"

namespace dsv3::op_harness {

// ---------------------------------------------------------------------------------------------
// Memory on the device under test.

std::shared_ptr<std::byte> device_memory(const Backend& backend, std::size_t bytes) {
  return {static_cast<std::byte*>(backend.allocate(std::max<std::size_t>(bytes, 1))),
          [&backend](std::byte* data) { backend.release(data); }};
}

// Nothing to copy for an empty vector, whose data() may be null (memcpy's arguments may not).
void to_device(void* device, const void* host, std::size_t bytes) {
  if (bytes > 0) std::memcpy(device, host, bytes);
}
void to_host(void* host, const void* device, std::size_t bytes) {
  if (bytes > 0) std::memcpy(host, device, bytes);
}

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

namespace {

std::int64_t scale_blocks(std::int64_t n) { return (n + 127) / 128; }

}  // namespace

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

std::vector<float> absolute(std::vector<float> values) {
  for (float& v : values) v = std::fabs(v);
  return values;
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

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

namespace {

// The backends under test, each on each of its instruction-set paths: a new device (CUDA) adds
// its line here, e.g. {"cuda", cuda_backend, std::nullopt}, and nothing else.
const Target kTargets[] = {
    {"cpu_avx512", kernels::default_backend, kernels::Isa::avx512},
    {"cpu_avx2", kernels::default_backend, kernels::Isa::avx2},
    {"cpu_scalar", kernels::default_backend, kernels::Isa::scalar},
};

INSTANTIATE_TEST_SUITE_P(Ops, OpHarness, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace dsv3::op_harness
