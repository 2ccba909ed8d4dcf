// Op tests for the dense ops: embedding, linear in every mode, rmsnorm, rope, elementwise ops, matmul.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "fast_arithmetic.h"

#include "op_harness.h"

namespace dsv3::op_harness {
namespace {

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

// The row-wise ops split big inputs over the thread pool and run small ones on the calling thread.
// Neither may change a bit: a row computed with 1, 2 or 3 threads, or alone, is the same row. The
// sizes are split over the pool, with columns that are no multiple of any vector width or block.
enum class RowOp { swiglu, rmsnorm, add, copy_rows, rope };

std::vector<float> run_row_op(const Backend& backend, RowOp op, const std::vector<float>& a, const std::vector<float>& b,
                              const std::vector<float>& weight, std::int64_t first, std::int64_t rows, std::int64_t cols) {
  const auto slice = [&](const std::vector<float>& v) {
    return std::vector<float>(v.begin() + first * cols, v.begin() + (first + rows) * cols);
  };
  DeviceTensor x(backend, slice(a), rows, cols, cols + 3), y(backend, slice(b), rows, cols);
  switch (op) {
    case RowOp::swiglu:
      backend.swiglu(x.view, y.view, x.view);
      return x.values();
    case RowOp::rmsnorm:
      backend.rmsnorm(x.view, weight, 1e-6f, y.view);
      return y.values();
    case RowOp::add:
      backend.add(x.view, y.view);
      return x.values();
    case RowOp::copy_rows: {
      DeviceTensor out(backend, 2 * rows, cols, cols + 1);
      backend.copy_rows(x.view, out.view, 2);
      return out.values();
    }
    case RowOp::rope: {
      std::vector<double> inverse_frequencies(static_cast<std::size_t>(cols / 2));
      for (std::size_t i = 0; i < inverse_frequencies.size(); ++i) inverse_frequencies[i] = std::pow(0.5, static_cast<double>(i));
      std::vector<std::int64_t> positions(static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r) positions[static_cast<std::size_t>(r)] = 7 * (first + r);
      backend.rope(x.view, 1, positions, {inverse_frequencies, 1.25, false});
      return x.values();
    }
  }
  return {};
}

TEST_P(OpHarness, RowOpsGiveTheSameBitsWhateverTheSplit) {
  struct Size {
    std::int64_t rows, cols;
  };
  const int threads = ThreadPool::global().size();
  struct RestorePool {
    int threads;
    ~RestorePool() { ThreadPool::set_global_threads(threads); }
  } restore{threads};
  for (const Size size : {Size{515, 1030}, Size{33, 2818}, Size{1, 4098}}) {
    const std::int64_t rows = size.rows, cols = size.cols;
    const std::vector<float> a = random_values(static_cast<std::size_t>(rows * cols), rows, 3.0f);
    const std::vector<float> b = random_values(a.size(), rows + 1, 3.0f);
    const std::vector<float> weight = random_values(static_cast<std::size_t>(cols), 5);
    for (const RowOp op : {RowOp::swiglu, RowOp::rmsnorm, RowOp::add, RowOp::copy_rows, RowOp::rope}) {
      const std::string what = describe("row op", {{"op", static_cast<std::int64_t>(op)}, {"rows", rows}, {"cols", cols}});
      const std::int64_t out_rows = op == RowOp::copy_rows ? 2 * rows : rows;
      const std::vector<float> whole = run_row_op(device(), op, a, b, weight, 0, rows, cols);
      const std::vector<float> want = run_row_op(reference(), op, a, b, weight, 0, rows, cols);
      if (op == RowOp::add || op == RowOp::copy_rows) {
        expect_identical(whole, want, cols, what + " against the reference");
      } else {
        // The bounds of the tests above: swiglu's exp and division; rmsnorm's mean of squares.
        const double ulps = op == RowOp::swiglu ? 8 : op == RowOp::rmsnorm ? cols / 2 + 8 : 8;
        std::vector<float> magnitude = absolute(want);
        if (op == RowOp::rope)  // |a| + |b| of each rotated pair, times the factor
          for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t i = 0; i < cols / 2; ++i)
              magnitude[r * cols + i] = magnitude[r * cols + i + cols / 2] =
                  1.25f * (std::fabs(a[r * cols + i]) + std::fabs(a[r * cols + i + cols / 2]));
        expect_within(whole, want, magnitude, ulps * kUnit, cols, what + " against the reference");
      }
      for (int pool : {1, 3}) {
        ThreadPool::set_global_threads(pool);
        expect_identical(run_row_op(device(), op, a, b, weight, 0, rows, cols), whole, cols,
                         what + " on " + std::to_string(pool) + " threads");
      }
      ThreadPool::set_global_threads(threads);
      for (const std::int64_t r : {std::int64_t{0}, rows / 2, rows - 1}) {
        const std::vector<float> alone = run_row_op(device(), op, a, b, weight, r, 1, cols);
        const std::int64_t per_row = out_rows / rows;
        expect_identical(alone, std::vector<float>(whole.begin() + r * per_row * cols, whole.begin() + (r + 1) * per_row * cols),
                         cols, what + " row " + std::to_string(r) + " alone");
      }
    }
  }
  // No frequencies: nothing to rotate, and nothing to size the pool's tasks by.
  DeviceTensor no_columns(device(), 4, 0);
  const std::vector<std::int64_t> positions{0, 1, 2, 3};
  EXPECT_NO_THROW(device().rope(no_columns.view, 1, positions, {}));
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

TEST_P(OpHarness, OpsRejectMismatchedShapes) {
  const HostWeight w = random_weight(DType::BF16, 8, 16, 1);
  DeviceTensor x(device(), 2, 15), y(device(), 2, 8);
  EXPECT_THROW(device().linear(x.view, w.on(device()), y.view), Error);
  DeviceTensor a(device(), 3, 4), b(device(), 3, 5);
  EXPECT_THROW(device().add(a.view, b.view), Error);
}

}  // namespace
}  // namespace dsv3::op_harness
