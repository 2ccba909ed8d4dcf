#pragma once
// The op harness's shared parts (defined in test_ops.cpp): device memory, tensors and weights on a
// backend, comparisons within derived bounds, and the fixture that test_ops_*.cpp run on each target.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "kernels/reference/reference.h"
#include "support.h"

namespace dsv3::op_harness {

using kernels::Backend;
using kernels::Tensor;
using test::random_values;

constexpr double kUnit = 0x1p-24;

// A backend under test on one of its instruction-set paths (kTargets in test_ops.cpp lists them).
struct Target {
  const char* name;
  const Backend& (*backend)();
  std::optional<kernels::Isa> isa;  // the CPU weight kernels' path, forced for the test
};

// Memory on the device under test.
std::shared_ptr<std::byte> device_memory(const Backend& backend, std::size_t bytes);
void to_device(void* device, const void* host, std::size_t bytes);
void to_host(void* host, const void* device, std::size_t bytes);
void upload(const std::vector<float>& values, Tensor t);
std::vector<float> download(Tensor t);

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

// A random [rows, cols] weight in `dtype` with values about normal(0, 1/cols). FP8 codes span
// the format's range and the 128x128 block scales differ by up to 2^6 from block to block, so a
// scale taken from the wrong block is an error the size of that block's terms.
HostWeight random_weight(DType dtype, std::int64_t rows, std::int64_t cols, std::uint64_t seed);

const DType kWeightDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3};

std::vector<float> absolute(std::vector<float> values);

// Comparisons.

// Fails unless |got - want| <= tolerance * magnitude for every element of a [rows, cols] result,
// naming the worst element.
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& magnitude,
                   double tolerance, std::int64_t cols, const std::string& what);

// Exact equality (bit for bit), naming the first difference.
void expect_identical(const std::vector<float>& got, const std::vector<float>& want, std::int64_t cols,
                      const std::string& what);

std::string describe(std::string_view op, std::initializer_list<std::pair<const char*, std::int64_t>> sizes);

// The reference's results for a case depend only on the case's inputs, which every target shares,
// so each is computed once per process (one static map per call site: `compute` is a lambda).
template <typename Compute>
const std::invoke_result_t<Compute>& reference_once(const std::string& key, Compute&& compute) {
  static std::map<std::string, std::invoke_result_t<Compute>> results;
  auto found = results.find(key);
  if (found == results.end()) found = results.emplace(key, compute()).first;
  return found->second;
}

// The fixture: each TEST_P runs on every target of kTargets.
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

}  // namespace dsv3::op_harness
