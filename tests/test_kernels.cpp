// Every fast CPU op against a plain-loop reference in double precision, on awkward sizes.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <tuple>

#include "each_isa.h"
#include "fast_arithmetic.h"
#include "core/error.h"
#include "core/numeric.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "io/fp8_blocks.h"
#include "stored_weight.h"
#include "support.h"

namespace dsv3 {
namespace {

using test::linear_reference;
using test::store_weight;
using test::StoredWeight;
using test::EachIsa;

TEST(Kernels, LinearMatchesReferenceForEveryDtypeIsaAndAwkwardSize) {
  // {rows, out, in}: rows on both sides of the GEMV / sgemm switch, ragged lane and block edges.
  const std::int64_t sizes[][3] = {{1, 1, 1},   {1, 7, 129},  {1, 1000, 257}, {2, 129, 1000}, {3, 130, 33},
                                   {4, 5, 300}, {5, 33, 128}, {7, 129, 33},   {8, 64, 17},    {9, 7, 1000},
                                   {16, 129, 7}, {64, 33, 100}, {65, 9, 40},  {129, 7, 300},  {3, 200, 1000}};
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
      for (const auto& size : sizes) {
        const std::int64_t rows = size[0], out = size[1], in = size[2];
        SCOPED_TRACE(fmt::format("{} {} rows={} out={} in={}", kernels::isa_name(isa), dtype_name(dtype), rows, out, in));
        const auto x = test::random_values(static_cast<std::size_t>(rows * in), 1);
        const StoredWeight w =
            store_weight(test::random_values(static_cast<std::size_t>(out * in), 2, 0.05f), out, in, dtype);
        std::vector<float> y(static_cast<std::size_t>(rows * out), NAN);
        kernels::linear(x.data(), rows, w.matrix, y.data());
        const auto expected = linear_reference(x, rows, w.values, out, in);
        // FP32 accumulation over at most 1000 terms: ~1e-7 relative; a wrong lane, scale or edge is far off.
        EXPECT_LE(test::relative_l2(y.data(), expected.data(), rows * out), 2e-6);
      }
    }
  }
}

// A server meets a new row count with almost every prompt: the GEMM path keeps a bounded number of
// primitives, and a shape evicted and made again still multiplies correctly.
// The CPU backend's memory (the latent cache, the workspaces): small blocks 64-byte aligned, blocks
// from 2 MiB aligned to 2 MiB and advised into huge pages (the kernel then marks the range "hg" in
// /proc/self/smaps), which decode's cache reads and prefill's activations need (backend.cpp).
TEST(Kernels, CpuBackendAdvisesHugePagesForLargeBlocks) {
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) GTEST_SKIP() << "no transparent huge pages";
  const kernels::Backend& cpu = kernels::default_backend();
  constexpr std::size_t kHuge = 2u << 20;
  // The VmFlags of the mapping that holds `address`.
  const auto flags_at = [](const void* address) {
    std::ifstream smaps("/proc/self/smaps");
    const auto at = reinterpret_cast<std::uintptr_t>(address);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
      std::uintptr_t start = 0, end = 0;
      char dash = 0;
      std::istringstream head(line);
      if (head >> std::hex >> start >> dash >> end && dash == '-' && line.find(':') > line.find(' ')) {
        inside = start <= at && at < end;
      } else if (inside && line.rfind("VmFlags:", 0) == 0) {
        return line + " ";
      }
    }
    return std::string();
  };
  void* small = cpu.allocate(1000);
  void* large = cpu.allocate(5 * kHuge + 123);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(small) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(large) % kHuge, 0u);
  std::memset(large, 1, 5 * kHuge + 123);  // all of it is ours
  EXPECT_NE(flags_at(large).find(" hg "), std::string::npos) << flags_at(large);
  EXPECT_NE(flags_at(static_cast<std::byte*>(large) + 5 * kHuge).find(" hg "), std::string::npos);
  cpu.release(small);
  cpu.release(large);
}

TEST(Kernels, GemmPrimitiveCacheStaysBoundedOverManyRowCounts) {
  test::FastArithmetic fast(/*bf16=*/false, /*min_rows=*/1);  // FP32: the exact bound below holds
  const std::int64_t out = 24, in = 40;
  const StoredWeight w = store_weight(test::random_values(static_cast<std::size_t>(out * in), 9, 0.05f), out, in,
                                      DType::BF16);
  for (const std::int64_t rows : {1, 2, 3}) {  // made first, evicted by the 300 shapes below, then made again
    for (std::int64_t pass = 0; pass < (rows == 1 ? 300 : 1); ++pass) {
      const std::int64_t r = rows == 1 ? pass + 4 : rows;
      const auto x = test::random_values(static_cast<std::size_t>(r * in), static_cast<std::uint64_t>(r));
      std::vector<float> y(static_cast<std::size_t>(r * out), NAN);
      kernels::linear(x.data(), r, w.matrix, y.data());
      const auto expected = linear_reference(x, r, w.values, out, in);
      ASSERT_LE(test::relative_l2(y.data(), expected.data(), r * out), 2e-6) << r << " rows";
    }
  }
  EXPECT_LE(kernels::gemm_primitives_cached(), 256u);
}

TEST(Kernels, LinearHandlesFp8BlocksThatAreNotMultiplesOfTheVectorWidth) {
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (std::int64_t rows : {1, 6, 40}) {
      const std::int64_t out = 50, in = 77;
      SCOPED_TRACE(fmt::format("{} rows={}", kernels::isa_name(isa), rows));
      const auto x = test::random_values(static_cast<std::size_t>(rows * in), 3);
      const StoredWeight w = store_weight(test::random_values(static_cast<std::size_t>(out * in), 4, 0.05f), out, in,
                                          DType::F8_E4M3, /*block_rows=*/3, /*block_cols=*/20);
      std::vector<float> y(static_cast<std::size_t>(rows * out));
      kernels::linear(x.data(), rows, w.matrix, y.data());
      const auto expected = linear_reference(x, rows, w.values, out, in);
      EXPECT_LE(test::relative_l2(y.data(), expected.data(), rows * out), 2e-6);
    }
  }
}

// The FP8 GEMV on every E4M3 code but the NaNs, subnormals included, with block scales from 2^-20
// to 2^20 and activations from 2^-12 to 2^12. One-hot activation rows pick out each weight alone:
// its output is then the one rounding of code x scale x activation, bit for bit, so a wrong column
// order, code decoding or scale shows at the weight it hits. Dense rows then check the sums.
TEST(Kernels, Fp8LinearIsExactPerWeightForEveryCodeAndScalesFarFromOne) {
  EachIsa each;
  // {cols, block_cols}: 32-column groups each inside one block, and groups across block edges.
  for (const auto& [cols, block_cols] : {std::array<std::int64_t, 2>{300, 128}, {300, 50}, {45, 20}}) {
    const std::int64_t out = 13, block_rows = 4;
    const StoredWeight stored = test::every_fp8_code(out, cols, block_rows, block_cols, [](std::int64_t i) {
      return std::ldexp(1.0f + 0.37f * static_cast<float>(i % 7), -20 + static_cast<int>(i * 13 % 41));
    });
    const Matrix& w = stored.matrix;
    const auto code = [&](std::int64_t n, std::int64_t c) { return static_cast<std::uint8_t>(stored.bytes[n * cols + c]); };
    const auto weight = [&](std::int64_t n, std::int64_t c) {  // unrounded, unlike stored.values
      return static_cast<double>(fp8_e4m3_to_float(code(n, c))) *
             (*w.scales)[(n / block_rows) * w.scale_cols() + c / block_cols];
    };
    const auto activation = [](std::int64_t m, std::int64_t c) {
      return std::ldexp(((m * 31 + c * 17) % 19 - 9) / 9.0f, static_cast<int>((m * 5 + c * 3) % 25) - 12);
    };
    for (auto isa : each.isas) {
      kernels::set_isa_for_testing(isa);
      SCOPED_TRACE(fmt::format("{} cols={} block_cols={}", kernels::isa_name(isa), cols, block_cols));
      // One-hot rows in calls of 1, 2 and 5 rows (the few- and many-row blockings).
      for (std::int64_t c0 = 0, rows = 0, step = 0; c0 < cols; c0 += rows, ++step) {
        rows = std::min<std::int64_t>(std::array<std::int64_t, 3>{1, 2, 5}[step % 3], cols - c0);
        std::vector<float> x(static_cast<std::size_t>(rows * cols), 0.0f), y(static_cast<std::size_t>(rows * out));
        for (std::int64_t m = 0; m < rows; ++m) x[m * cols + c0 + m] = std::ldexp(1.0f, static_cast<int>((c0 + m) % 25) - 12);
        kernels::linear(x.data(), rows, w, y.data());
        for (std::int64_t m = 0; m < rows; ++m)
          for (std::int64_t n = 0; n < out; ++n) {
            const std::int64_t c = c0 + m;
            const auto expected = static_cast<float>(weight(n, c) * x[m * cols + c]);
            ASSERT_EQ(y[m * out + n], expected)
                << "code " << int(code(n, c)) << " at " << n << "," << c << " in a call of " << rows << " rows";
          }
      }
      for (const std::int64_t rows : {1, 2, 7}) {
        std::vector<float> x(static_cast<std::size_t>(rows * cols)), y(static_cast<std::size_t>(rows * out));
        for (std::int64_t m = 0; m < rows; ++m)
          for (std::int64_t c = 0; c < cols; ++c) x[m * cols + c] = activation(m, c);
        kernels::linear(x.data(), rows, w, y.data());
        for (std::int64_t m = 0; m < rows; ++m)
          for (std::int64_t n = 0; n < out; ++n) {
            double sum = 0.0, magnitude = 0.0;
            for (std::int64_t c = 0; c < cols; ++c) {
              sum += weight(n, c) * x[m * cols + c];
              magnitude += std::abs(weight(n, c) * x[m * cols + c]);
            }
            // FP32 sums of up to 300 terms: a few 1e-7 of their magnitude.
            EXPECT_NEAR(y[m * out + n], sum, 2e-6 * magnitude) << "row " << m << " output " << n;
          }
      }
    }
  }
}

TEST(Kernels, DequantiseIsExactOnEveryIsaForEveryFp8CodeAndBf16) {
  // Every E4M3 code, subnormals included, in rows of 127 so lanes and blocks meet ragged edges;
  // each row block with its own scale.
  const std::int64_t cols = 127, rows = 254 * 3 / cols + 1;
  const StoredWeight fp8 = test::every_fp8_code(rows, cols, 2, 50, [](std::int64_t i) {
    return std::ldexp(1.0f + 0.37f * static_cast<float>(i), -12 + static_cast<int>(i % 9));
  });
  const StoredWeight bf16 = store_weight(test::random_values(static_cast<std::size_t>(rows * cols), 5), rows, cols, DType::BF16);

  EachIsa each;
  for (auto isa : each.isas) {
    SCOPED_TRACE(kernels::isa_name(isa));
    kernels::set_isa_for_testing(isa);
    std::vector<float> out(static_cast<std::size_t>(rows * cols));
    kernels::dequantize_rows(fp8.matrix, 0, rows, out.data());
    for (std::int64_t i = 0; i < rows * cols; ++i)
      ASSERT_EQ(out[i], fp8.values[i]) << "code " << int(static_cast<std::uint8_t>(fp8.bytes[i])) << " at " << i;
    kernels::dequantize_rows(bf16.matrix, 1, rows, out.data());
    for (std::int64_t i = 0; i < (rows - 1) * cols; ++i) ASSERT_EQ(out[i], bf16.values[cols + i]);
  }
}

TEST(Kernels, SoftmaxExponentialsMatchStdExpOnEveryIsa) {
  // Shifted scores from 0 down past float's underflow, in ragged lengths so lanes meet their ends.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> score(-30.0f, 12.0f);
  EachIsa each;
  for (auto isa : each.isas) {
    SCOPED_TRACE(kernels::isa_name(isa));
    kernels::set_isa_for_testing(isa);
    for (const std::int64_t count : {1, 7, 16, 17, 40, 513}) {
      std::vector<float> values(static_cast<std::size_t>(count));
      for (float& v : values) v = score(rng);
      values[0] = 12.0f;  // the maximum: exp(0) = 1
      if (count > 2) values[1] = -80.0f, values[2] = -120.0f;  // deep in the tail, and below underflow
      std::vector<float> got = values;
      const float sum = kernels::exp_sum(got.data(), count, 12.0f);
      double expected_sum = 0.0;
      for (std::int64_t i = 0; i < count; ++i) {
        const double expected = std::exp(static_cast<double>(values[i] - 12.0f));  // the shift is in float
        expected_sum += expected;
        EXPECT_NEAR(got[i], expected, 3e-7 * expected + 1e-37) << "exp(" << values[i] - 12.0f << ")";
      }
      EXPECT_EQ(got[0], 1.0f);
      EXPECT_NEAR(sum, expected_sum, 1e-6 * expected_sum) << count;
    }
  }
}

TEST(Kernels, ForcingAnIsaTheCpuLacksIsAnError) {
  if (kernels::isa_supported(kernels::Isa::avx512)) GTEST_SKIP() << "this CPU has every instruction set";
  EXPECT_THROW(kernels::set_isa_for_testing(kernels::Isa::avx512), Error);
}

TEST(Kernels, RmsnormMatchesDefinition) {
  const std::int64_t rows = 3, dim = 129;
  const auto x = test::random_values(static_cast<std::size_t>(rows * dim), 3);
  const auto weight = test::random_values(static_cast<std::size_t>(dim), 4);
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
    const auto q = test::random_values(static_cast<std::size_t>(tokens * heads * qk), 5);
    const auto k = test::random_values(q.size(), 6);
    const auto v = test::random_values(static_cast<std::size_t>(tokens * shape.v_stride), 7);
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
  const StoredWeight table = store_weight(test::random_values(40, 8), 10, 4, DType::BF16);
  std::vector<float> out(8);
  const std::int64_t good[] = {0, 9};
  kernels::embedding(table.matrix, good, out.data());
  EXPECT_EQ(out[4], table.values[36]);
  const std::int64_t bad[] = {3, 10};
  EXPECT_THROW(kernels::embedding(table.matrix, bad, out.data()), Error);
}

TEST(Kernels, Fp8BlockQuantisationUsesAmaxOver448PerBlock) {
  const std::int64_t rows = 130, cols = 200;  // 2 x 2 blocks, the last ones partial
  auto w = test::random_values(static_cast<std::size_t>(rows * cols), 9);
  w[129 * cols + 199] = 10.0f;  // the bottom-right partial block's amax
  const auto blocks = quantize_fp8_blocks(w.data(), rows, cols);
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

namespace dsv3 {
namespace {

// Absorbed attention over a paged latent cache, split into key ranges and merged, against a plain
// softmax over the same rows (as the cache stores them: rounded to BF16 for a BF16 cache). In exact
// mode to float32's precision; in fast mode with BF16 products (on a CPU with AVX512-BF16) the
// queries and probabilities are rounded to BF16 as well, ~2^-9 each, so within 4e-3 of the plain
// softmax, over whole and ragged 32-column blocks of the keys and values and odd key counts.
void check_latent_attention(bool fast, std::int64_t width, std::int64_t value_dim, std::int64_t heads = 11) {
  const std::int64_t block_tokens = 16, layers = 2, layer = 1;
  const test::FastArithmetic arithmetic(/*bf16=*/fast, /*min_rows=*/std::nullopt);
  kernels::set_exact_arithmetic(!fast);
  double worst = 0.0;
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (std::int64_t keys : {1, 7, 129, 1000}) {
      SCOPED_TRACE(fmt::format("{} {} heads={} width={} value_dim={} keys={}", fast ? "fast" : "exact",
                               dtype_name(dtype), heads, width, value_dim, keys));
      const std::int64_t blocks = (keys + block_tokens - 1) / block_tokens;
      // Pages handed out in reverse order, so a sequence's rows are not contiguous in storage.
      std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
      for (std::int64_t b = 0; b < blocks; ++b) table[b] = static_cast<std::int32_t>(blocks - 1 - b);
      const auto values = test::random_values(static_cast<std::size_t>(blocks * layers * block_tokens * width), 11);
      std::vector<std::byte> storage(values.size() * dtype_size(dtype));
      std::vector<float> stored(values.size());
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (dtype == DType::BF16) {
          const std::uint16_t bits = float_to_bf16(values[i]);
          std::memcpy(storage.data() + 2 * i, &bits, 2);
          stored[i] = bf16_to_float(bits);
        } else {
          std::memcpy(storage.data() + 4 * i, &values[i], 4);
          stored[i] = values[i];
        }
      }
      kernels::LatentPages pages{storage.data(), dtype, width, block_tokens, layers * block_tokens,
                                 layer * block_tokens, table};
      auto row = [&](std::int64_t j) {
        const std::int64_t block = table[j / block_tokens];
        return stored.data() + ((block * layers + layer) * block_tokens + j % block_tokens) * width;
      };
      const auto q = test::random_values(static_cast<std::size_t>(heads * width), 12, 0.3f);
      const float scale = 0.5f;
      std::vector<float> expected(static_cast<std::size_t>(heads * value_dim));
      for (std::int64_t h = 0; h < heads; ++h) {
        std::vector<double> p(static_cast<std::size_t>(keys));
        double max_score = -INFINITY, total = 0.0;
        for (std::int64_t j = 0; j < keys; ++j) {
          double s = 0.0;
          for (std::int64_t c = 0; c < width; ++c) s += static_cast<double>(q[h * width + c]) * row(j)[c];
          max_score = std::max(max_score, p[j] = s * scale);
        }
        for (auto& v : p) total += (v = std::exp(v - max_score));
        for (std::int64_t d = 0; d < value_dim; ++d) {
          double sum = 0.0;
          for (std::int64_t j = 0; j < keys; ++j) sum += p[j] / total * row(j)[d];
          expected[h * value_dim + d] = static_cast<float>(sum);
        }
      }
      for (std::int64_t splits : {1, 2, 3}) {
        std::vector<kernels::LatentPartial> partials(static_cast<std::size_t>(splits));
        std::vector<float> storage(static_cast<std::size_t>(splits * heads * (2 + value_dim)));
        for (std::int64_t s = 0; s < splits; ++s) {
          float* base = storage.data() + s * heads * (2 + value_dim);
          partials[s] = {base, base + heads, base + 2 * heads};
        }
        for (std::int64_t s = 0; s < splits; ++s)
          kernels::attention_latent(q.data(), heads, pages, keys * s / splits, keys * (s + 1) / splits, value_dim,
                                    scale, partials[s]);
        std::vector<float> out(expected.size());
        kernels::merge_latent_partials(partials, heads, value_dim, out.data());
        const double error = test::relative_l2(out.data(), expected.data(), static_cast<std::int64_t>(out.size()));
        EXPECT_LE(error, fast && dtype == DType::BF16 ? 4e-3 : 1e-5) << splits << " key ranges";
        if (dtype == DType::BF16) worst = std::max(worst, error);
      }
    }
  }
  std::printf("latent attention, %s, width %lld, values %lld: worst relative error %.3g on a BF16 cache\n",
              fast ? "fast" : "exact", static_cast<long long>(width), static_cast<long long>(value_dim), worst);
}

TEST(Kernels, LatentAttentionOverPagesAndKeyRangesMatchesNaiveSoftmax) {
  for (const bool fast : {false, true}) {
    if (fast && !kernels::gemm_bf16_supported()) continue;
    // The kernels take 8 heads at a time: 11 and 20 heads end on a remainder, 16 do not; an odd width
    // ends on a lone column, and 72, 33 or 48 values on a tail past the last whole 32 (the values
    // are the first value_dim columns of the width).
    check_latent_attention(fast, 40, 32);
    check_latent_attention(fast, 104, 72);
    check_latent_attention(fast, 96, 64, 16);
    check_latent_attention(fast, 37, 33, 11);
    check_latent_attention(fast, 72, 48, 20);
  }
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {

// The FP8 kernels scale the activations a stack buffer's worth of rows at a time (fewer rows the
// wider they are; past the buffer, the thread's buffer): a row's output is bitwise the same
// whichever rows are computed with it, and matches the reference.
TEST(Kernels, Fp8LinearGivesEachRowTheSameBitsWhateverRowsShareItsCall) {
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (const auto& [rows, out, in] : {std::array<std::int64_t, 3>{11, 20, 18432}, {3, 5, 66000}}) {
      SCOPED_TRACE(fmt::format("{} rows={} in={}", kernels::isa_name(isa), rows, in));
      const auto x = test::random_values(static_cast<std::size_t>(rows * in), 31);
      const StoredWeight w =
          store_weight(test::random_values(static_cast<std::size_t>(out * in), 32, 0.05f), out, in, DType::F8_E4M3);
      std::vector<float> together(static_cast<std::size_t>(rows * out)), alone(static_cast<std::size_t>(out));
      kernels::linear(x.data(), rows, w.matrix, together.data());
      for (std::int64_t r = 0; r < rows; ++r) {
        kernels::linear(x.data() + r * in, 1, w.matrix, alone.data());
        EXPECT_TRUE(std::equal(alone.begin(), alone.end(), together.begin() + r * out)) << "row " << r;
      }
      const auto expected = linear_reference(x, rows, w.values, out, in);
      EXPECT_LE(test::relative_l2(together.data(), expected.data(), rows * out), 1e-5);
    }
  }
}

// A batch's decode step: 2..17 activation rows go through the kernels' many-row blocking (and
// its ragged remainders of rows and output rows) on every ISA and dtype; each row matches the
// reference and is bitwise what it is alone, so a sequence's logits do not depend on its batch.
TEST(Kernels, LinearOfABatchsRowsMatchesReferenceAndEachRowAlone) {
  const bool was_exact = kernels::exact_arithmetic();
  kernels::set_exact_arithmetic(true);  // fast mode hands 32+ rows to oneDNN; these are all GEMV
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
      for (const auto& [out, in] : {std::array<std::int64_t, 2>{7, 33}, {131, 130}, {257, 1000}}) {
        const StoredWeight w =
            store_weight(test::random_values(static_cast<std::size_t>(out * in), 42, 0.05f), out, in, dtype);
        const auto x = test::random_values(static_cast<std::size_t>(17 * in), 41);
        std::vector<float> alone(static_cast<std::size_t>(17 * out));
        for (std::int64_t r = 0; r < 17; ++r) kernels::linear(x.data() + r * in, 1, w.matrix, alone.data() + r * out);
        for (std::int64_t rows = 2; rows <= 17; ++rows) {
          SCOPED_TRACE(fmt::format("{} {} rows={} out={} in={}", kernels::isa_name(isa), dtype_name(dtype), rows, out, in));
          std::vector<float> y(static_cast<std::size_t>(rows * out), NAN);
          kernels::linear(x.data(), rows, w.matrix, y.data());
          const auto expected = linear_reference(x, rows, w.values, out, in);
          EXPECT_LE(test::relative_l2(y.data(), expected.data(), rows * out), 2e-6);
          EXPECT_TRUE(std::equal(y.begin(), y.end(), alone.begin())) << "a row differs from itself computed alone";
        }
      }
    }
  }
  kernels::set_exact_arithmetic(was_exact);
}

// Fast mode's one rounding to BF16 gives a value the same bits in the AVX512-BF16 loop (32 at a
// time) and in its scalar tail: to nearest with ties to even, denormals to a zero of their sign
// (as the instruction does), NaN quiet.
TEST(Kernels, RoundToBf16GivesAValueTheSameBitsInTheVectorLoopAndItsTail) {
  const std::vector<float> values = {1.0f,           1.00390625f,  1.01171875f,   -2.5e-39f,       3e-40f,
                                     1.17549435e-38f, 1.1754942e-38f, -0.0f,        3.4e38f,         -1e-3f,
                                     INFINITY,        NAN,          1.0078125f,    65504.3f,        -7.0e-39f};
  std::vector<float> in(47);
  for (std::size_t i = 0; i < values.size(); ++i) in[i] = in[32 + i] = values[i];
  std::vector<std::uint16_t> out(47);  // the first copy in the loop, the second its tail
  kernels::round_to_bf16(in.data(), 47, out.data());
  for (std::size_t i = 0; i < values.size(); ++i) {
    SCOPED_TRACE(fmt::format("{}", values[i]));
    EXPECT_EQ(out[i], out[32 + i]);
    if (std::isnan(values[i])) {
      EXPECT_TRUE(std::isnan(bf16_to_float(out[i])));
    } else if (std::fpclassify(values[i]) == FP_SUBNORMAL) {
      EXPECT_EQ(out[i], std::signbit(values[i]) ? 0x8000 : 0x0000);
    } else {
      EXPECT_EQ(out[i], float_to_bf16(values[i]));  // core's round to nearest, ties to even
    }
  }
}

// MLA's absorbed query: out[m] = Σ_i coeffs[m, i] · weight[first + i] on every ISA and dtype, rows
// in the kernel's blocks and its ragged remainders, columns across vector and FP8 block edges;
// each row is bitwise what it is alone, and nothing past a row's columns is written.
TEST(Kernels, CombineRowsMatchesReferenceAndEachRowAlone) {
  const std::int64_t weight_rows = 150, first = 5, count = 137, coeff_stride = count + 3;
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    // The FP8 blocks: DeepSeek-V3's 128 x 128, then blocks that split a 64-column step and a vector.
    for (const auto& [dtype, block_rows, block_cols] :
         {std::tuple<DType, std::int64_t, std::int64_t>{DType::F32, 0, 0}, {DType::BF16, 0, 0}, {DType::F16, 0, 0},
          {DType::F8_E4M3, 128, 128}, {DType::F8_E4M3, 32, 48}, {DType::F8_E4M3, 3, 20}}) {
      for (const std::int64_t cols : {7, 64, 200, 257}) {
        const std::int64_t out_stride = cols + 5;
        const StoredWeight w = store_weight(test::random_values(static_cast<std::size_t>(weight_rows * cols), 52, 0.05f),
                                            weight_rows, cols, dtype, block_rows, block_cols);
        const auto coeffs = test::random_values(static_cast<std::size_t>(13 * coeff_stride), 51);
        std::vector<float> alone(static_cast<std::size_t>(13 * out_stride), -7.0f);
        for (std::int64_t m = 0; m < 13; ++m)
          kernels::combine_rows(w.matrix, first, count, coeffs.data() + m * coeff_stride, coeff_stride, 1,
                                alone.data() + m * out_stride, out_stride);
        for (std::int64_t rows = 1; rows <= 13; ++rows) {
          SCOPED_TRACE(fmt::format("{} {} blocks {}x{} rows={} cols={}", kernels::isa_name(isa), dtype_name(dtype),
                                   block_rows, block_cols, rows, cols));
          std::vector<float> out(static_cast<std::size_t>(rows * out_stride), -7.0f);
          kernels::combine_rows(w.matrix, first, count, coeffs.data(), coeff_stride, rows, out.data(), out_stride);
          double error = 0.0, norm = 0.0;
          for (std::int64_t m = 0; m < rows; ++m)
            for (std::int64_t c = 0; c < out_stride; ++c) {
              const float value = out[m * out_stride + c];
              if (c >= cols) {
                EXPECT_EQ(value, -7.0f) << "row " << m << " column " << c << " lies past the row";
                continue;
              }
              double expected = 0.0;
              for (std::int64_t i = 0; i < count; ++i)
                expected += static_cast<double>(coeffs[m * coeff_stride + i]) * w.values[(first + i) * cols + c];
              error += (value - expected) * (value - expected);
              norm += expected * expected;
              EXPECT_EQ(value, alone[m * out_stride + c]) << "row " << m << " column " << c << " differs from the row alone";
            }
          // FP32 accumulation over 137 terms: ~1e-7 relative; a wrong lane, scale or edge is far off.
          EXPECT_LE(std::sqrt(error / norm), 2e-6);
        }
      }
    }
  }
}

TEST(Kernels, LinearRowsComputesExactlyItsSliceOfLinear) {
  const std::int64_t rows = 3, out = 300, in = 200;  // slices cross the FP8 128-row blocks
  const auto x = test::random_values(static_cast<std::size_t>(rows * in), 21);
  for (DType dtype : {DType::F32, DType::BF16, DType::F8_E4M3}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)));
    const StoredWeight w = store_weight(test::random_values(static_cast<std::size_t>(out * in), 22, 0.05f), out, in, dtype);
    std::vector<float> full(static_cast<std::size_t>(rows * out)), sliced(full.size(), -7.0f);
    kernels::linear(x.data(), rows, w.matrix, full.data());
    for (const auto& [begin, end] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {100, 150}, {150, 300}})
      kernels::linear_rows(x.data(), rows, w.matrix, begin, end, sliced.data());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t n = 0; n < out; ++n) {
        const float value = sliced[r * out + n];
        if (n >= 1 && n < 100) {
          EXPECT_EQ(value, -7.0f) << "row " << n << " is outside every slice and must be left alone";
        } else {
          EXPECT_NEAR(value, full[r * out + n], 1e-5f * (1.0f + std::fabs(full[r * out + n])));
        }
      }
    std::vector<float> y(static_cast<std::size_t>(rows * out));
    EXPECT_THROW(kernels::linear_rows(x.data(), rows, w.matrix, 290, 301, y.data()), Error);
  }
}

}  // namespace
}  // namespace dsv3
