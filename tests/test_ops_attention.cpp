// Op tests for attention: causal over a cached prefix, the latent cache, latent attention, MLA absorption.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "op_harness.h"

namespace dsv3::op_harness {
namespace {

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

}  // namespace
}  // namespace dsv3::op_harness
