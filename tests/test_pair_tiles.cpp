// The pair-tile kernels (AVX512-BF16 dot products over weights in tiles of 16 rows by column pairs)
// and the few-row BF16 products of fast mode: against double references and against vdpbf16ps'
// own summation order, bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/numeric.h"
#include "fast_arithmetic.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "stored_weight.h"
#include "support.h"

namespace dsv3 {
namespace {

using test::linear_reference;
using test::store_weight;
using test::StoredWeight;

// Fast mode where the GEMM takes BF16 inputs: a BF16 weight's few-row products round the
// activations to BF16 as the GEMM does and sum the exact products in float32. Against a double
// reference on the rounded activations (unrounded ones are ~2^-9 away), 1 to 63 rows and the
// kernel's ragged edges (columns not a multiple of 32); each row bitwise what it is alone and what
// linear_rows gives its slice; and from 64 rows the GEMM, which rounds the same way, within float32
// summation of the same reference.
// The same with the weight in pair tiles (pack_for_few_rows, as the output head is at load).
TEST(Kernels, FastBf16LinearRoundsActivationsAsTheGemmAndGivesEachRowItsBitsAlone) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  ASSERT_EQ(kernels::min_gemm_rows_bf16_dot(), 64);
  for (const auto& [out, in, tiles] : {std::array<std::int64_t, 3>{7, 33, 0}, {131, 130, 0}, {257, 1000, 0},
                                       {40, 1024, 0}, {3, 1, 1}, {7, 33, 1}, {131, 130, 1}, {257, 1000, 1},
                                       {40, 1024, 1}}) {
    StoredWeight w =
        store_weight(test::random_values(static_cast<std::size_t>(out * in), 42, 0.05f), out, in, DType::BF16);
    if (tiles) {
      ASSERT_EQ(kernels::pack_for_few_rows(w.matrix),
                static_cast<std::size_t>((out + 15) / 16 * 16 * ((in + 1) / 2) * 4));
      ASSERT_NE(w.matrix.packed_copy(), nullptr);
    }
    SCOPED_TRACE(tiles ? "pair tiles" : "row-major");
    const std::int64_t max_rows = 72;
    const auto x = test::random_values(static_cast<std::size_t>(max_rows * in), 41);
    std::vector<float> rounded(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) rounded[i] = bf16_to_float(float_to_bf16(x[i]));
    const auto expected = linear_reference(rounded, max_rows, w.values, out, in);
    const auto unrounded = linear_reference(x, max_rows, w.values, out, in);
    ASSERT_GT(test::relative_l2(unrounded.data(), expected.data(), max_rows * out), 1e-4);
    std::vector<float> alone(static_cast<std::size_t>(max_rows * out));
    for (std::int64_t r = 0; r < max_rows; ++r) kernels::linear(x.data() + r * in, 1, w.matrix, alone.data() + r * out);
    EXPECT_LE(test::relative_l2(alone.data(), expected.data(), max_rows * out), 1e-6);
    for (std::int64_t rows = 2; rows <= max_rows; ++rows) {
      SCOPED_TRACE(fmt::format("rows={} out={} in={}", rows, out, in));
      std::vector<float> y(static_cast<std::size_t>(rows * out), NAN);
      kernels::linear(x.data(), rows, w.matrix, y.data());
      EXPECT_LE(test::relative_l2(y.data(), expected.data(), rows * out), 1e-6);
      if (rows < kernels::min_gemm_rows_bf16_dot()) {
        EXPECT_TRUE(std::equal(y.begin(), y.end(), alone.begin())) << "a row differs from itself computed alone";
      }
    }
    const std::int64_t rows = 17, n_begin = out / 3, n_end = out - 2;
    std::vector<float> slice(static_cast<std::size_t>(rows * out), NAN);
    kernels::linear_rows(x.data(), rows, w.matrix, n_begin, n_end, slice.data());
    for (std::int64_t r = 0; r < rows; ++r)
      EXPECT_TRUE(std::equal(slice.begin() + r * out + n_begin, slice.begin() + r * out + n_end,
                             alone.begin() + r * out + n_begin))
          << "linear_rows, row " << r;
  }
}

// The activations as the pair-tile kernels read them: the AVX-512 path (a 16 x 16 transpose in
// registers) writes what the portable loop writes, dword for dword (values rounded to BF16 in pairs,
// rows in groups of 16, a column past the end 0), ragged rows and columns, NaN and denormals included.
TEST(Kernels, PairTileActivationsAreTheSameOnEveryPath) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  for (const std::int64_t rows : {1, 5, 16, 17, 40})
    for (const std::int64_t cols : {1, 2, 31, 33, 64, 256, 1000}) {
      SCOPED_TRACE(fmt::format("rows={} cols={}", rows, cols));
      auto x = test::random_values(static_cast<std::size_t>(rows * cols), 70 + cols);
      x[0] = NAN;
      if (x.size() > 3) x[3] = 1e-40f;  // a denormal: to a zero of its sign
      const std::size_t dwords = static_cast<std::size_t>(rows * ((cols + 1) / 2));
      std::vector<std::uint32_t> vector(dwords + 16, 0xdeadbeef), portable(dwords + 16, 0xdeadbeef);
      kernels::set_isa_for_testing(kernels::Isa::avx512);
      kernels::pair_tile_activations(x.data(), rows, cols, vector.data());
      kernels::set_isa_for_testing(kernels::Isa::avx2);
      kernels::pair_tile_activations(x.data(), rows, cols, portable.data());
      kernels::set_isa_for_testing(std::nullopt);
      EXPECT_EQ(vector, portable);
      EXPECT_EQ(vector[dwords], 0xdeadbeefu) << "written past the end";
      // Row m's pair p of group g at [g * 16 * pairs + p * group_rows + m % 16].
      const std::int64_t pairs = (cols + 1) / 2, last = rows - 1, group_rows = std::min<std::int64_t>(16, rows - last / 16 * 16);
      const std::uint32_t dword = vector[static_cast<std::size_t>(last / 16 * 16 * pairs + (pairs - 1) * group_rows + last % 16)];
      const std::int64_t c = 2 * (pairs - 1);
      EXPECT_EQ(dword & 0xffff, float_to_bf16(x[last * cols + c]));
      EXPECT_EQ(dword >> 16, c + 1 < cols ? float_to_bf16(x[last * cols + c + 1]) : 0u);
    }
}

// The bytes pack_for_absorb takes for a shape: per head W_UK[h]ᵀ (kv_lora outputs in tiles of 16,
// nope inputs in pairs) and W_UV[h] (v outputs, kv_lora inputs), 4 bytes a pair.
struct AbsorbLayoutBytes {
  std::size_t bytes;
};
AbsorbLayoutBytes absorb_layout_bytes(const kernels::MlaShape& d) {
  const auto tiles = [](std::int64_t rows, std::int64_t cols) {
    return static_cast<std::size_t>((rows + 15) / 16 * 16 * ((cols + 1) / 2) * 4);
  };
  return {static_cast<std::size_t>(d.heads) * (tiles(d.kv_lora, d.nope) + tiles(d.v, d.kv_lora))};
}

// What AVX512-BF16's vdpbf16ps does to one lane (Intel's pseudo-code): the odd column's product,
// then the even one's, each added in float32 (the products of two BF16 values are exact).
float dot_pairs_in_order(const std::uint16_t* x, const std::uint16_t* w, std::int64_t cols) {
  float sum = 0.0f;
  for (std::int64_t c = 0; c < cols; c += 2) {
    if (c + 1 < cols) sum += bf16_to_float(x[c + 1]) * bf16_to_float(w[c + 1]);
    sum += bf16_to_float(x[c]) * bf16_to_float(w[c]);
  }
  return sum;
}

// A weight in pair tiles: each output is one float32 sum over the column pairs in order (the
// emulation above, bit for bit) for any number of rows and any slice of outputs, tiles cut at
// either end included; a view of other data (another weight's rows) does not read the tiles.
TEST(Kernels, PairTilesSumEachOutputOverItsColumnPairsInOrder) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
  const std::int64_t out = 93, in = 77, max_rows = 40;
  StoredWeight w = store_weight(test::random_values(static_cast<std::size_t>(out * in), 52, 0.05f), out, in, DType::BF16);
  ASSERT_GT(kernels::pack_for_few_rows(w.matrix), 0u);
  const auto x = test::random_values(static_cast<std::size_t>(max_rows * in), 51);
  std::vector<std::uint16_t> x16(x.size()), w16(static_cast<std::size_t>(out * in));
  kernels::round_to_bf16(x.data(), static_cast<std::int64_t>(x.size()), x16.data());
  std::memcpy(w16.data(), w.bytes.data(), w.bytes.size());
  for (std::int64_t rows : {1, 2, 5, 8, 9, 16, 17, 40}) {
    for (const auto& [begin, end] : {std::pair<std::int64_t, std::int64_t>{0, out}, {5, 6}, {17, 80}, {64, 93}}) {
      SCOPED_TRACE(fmt::format("rows={} outputs [{}, {})", rows, begin, end));
      std::vector<float> y(static_cast<std::size_t>(rows * out), -7.0f);
      if (begin == 0 && end == out) {
        kernels::linear(x.data(), rows, w.matrix, y.data());
      } else {
        kernels::linear_rows(x.data(), rows, w.matrix, begin, end, y.data());
      }
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t n = 0; n < out; ++n) {
          const float expected = n >= begin && n < end ? dot_pairs_in_order(&x16[r * in], &w16[n * in], in) : -7.0f;
          ASSERT_EQ(y[r * out + n], expected) << "row " << r << ", output " << n;
        }
    }
  }
  Matrix other = w.matrix;  // the same tiles attached to a view of other rows
  other.data += in * 2;
  other.rows = out - 1;
  EXPECT_EQ(other.packed_copy(), nullptr);
  std::vector<float> y(static_cast<std::size_t>(out - 1));
  kernels::linear(x.data(), 1, other, y.data());
  for (std::int64_t n = 0; n + 1 < out; ++n)
    EXPECT_NEAR(y[n], dot_pairs_in_order(x16.data(), &w16[(n + 1) * in], in), 1e-5f * (1.0f + std::fabs(y[n])));
}

// MLA's absorbed products in fast mode from kv_b_proj's absorb tiles (pack_for_absorb, as a loaded
// model's are): the query's latent part is each head's W_UK[h]ᵀ q_nope and the output each head's
// W_UV[h] o_latent, every value one float32 sum over its pairs in order of the BF16-rounded
// activations (the emulation above, bit for bit), for 1 to 40 rows; odd nope, a value tail and a
// latent width that is not a multiple of 16 cut the tiles; the rope part is copied. In exact mode
// the same weight gives the exact products (the tiles unread).
TEST(Kernels, AbsorbTilesSumEachHeadsProductsOverTheirPairsInOrder) {
  if (!kernels::gemm_bf16_supported() || !kernels::isa_supported(kernels::Isa::avx512))
    GTEST_SKIP() << "this CPU has no AVX512-BF16";
  const kernels::MlaShape d{.heads = 3, .nope = 27, .rope = 8, .v = 17, .kv_lora = 136};
  const std::int64_t kv_dim = d.nope + d.v, w_rows = d.heads * kv_dim;
  StoredWeight w =
      store_weight(test::random_values(static_cast<std::size_t>(w_rows * d.kv_lora), 62, 0.05f), w_rows, d.kv_lora, DType::BF16);
  std::vector<std::uint16_t> w16(static_cast<std::size_t>(w_rows * d.kv_lora));
  std::memcpy(w16.data(), w.bytes.data(), w.bytes.size());
  const kernels::Backend& backend = kernels::default_backend();
  const auto run = [&](std::int64_t rows, const std::vector<float>& q, const std::vector<float>& o) {
    std::vector<float> q_in = q, o_in = o, q_latent(static_cast<std::size_t>(rows * d.heads * d.width()), -7.0f),
                       out(static_cast<std::size_t>(rows * d.heads * d.v), -7.0f);
    kernels::Workspace workspace(backend);
    backend.mla_absorb_query({q_in.data(), rows, d.heads * d.qk()}, w.matrix, d,
                             {q_latent.data(), rows, d.heads * d.width()}, workspace);
    backend.mla_absorb_output({o_in.data(), rows, d.heads * d.kv_lora}, w.matrix, d, {out.data(), rows, d.heads * d.v},
                              workspace);
    return std::pair{q_latent, out};
  };
  {
    test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
    const AbsorbLayoutBytes expected = absorb_layout_bytes(d);
    ASSERT_EQ(backend.prepare_absorb_weight(w.matrix, d), expected.bytes);
    ASSERT_NE(w.matrix.packed_copy(PackedOrder::absorb_tiles), nullptr);
    EXPECT_EQ(w.matrix.packed_copy(), nullptr);  // not pair tiles of the whole weight: linear reads its rows
  }
  for (std::int64_t rows : {1, 2, 5, 16, 17, 40}) {
    SCOPED_TRACE(fmt::format("rows={}", rows));
    const auto q = test::random_values(static_cast<std::size_t>(rows * d.heads * d.qk()), 60 + rows);
    const auto o = test::random_values(static_cast<std::size_t>(rows * d.heads * d.kv_lora), 61 + rows);
    std::pair<std::vector<float>, std::vector<float>> fast_result;
    {
      test::FastArithmetic fast(/*bf16=*/true, /*min_rows=*/std::nullopt);
      fast_result = run(rows, q, o);
    }
    const auto& [q_latent, out] = fast_result;
    std::vector<std::uint16_t> q16(q.size()), o16(o.size());
    kernels::round_to_bf16(q.data(), static_cast<std::int64_t>(q.size()), q16.data());
    kernels::round_to_bf16(o.data(), static_cast<std::int64_t>(o.size()), o16.data());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        // W_UK[h]ᵀ's row c is column c of the head's nope rows.
        for (std::int64_t c = 0; c < d.kv_lora; ++c) {
          std::vector<std::uint16_t> column(static_cast<std::size_t>(d.nope));
          for (std::int64_t i = 0; i < d.nope; ++i) column[i] = w16[(h * kv_dim + i) * d.kv_lora + c];
          ASSERT_EQ(q_latent[(r * d.heads + h) * d.width() + c],
                    dot_pairs_in_order(&q16[(r * d.heads + h) * d.qk()], column.data(), d.nope))
              << "query row " << r << " head " << h << " latent " << c;
        }
        for (std::int64_t i = 0; i < d.rope; ++i)
          ASSERT_EQ(q_latent[(r * d.heads + h) * d.width() + d.kv_lora + i], q[(r * d.heads + h) * d.qk() + d.nope + i]);
        for (std::int64_t j = 0; j < d.v; ++j)
          ASSERT_EQ(out[(r * d.heads + h) * d.v + j],
                    dot_pairs_in_order(&o16[(r * d.heads + h) * d.kv_lora], &w16[(h * kv_dim + d.nope + j) * d.kv_lora],
                                       d.kv_lora))
              << "output row " << r << " head " << h << " value " << j;
      }
    // Exact mode: the weight's own rows, products of unrounded activations (tiles unread).
    const auto [exact_latent, exact_out] = run(rows, q, o);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t h = 0; h < d.heads; ++h)
        for (std::int64_t j = 0; j < d.v; ++j) {
          double sum = 0.0;
          for (std::int64_t c = 0; c < d.kv_lora; ++c)
            sum += static_cast<double>(o[(r * d.heads + h) * d.kv_lora + c]) *
                   bf16_to_float(w16[(h * kv_dim + d.nope + j) * d.kv_lora + c]);
          ASSERT_NEAR(exact_out[(r * d.heads + h) * d.v + j], sum, 1e-5) << "exact output row " << r;
        }
  }
}

}  // namespace
}  // namespace dsv3
