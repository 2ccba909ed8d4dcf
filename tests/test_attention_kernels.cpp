// The CPU attention kernels on every instruction-set path against the plain reference
// (src/kernels/reference), at sizes that land on and beside their blocks' edges: prefill's query
// blocks (128 rows) and register blocks, decode's 64-key chunks, 4-head groups, 16-lane and
// 64-value tails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "each_isa.h"
#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/reference/reference.h"
#include "support.h"

namespace dsv3 {
namespace {

using test::EachIsa;

// The float32 error bound of softmax attention (as tests/test_ops_attention.cpp derives it): a
// score over `dim` products is off by at most (dim + 1)·u·S, S = scale·|q|·|k| (Cauchy-Schwarz);
// exp turns that into relative errors of the weights (twice: the score and the maximum), and the
// normaliser and the weighted sum each add `keys` roundings. Relative to Σ p |v|.
double attention_tolerance(std::int64_t dim, double score_bound, std::int64_t keys) {
  return (4.0 * (static_cast<double>(dim) + 1.0) * score_bound + 2.0 * static_cast<double>(keys) + 16.0) * 0x1p-24;
}

double largest_norm(const std::vector<float>& values, std::int64_t dim) {
  double best = 0.0;
  for (std::size_t i = 0; i + static_cast<std::size_t>(dim) <= values.size(); i += static_cast<std::size_t>(dim)) {
    double squares = 0.0;
    for (std::int64_t d = 0; d < dim; ++d) squares += static_cast<double>(values[i + d]) * values[i + d];
    best = std::max(best, std::sqrt(squares));
  }
  return best;
}

std::vector<float> absolute(std::vector<float> values) {
  for (float& v : values) v = std::fabs(v);
  return values;
}

// |got - want| <= tolerance · magnitude elementwise (magnitude: the reference on |v|, Σ p |v|).
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& magnitude,
                   double tolerance, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tolerance * magnitude[i] + 1e-30)) {
      if (bad++ == 0) first = i;
    }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " values off, the first at " << first << ": "
                     << got[first] << " against " << want[first] << " (bound " << tolerance * magnitude[first] << ")";
}

struct CausalCase {
  std::int64_t tokens, query_offset, heads, qk_dim, v_dim;
};

// q and k [positions, heads, qk_dim]; v read in place from rows [positions, heads, 3 + v_dim + 2]
// (as MLA reads it from kv_b_proj's output), so no stride is the packed one.
std::vector<float> run_causal(const kernels::Backend* backend, const CausalCase& c, const std::vector<float>& q,
                              const std::vector<float>& k, const std::vector<float>& v, float scale) {
  const std::int64_t v_row = 3 + c.v_dim + 2;
  kernels::AttentionShape shape;
  shape.tokens = c.tokens;
  shape.query_offset = c.query_offset;
  shape.heads = c.heads;
  shape.qk_dim = c.qk_dim;
  shape.v_dim = c.v_dim;
  shape.q_stride = shape.k_stride = c.heads * c.qk_dim;
  shape.q_head_stride = shape.k_head_stride = c.qk_dim;
  shape.v_stride = c.heads * v_row;
  shape.v_head_stride = v_row;
  std::vector<float> out(static_cast<std::size_t>(c.tokens * c.heads * c.v_dim), -7.0f);
  if (backend)
    backend->attention_causal(q.data(), k.data(), v.data() + 3, shape, scale, out.data());
  else
    kernels::attention_causal(q.data(), k.data(), v.data() + 3, shape, scale, out.data());
  return out;
}

TEST(AttentionKernels, CausalMatchesReferenceOnEveryIsaAcrossBlockEdges) {
  // Tokens on and beside the 128-row query block and the register blocks, one token, a cached
  // prefix (chunked prefill) ending on and off a block; heads 1, 3 and 16; bench-1b's 96 / 64.
  const CausalCase cases[] = {{1, 0, 1, 96, 64},    {1, 700, 3, 21, 19},  {2, 0, 3, 96, 64},   {5, 3, 1, 17, 1},
                              {127, 0, 3, 21, 19},  {128, 0, 1, 96, 64},  {129, 0, 3, 33, 16}, {129, 128, 3, 21, 19},
                              {257, 5, 1, 96, 64},  {300, 0, 16, 96, 64}, {64, 63, 3, 8, 65}};
  const kernels::ReferenceBackend reference;
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (const CausalCase& c : cases) {
      const std::string what = fmt::format("{} tokens={} offset={} heads={} qk={} v={}", kernels::isa_name(isa),
                                           c.tokens, c.query_offset, c.heads, c.qk_dim, c.v_dim);
      const std::int64_t keys = c.query_offset + c.tokens;
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.qk_dim));
      const auto q = test::random_values(static_cast<std::size_t>(c.tokens * c.heads * c.qk_dim), c.tokens + 1);
      const auto k = test::random_values(static_cast<std::size_t>(keys * c.heads * c.qk_dim), c.tokens + 2);
      const auto v = test::random_values(static_cast<std::size_t>(keys * c.heads * (c.v_dim + 5)), c.tokens + 3);
      const std::vector<float> got = run_causal(nullptr, c, q, k, v, scale);
      const std::vector<float> want = run_causal(&reference, c, q, k, v, scale);
      const std::vector<float> magnitude = run_causal(&reference, c, q, k, absolute(v), scale);
      const double score_bound = scale * largest_norm(q, c.qk_dim) * largest_norm(k, c.qk_dim);
      expect_within(got, want, magnitude, attention_tolerance(c.qk_dim, score_bound, keys), what);
    }
  }
}

// The model compares bits across ranks: prefill attention must not depend on how many threads
// share the (head, query block) tasks, nor on which thread takes which.
TEST(AttentionKernels, CausalGivesTheSameBitsWhateverTheThreadCount) {
  const CausalCase c{300, 40, 3, 96, 64};
  const auto q = test::random_values(static_cast<std::size_t>(c.tokens * c.heads * c.qk_dim), 1);
  const auto k = test::random_values(static_cast<std::size_t>((c.query_offset + c.tokens) * c.heads * c.qk_dim), 2);
  const auto v = test::random_values(static_cast<std::size_t>((c.query_offset + c.tokens) * c.heads * (c.v_dim + 5)), 3);
  const int threads = static_cast<int>(ThreadPool::global().size());
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    std::vector<std::vector<float>> outs;
    for (int n : {1, 2, 3}) {
      ThreadPool::set_global_threads(n);
      outs.push_back(run_causal(nullptr, c, q, k, v, 0.1f));
    }
    for (std::size_t i = 1; i < outs.size(); ++i)
      EXPECT_EQ(std::memcmp(outs[0].data(), outs[i].data(), outs[0].size() * sizeof(float)), 0)
          << kernels::isa_name(isa) << ": " << i + 1 << " threads";
  }
  ThreadPool::set_global_threads(threads);
}

// A pool of `blocks` cache pages of block_tokens rows (2 layers, layer 1 used), pages handed out
// in reverse so a sequence's rows are not contiguous; `values` per row as stored (BF16-rounded).
struct Pages {
  DType dtype;
  std::int64_t width, block_tokens = 16, layers = 2, layer = 1, blocks;
  std::vector<std::int32_t> table;
  std::vector<std::byte> bytes;

  Pages(DType dtype, std::int64_t width, std::int64_t keys, const std::vector<float>& values)
      : dtype(dtype), width(width), blocks((keys + 15) / 16) {
    for (std::int64_t b = 0; b < blocks; ++b) table.push_back(static_cast<std::int32_t>(blocks - 1 - b));
    bytes.resize(values.size() * dtype_size(dtype));
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::BF16) {
        const std::uint16_t bits = float_to_bf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &bits, 2);
      } else {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      }
    }
  }
  kernels::LatentPages view() const {
    return {const_cast<std::byte*>(bytes.data()), dtype, width, block_tokens, layers * block_tokens,
            layer * block_tokens, table};
  }
};

TEST(AttentionKernels, LatentMatchesReferenceOnEveryIsaAcrossChunkAndHeadEdges) {
  struct Case {
    std::int64_t heads, kv_lora, rope;
  };
  // Heads 1, 3, 5 and 16 (the 4-head groups and their remainder); widths whole vectors or not;
  // values a multiple of 64, of 16, or neither.
  const Case shapes[] = {{16, 256, 32}, {3, 37, 8}, {1, 64, 16}, {5, 20, 3}};
  const std::int64_t key_counts[] = {1, 2, 63, 64, 65, 129, 700};
  const kernels::ReferenceBackend reference;
  kernels::Workspace workspace(reference);
  EachIsa each;
  for (auto isa : each.isas) {
    kernels::set_isa_for_testing(isa);
    for (DType dtype : {DType::F32, DType::BF16})
      for (const Case& s : shapes)
        for (std::int64_t keys : key_counts) {
          const std::string what = fmt::format("{} {} heads={} width={}+{} keys={}", kernels::isa_name(isa),
                                               dtype_name(dtype), s.heads, s.kv_lora, s.rope, keys);
          const std::int64_t width = s.kv_lora + s.rope;
          const kernels::MlaShape shape{.heads = s.heads, .nope = 1, .rope = s.rope, .v = 1, .kv_lora = s.kv_lora};
          const std::int64_t rows = (keys + 15) / 16 * 16 * 2;
          const auto values = test::random_values(static_cast<std::size_t>(rows * width), keys + 11);
          const Pages pages(dtype, width, keys, values);
          std::vector<float> magnitudes(values.size());  // |stored value|: BF16 rounding keeps the sign apart
          for (std::size_t i = 0; i < values.size(); ++i)
            magnitudes[i] = std::fabs(dtype == DType::BF16 ? bf16_to_float(float_to_bf16(values[i])) : values[i]);
          const Pages absolute_pages(dtype, width, keys, magnitudes);
          auto q = test::random_values(static_cast<std::size_t>(s.heads * width), keys + 12, 0.3f);
          const float scale = 0.5f;

          // Two key ranges, the split off the 64-key chunk grid, merged; and the whole range alone.
          const std::int64_t splits_list[] = {1, 2};
          for (std::int64_t splits : splits_list) {
            if (splits > keys) continue;
            std::vector<float> storage(static_cast<std::size_t>(splits * s.heads * (2 + s.kv_lora)));
            std::vector<kernels::LatentPartial> partials(static_cast<std::size_t>(splits));
            for (std::int64_t p = 0; p < splits; ++p) {
              float* base = storage.data() + p * s.heads * (2 + s.kv_lora);
              partials[p] = {base, base + s.heads, base + 2 * s.heads};
              const kernels::LatentPages view = pages.view();
              kernels::attention_latent(q.data(), s.heads, view, p == 0 ? 0 : keys / 3 + 1,
                                        p + 1 == splits ? keys : keys / 3 + 1, s.kv_lora, scale, partials[p]);
            }
            std::vector<float> got(static_cast<std::size_t>(s.heads * s.kv_lora));
            kernels::merge_latent_partials(partials, s.heads, s.kv_lora, got.data());

            auto run_reference = [&](const Pages& source) {
              const kernels::LatentPages view = source.view();
              const kernels::LatentQuery query{.pages = &view, .keys = keys};
              std::vector<float> out(got.size());
              reference.attention_latent(kernels::Tensor(q.data(), 1, s.heads * width), {&query, 1}, shape, scale,
                                         kernels::Tensor(out.data(), 1, s.heads * s.kv_lora), workspace);
              return out;
            };
            std::vector<float> stored(values.size());
            for (std::size_t i = 0; i < values.size(); ++i)
              stored[i] = dtype == DType::BF16 ? bf16_to_float(float_to_bf16(values[i])) : values[i];
            const double score_bound = scale * largest_norm(q, width) * largest_norm(stored, width);
            expect_within(got, run_reference(pages), run_reference(absolute_pages),
                          attention_tolerance(width, score_bound, keys), fmt::format("{} splits={}", what, splits));
          }
        }
  }
}

}  // namespace
}  // namespace dsv3
