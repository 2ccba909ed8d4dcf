// Every fast CPU op against a plain-loop reference in double precision, on awkward sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quantize.h"
#include "support.h"

namespace dsv3 {
namespace {

std::vector<float> random_values(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(rng);
  return values;
}

// y = x · Wᵀ in double from already-dequantised float weights.
std::vector<float> linear_reference(const std::vector<float>& x, std::int64_t rows, const std::vector<float>& w,
                                    std::int64_t out, std::int64_t in) {
  std::vector<float> y(static_cast<std::size_t>(rows * out));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (std::int64_t i = 0; i < in; ++i) sum += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<float>(sum);
    }
  return y;
}

struct StoredWeight {
  std::vector<std::byte> bytes;
  std::vector<float> values;  // what the stored weight means, exactly
  Matrix matrix;
};

StoredWeight store_weight(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, DType dtype) {
  StoredWeight stored;
  stored.values.resize(w.size());
  stored.matrix.name = "test.weight";
  stored.matrix.dtype = dtype;
  stored.matrix.rows = rows;
  stored.matrix.cols = cols;
  if (dtype == DType::F8_E4M3) {
    const auto blocks = kernels::quantize_fp8_blocks(w.data(), rows, cols);
    stored.bytes.resize(blocks.codes.size());
    std::memcpy(stored.bytes.data(), blocks.codes.data(), blocks.codes.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        stored.values[r * cols + c] =
            fp8_e4m3_to_float(blocks.codes[r * cols + c]) * blocks.scales[(r / 128) * blocks.scale_cols + c / 128];
    stored.matrix.scales = std::make_shared<const std::vector<float>>(blocks.scales);
  } else {
    stored.bytes.resize(w.size() * dtype_size(dtype));
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (dtype == DType::BF16) {
        const std::uint16_t bits = float_to_bf16(w[i]);
        std::memcpy(stored.bytes.data() + 2 * i, &bits, 2);
        stored.values[i] = bf16_to_float(bits);
      } else {
        std::memcpy(stored.bytes.data() + 4 * i, &w[i], 4);
        stored.values[i] = w[i];
      }
    }
  }
  stored.matrix.data = stored.bytes.data();
  return stored;
}

TEST(Kernels, LinearMatchesReferenceForEveryDtypeAndAwkwardSizes) {
  const std::int64_t sizes[][3] = {{1, 1, 1}, {7, 129, 33}, {1, 1000, 257}, {129, 7, 300}, {3, 200, 1000}};
  for (DType dtype : {DType::F32, DType::BF16, DType::F8_E4M3}) {
    for (const auto& size : sizes) {
      const std::int64_t rows = size[0], out = size[1], in = size[2];
      SCOPED_TRACE(fmt::format("{} rows={} out={} in={}", dtype_name(dtype), rows, out, in));
      const auto x = random_values(static_cast<std::size_t>(rows * in), 1);
      const StoredWeight w = store_weight(random_values(static_cast<std::size_t>(out * in), 2, 0.05f), out, in, dtype);
      std::vector<float> y(static_cast<std::size_t>(rows * out));
      kernels::linear(x.data(), rows, w.matrix, y.data());
      const auto expected = linear_reference(x, rows, w.values, out, in);
      EXPECT_LE(test::relative_l2(y.data(), expected.data(), rows * out), 1e-5);
    }
  }
}

TEST(Kernels, RmsnormMatchesDefinition) {
  const std::int64_t rows = 3, dim = 129;
  const auto x = random_values(static_cast<std::size_t>(rows * dim), 3);
  const auto weight = random_values(static_cast<std::size_t>(dim), 4);
  std::vector<float> out(x.size());
  kernels::rmsnorm(x.data(), rows, dim, weight.data(), 1e-6f, out.data());
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean_square = 0.0;
    for (std::int64_t i = 0; i < dim; ++i) mean_square += std::pow(x[r * dim + i], 2) / dim;
    for (std::int64_t i = 0; i < dim; ++i)
      EXPECT_NEAR(out[r * dim + i], x[r * dim + i] / std::sqrt(mean_square + 1e-6) * weight[i], 1e-5);
  }
}

TEST(Kernels, CausalAttentionMatchesNaiveSoftmax) {
  for (std::int64_t tokens : {1, 7, 129, 300}) {
    SCOPED_TRACE(tokens);
    const std::int64_t heads = 3, qk = 24, v_dim = 16;
    kernels::AttentionShape shape;
    shape.tokens = tokens;
    shape.heads = heads;
    shape.qk_dim = qk;
    shape.v_dim = v_dim;
    shape.q_stride = shape.k_stride = heads * qk;
    shape.q_head_stride = shape.k_head_stride = qk;
    shape.v_stride = heads * (v_dim + 5);  // packed with other data, as MLA's kv is
    shape.v_head_stride = v_dim + 5;
    const auto q = random_values(static_cast<std::size_t>(tokens * heads * qk), 5);
    const auto k = random_values(q.size(), 6);
    const auto v = random_values(static_cast<std::size_t>(tokens * shape.v_stride), 7);
    const float scale = 0.3f;
    std::vector<float> out(static_cast<std::size_t>(tokens * heads * v_dim));
    kernels::attention_causal(q.data(), k.data(), v.data(), shape, scale, out.data());
    std::vector<float> expected(out.size());
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < tokens; ++i) {
        std::vector<double> p(static_cast<std::size_t>(i + 1));
        double max_score = -INFINITY, total = 0.0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double s = 0.0;
          for (std::int64_t d = 0; d < qk; ++d) s += static_cast<double>(q[(i * heads + h) * qk + d]) * k[(j * heads + h) * qk + d];
          p[j] = s * scale;
          max_score = std::max(max_score, p[j]);
        }
        for (auto& value : p) total += (value = std::exp(value - max_score));
        for (std::int64_t d = 0; d < v_dim; ++d) {
          double sum = 0.0;
          for (std::int64_t j = 0; j <= i; ++j) sum += p[j] / total * v[j * shape.v_stride + h * shape.v_head_stride + d];
          expected[(i * heads + h) * v_dim + d] = static_cast<float>(sum);
        }
      }
    EXPECT_LE(test::relative_l2(out.data(), expected.data(), static_cast<std::int64_t>(out.size())), 1e-5);
  }
}

TEST(Kernels, EmbeddingRejectsOutOfRangeIds) {
  const StoredWeight table = store_weight(random_values(40, 8), 10, 4, DType::BF16);
  std::vector<float> out(8);
  const std::int64_t good[] = {0, 9};
  kernels::embedding(table.matrix, good, out.data());
  EXPECT_EQ(out[4], table.values[36]);
  const std::int64_t bad[] = {3, 10};
  EXPECT_THROW(kernels::embedding(table.matrix, bad, out.data()), Error);
}

TEST(Kernels, Fp8BlockQuantisationUsesAmaxOver448PerBlock) {
  const std::int64_t rows = 130, cols = 200;  // 2 x 2 blocks, the last ones partial
  auto w = random_values(static_cast<std::size_t>(rows * cols), 9);
  w[129 * cols + 199] = 10.0f;  // the bottom-right partial block's amax
  const auto blocks = kernels::quantize_fp8_blocks(w.data(), rows, cols);
  ASSERT_EQ(blocks.scale_rows, 2);
  ASSERT_EQ(blocks.scale_cols, 2);
  EXPECT_FLOAT_EQ(blocks.scales[3], 10.0f / 448.0f);
  EXPECT_EQ(blocks.codes[129 * cols + 199], 0x7e);  // amax maps to the largest finite code
  for (std::size_t i = 0; i < w.size(); ++i) {
    const std::int64_t r = static_cast<std::int64_t>(i) / cols, c = static_cast<std::int64_t>(i) % cols;
    const float scale = blocks.scales[(r / 128) * 2 + c / 128];
    const float back = fp8_e4m3_to_float(blocks.codes[i]) * scale;
    // Normal E4M3 values are within 2^-4 relative; subnormals within half their step (2^-10 * scale).
    EXPECT_LE(std::fabs(back - w[i]), std::max(std::fabs(w[i]) * 0.0625f, 0x1p-10f * scale) * 1.0001f);
  }
}

}  // namespace
}  // namespace dsv3
