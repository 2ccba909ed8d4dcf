#pragma once
// Shared helpers for the tests: where fixtures live, reading tensors, comparing logits.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsv3::test {

inline std::filesystem::path shared_dir() { return DSV3_SHARED_DIR; }
inline std::filesystem::path tiny_model_dir() { return shared_dir() / "fixtures" / "tiny-dsv3"; }

// A fresh, empty directory under the system temp dir, unique to the current test and process
// (builds of several checkouts, or a sanitizer build beside the plain one, may run the same test
// at the same time).
inline std::filesystem::path temp_dir(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto dir = std::filesystem::temp_directory_path() /
             ("dsv3-test-" + std::string(info->test_suite_name()) + "-" + info->name() + "-" + tag + "-" +
              std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::vector<float> read_f32(const TensorView& view) {
  EXPECT_EQ(view.dtype, DType::F32) << view.name;
  std::vector<float> values(static_cast<std::size_t>(view.numel()));
  std::memcpy(values.data(), view.data, view.nbytes);
  return values;
}

inline std::vector<std::int64_t> read_i64(const TensorView& view) {
  EXPECT_EQ(view.dtype, DType::I64) << view.name;
  std::vector<std::int64_t> values(static_cast<std::size_t>(view.numel()));
  std::memcpy(values.data(), view.data, view.nbytes);
  return values;
}

// `count` normal(0, scale) values from a seeded generator: the tests' random inputs.
inline std::vector<float> random_values(std::size_t count, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& v : values) v = normal(generator);
  return values;
}

inline double relative_l2(const float* ours, const float* reference, std::int64_t count) {
  double diff = 0.0, norm = 0.0;
  for (std::int64_t i = 0; i < count; ++i) {
    diff += (static_cast<double>(ours[i]) - reference[i]) * (static_cast<double>(ours[i]) - reference[i]);
    norm += static_cast<double>(reference[i]) * reference[i];
  }
  return std::sqrt(diff / norm);
}

struct RowComparison {
  double worst_relative_error = 0.0;
  std::int64_t argmax_checked = 0;
  std::int64_t argmax_mismatches = 0;
};

// Compares [rows, cols] logits row by row: relative L2 error per row, and the arg-max wherever the
// reference's top-1/top-2 gap exceeds `min_gap` (smaller gaps may flip under float32 rounding).
inline RowComparison compare_rows(const float* ours, const float* reference, std::int64_t rows, std::int64_t cols,
                                  double min_gap = 1e-2) {
  RowComparison result;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* o = ours + r * cols;
    const float* ref = reference + r * cols;
    result.worst_relative_error = std::max(result.worst_relative_error, relative_l2(o, ref, cols));
    std::int64_t best = 0, ours_best = 0;
    for (std::int64_t c = 1; c < cols; ++c) {
      if (ref[c] > ref[best]) best = c;
      if (o[c] > o[ours_best]) ours_best = c;
    }
    float second = -INFINITY;
    for (std::int64_t c = 0; c < cols; ++c)
      if (c != best) second = std::max(second, ref[c]);
    if (ref[best] - second > min_gap) {
      ++result.argmax_checked;
      if (ours_best != best) ++result.argmax_mismatches;
    }
  }
  return result;
}

// Runs the built `dsv3` with `arguments` (a shell fragment) and returns its exit code, filling
// `output` with stdout and stderr together.
inline int run_dsv3(const std::string& arguments, std::string& output) {
  const std::string command = std::string(DSV3_BINARY) + " " + arguments + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return -1;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The message of the dsv3::Error that `action` throws; a test failure when it throws none. Any
// other exception escapes and fails the test as an unexpected one.
template <typename Action>
std::string error_message(Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a dsv3::Error, none was thrown";
  return {};
}

}  // namespace dsv3::test
