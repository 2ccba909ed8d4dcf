#include "kernels/reference/reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"

namespace dsv3::kernels {
namespace {

constexpr std::align_val_t kAlignment{64};

void require(bool ok, std::string_view op, std::string_view what) {
  if (!ok) fail("{}: {}", op, what);
}

void check_weight(const Matrix& weight, std::string_view op) {
  switch (weight.dtype) {
    case DType::F32:
    case DType::BF16:
    case DType::F16:
      return;
    case DType::F8_E4M3: {
      const std::int64_t scale_rows = (weight.rows + weight.block_rows - 1) / weight.block_rows;
      if (!weight.scales || static_cast<std::int64_t>(weight.scales->size()) < scale_rows * weight.scale_cols())
        fail("{}: {}: FP8 weight without its block scales", op, weight.name);
      return;
    }
    default:
      fail("{}: {}: dtype {} is not a weight dtype", op, weight.name, dtype_name(weight.dtype));
  }
}

// Weight element (r, c) as float32: the stored value widened exactly, times its 128x128 block
// scale for FP8 (one float32 rounding, as `weight_scale_inv` is applied in DeepSeek's reference).
float weight_at(const Matrix& weight, std::int64_t r, std::int64_t c) {
  const std::size_t index = static_cast<std::size_t>(r * weight.cols + c);
  switch (weight.dtype) {
    case DType::F32: {
      float value;
      std::memcpy(&value, weight.data + 4 * index, 4);
      return value;
    }
    case DType::BF16:
    case DType::F16: {
      std::uint16_t bits;
      std::memcpy(&bits, weight.data + 2 * index, 2);
      return weight.dtype == DType::BF16 ? bf16_to_float(bits) : f16_to_float(bits);
    }
    case DType::F8_E4M3: {
      const float scale =
          (*weight.scales)[static_cast<std::size_t>((r / weight.block_rows) * weight.scale_cols() + c / weight.block_cols)];
      return fp8_e4m3_to_float(static_cast<std::uint8_t>(weight.data[index])) * scale;
    }
    default:
      fail("{}: dtype {} is not a weight dtype", weight.name, dtype_name(weight.dtype));
  }
}

std::vector<float> weight_row(const Matrix& weight, std::int64_t r) {
  std::vector<float> row(static_cast<std::size_t>(weight.cols));
  for (std::int64_t c = 0; c < weight.cols; ++c) row[c] = weight_at(weight, r, c);
  return row;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

std::byte* latent_row(const LatentPages& pages, std::int64_t position, std::string_view op) {
  const std::int64_t page = position / pages.block_tokens;
  require(position >= 0 && page < static_cast<std::int64_t>(pages.blocks.size()), op, "position beyond the pages");
  const std::int64_t row =
      pages.blocks[static_cast<std::size_t>(page)] * pages.block_stride_rows + pages.layer_offset_rows +
      position % pages.block_tokens;
  return pages.storage + static_cast<std::size_t>(row * pages.width) * dtype_size(pages.dtype);
}

void check_pages(const LatentPages& pages, std::string_view op) {
  require(pages.dtype == DType::F32 || pages.dtype == DType::BF16, op, "latent pages must be F32 or BF16");
  require(pages.block_tokens > 0 && pages.width > 0, op, "latent pages without rows");
}

void read_latent(const LatentPages& pages, std::int64_t position, float* out, std::string_view op) {
  const std::byte* source = latent_row(pages, position, op);
  for (std::int64_t c = 0; c < pages.width; ++c) {
    if (pages.dtype == DType::F32) {
      std::memcpy(out + c, source + 4 * c, 4);
    } else {
      std::uint16_t bits;
      std::memcpy(&bits, source + 2 * c, 2);
      out[c] = bf16_to_float(bits);
    }
  }
}

// Softmax over scores in place (double throughout).
void softmax(std::vector<double>& scores) {
  double max_score = -std::numeric_limits<double>::infinity();
  for (double s : scores) max_score = std::max(max_score, s);
  double total = 0.0;
  for (double& s : scores) total += (s = std::exp(s - max_score));
  for (double& s : scores) s /= total;
}

}  // namespace

void* ReferenceBackend::allocate(std::size_t bytes) const { return ::operator new(bytes, kAlignment); }
void ReferenceBackend::release(void* data) const { ::operator delete(data, kAlignment); }

void ReferenceBackend::read(Tensor src, std::span<float> dst) const {
  if (static_cast<std::int64_t>(dst.size()) != src.size())
    fail("read: [{}, {}] into {} values", src.rows, src.cols, dst.size());
  for (std::int64_t r = 0; r < src.rows; ++r)
    for (std::int64_t c = 0; c < src.cols; ++c) dst[static_cast<std::size_t>(r * src.cols + c)] = src.row(r)[c];
}

void ReferenceBackend::embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const {
  check_weight(table, "embedding");
  require(out.rows == static_cast<std::int64_t>(ids.size()) && out.cols == table.cols, "embedding", "output shape");
  for (std::int64_t i = 0; i < out.rows; ++i) {
    const std::int64_t id = ids[static_cast<std::size_t>(i)];
    if (id != kZeroRow && (id < 0 || id >= table.rows))
      fail("embedding: token id {} at position {} is outside the vocabulary [0, {})", id, i, table.rows);
    for (std::int64_t c = 0; c < out.cols; ++c) out.row(i)[c] = id == kZeroRow ? 0.0f : weight_at(table, id, c);
  }
}

void ReferenceBackend::linear(Tensor x, const Matrix& weight, Tensor y) const {
  check_weight(weight, "linear");
  require(x.cols == weight.cols && y.rows == x.rows && y.cols == weight.rows, "linear", weight.name);
  // Under the FP8 training recipe each row's 128-value tiles go through E4M3 with their own scale.
  std::vector<float> input(static_cast<std::size_t>(x.size()));
  for (std::int64_t r = 0; r < x.rows; ++r) {
    for (std::int64_t c0 = 0; c0 < x.cols; c0 += kFp8Tile) {
      const std::int64_t c1 = std::min(x.cols, c0 + kFp8Tile);
      float amax = 0.0f;
      for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x.row(r)[c]));
      const float scale = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
      for (std::int64_t c = c0; c < c1; ++c)
        input[static_cast<std::size_t>(r * x.cols + c)] =
            weight.fp8_input_tiles ? fp8_e4m3_to_float(float_to_fp8_e4m3(x.row(r)[c] / scale)) * scale : x.row(r)[c];
    }
  }
  for (std::int64_t n = 0; n < weight.rows; ++n) {
    const std::vector<float> w = weight_row(weight, n);
    for (std::int64_t r = 0; r < x.rows; ++r) {
      double sum = 0.0;
      for (std::int64_t c = 0; c < x.cols; ++c) sum += static_cast<double>(input[static_cast<std::size_t>(r * x.cols + c)]) * w[c];
      y.row(r)[n] = static_cast<float>(sum);
    }
  }
}

void ReferenceBackend::rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const {
  require(static_cast<std::int64_t>(weight.size()) == x.cols && out.rows == x.rows && out.cols == x.cols, "rmsnorm",
          "shapes");
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double sum_squares = 0.0;
    for (std::int64_t c = 0; c < x.cols; ++c) sum_squares += static_cast<double>(x.row(r)[c]) * x.row(r)[c];
    const double inverse_rms = 1.0 / std::sqrt(sum_squares / static_cast<double>(x.cols) + eps);
    for (std::int64_t c = 0; c < x.cols; ++c) out.row(r)[c] = static_cast<float>(x.row(r)[c] * inverse_rms * weight[c]);
  }
}

void ReferenceBackend::rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
                            const RopeParams& params) const {
  const auto half = static_cast<std::int64_t>(params.inverse_frequencies.size());
  require(x.cols == 2 * half, "rope", "rows must hold rope_dim values");
  require(rows_per_position > 0 && static_cast<std::int64_t>(positions.size()) * rows_per_position >= x.rows, "rope",
          "too few positions");
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const auto position = static_cast<double>(positions[static_cast<std::size_t>(r / rows_per_position)]);
    float* row = x.row(r);
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = position * params.inverse_frequencies[i];
      const double cos = std::cos(angle) * params.attention_factor, sin = std::sin(angle) * params.attention_factor;
      // DeepSeek's interleaved layout pairs (2i, 2i + 1); rotate-half pairs (i, i + half).
      float& a = params.interleaved ? row[2 * i] : row[i];
      float& b = params.interleaved ? row[2 * i + 1] : row[i + half];
      const double a0 = a, b0 = b;
      a = static_cast<float>(a0 * cos - b0 * sin);
      b = static_cast<float>(b0 * cos + a0 * sin);
    }
  }
}

void ReferenceBackend::add(Tensor x, Tensor y) const {
  require(x.rows == y.rows && x.cols == y.cols, "add", "shapes differ");
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < x.cols; ++c) x.row(r)[c] += y.row(r)[c];
}

void ReferenceBackend::fill(Tensor x, float value) const {
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < x.cols; ++c) x.row(r)[c] = value;
}

void ReferenceBackend::swiglu(Tensor gate, Tensor up, Tensor out) const {
  require(gate.rows == up.rows && gate.cols == up.cols && out.rows == gate.rows && out.cols == gate.cols, "swiglu",
          "shapes differ");
  for (std::int64_t r = 0; r < gate.rows; ++r)
    for (std::int64_t c = 0; c < gate.cols; ++c)
      out.row(r)[c] = static_cast<float>(silu(gate.row(r)[c]) * up.row(r)[c]);
}

void ReferenceBackend::copy_rows(Tensor src, Tensor dst, std::int64_t repeat) const {
  require(repeat >= 1 && dst.rows == src.rows * repeat && dst.cols == src.cols, "copy_rows", "shapes");
  for (std::int64_t r = 0; r < dst.rows; ++r)
    for (std::int64_t c = 0; c < dst.cols; ++c) dst.row(r)[c] = src.row(r / repeat)[c];
}

void ReferenceBackend::gather_rows(Tensor src, std::span<const std::int64_t> rows, Tensor dst) const {
  require(dst.rows == static_cast<std::int64_t>(rows.size()) && dst.cols == src.cols, "gather_rows", "shapes");
  for (std::int64_t i = 0; i < dst.rows; ++i) {
    const std::int64_t r = rows[static_cast<std::size_t>(i)];
    require(r >= 0 && r < src.rows, "gather_rows", "row outside the source");
    for (std::int64_t c = 0; c < dst.cols; ++c) dst.row(i)[c] = src.row(r)[c];
  }
}

void ReferenceBackend::attention_causal(const float* q, const float* k, const float* v, const AttentionShape& s,
                                        float scale, float* out) const {
  require(s.tokens >= 0 && s.query_offset >= 0 && s.heads > 0, "attention_causal", "shape");
  for (std::int64_t i = 0; i < s.tokens; ++i)
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const float* q_row = q + i * s.q_stride + h * s.q_head_stride;
      // The query at position query_offset + i sees keys 0 ..= its position.
      std::vector<double> p(static_cast<std::size_t>(s.query_offset + i + 1));
      for (std::size_t j = 0; j < p.size(); ++j) {
        const float* k_row = k + static_cast<std::int64_t>(j) * s.k_stride + h * s.k_head_stride;
        double dot = 0.0;
        for (std::int64_t d = 0; d < s.qk_dim; ++d) dot += static_cast<double>(q_row[d]) * k_row[d];
        p[j] = scale * dot;
      }
      softmax(p);
      for (std::int64_t d = 0; d < s.v_dim; ++d) {
        double sum = 0.0;
        for (std::size_t j = 0; j < p.size(); ++j)
          sum += p[j] * v[static_cast<std::int64_t>(j) * s.v_stride + h * s.v_head_stride + d];
        out[(i * s.heads + h) * s.v_dim + d] = static_cast<float>(sum);
      }
    }
}

void ReferenceBackend::cache_store(const LatentPages& pages, std::int64_t first_position, Tensor rows) const {
  check_pages(pages, "cache_store");
  require(rows.cols == pages.width, "cache_store", "rows must be as wide as the cache");
  for (std::int64_t i = 0; i < rows.rows; ++i) {
    std::byte* target = latent_row(pages, first_position + i, "cache_store");
    for (std::int64_t c = 0; c < pages.width; ++c) {
      if (pages.dtype == DType::F32) {
        std::memcpy(target + 4 * c, rows.row(i) + c, 4);
      } else {
        const std::uint16_t bits = float_to_bf16(rows.row(i)[c]);  // round to nearest even
        std::memcpy(target + 2 * c, &bits, 2);
      }
    }
  }
}

void ReferenceBackend::cache_load(const LatentPages& pages, Tensor out) const {
  check_pages(pages, "cache_load");
  require(out.cols == pages.width, "cache_load", "output must be as wide as the cache");
  for (std::int64_t j = 0; j < out.rows; ++j) read_latent(pages, j, out.row(j), "cache_load");
}

void ReferenceBackend::mla_absorb_query(Tensor q, const Matrix& kv_b_proj, const MlaShape& s, Tensor q_latent,
                                        Workspace&) const {
  check_weight(kv_b_proj, "mla_absorb_query");
  require(q.cols == s.heads * s.qk() && kv_b_proj.rows == s.heads * (s.nope + s.v) && kv_b_proj.cols == s.kv_lora &&
              q_latent.rows == q.rows && q_latent.cols == s.heads * s.width(),
          "mla_absorb_query", "shapes");
  for (std::int64_t h = 0; h < s.heads; ++h) {
    // W_UK[h] is rows [h (nope + v), h (nope + v) + nope) of kv_b_proj: [nope, kv_lora].
    std::vector<std::vector<float>> w_uk;
    for (std::int64_t i = 0; i < s.nope; ++i) w_uk.push_back(weight_row(kv_b_proj, h * (s.nope + s.v) + i));
    for (std::int64_t r = 0; r < q.rows; ++r)
      for (std::int64_t c = 0; c < s.kv_lora; ++c) {
        double sum = 0.0;
        for (std::int64_t i = 0; i < s.nope; ++i) sum += static_cast<double>(q.row(r)[h * s.qk() + i]) * w_uk[i][c];
        q_latent.row(r)[h * s.width() + c] = static_cast<float>(sum);
      }
  }
  for (std::int64_t r = 0; r < q.rows; ++r)
    for (std::int64_t h = 0; h < s.heads; ++h)
      for (std::int64_t i = 0; i < s.rope; ++i)
        q_latent.row(r)[h * s.width() + s.kv_lora + i] = q.row(r)[h * s.qk() + s.nope + i];
}

void ReferenceBackend::attention_latent(Tensor q_latent, std::span<const LatentQuery> queries, const MlaShape& s,
                                        float scale, Tensor o_latent, Workspace&) const {
  require(q_latent.rows == static_cast<std::int64_t>(queries.size()) && q_latent.cols == s.heads * s.width() &&
              o_latent.rows == q_latent.rows && o_latent.cols == s.heads * s.kv_lora,
          "attention_latent", "shapes");
  for (std::int64_t r = 0; r < q_latent.rows; ++r) {
    const LatentQuery& query = queries[static_cast<std::size_t>(r)];
    check_pages(*query.pages, "attention_latent");
    require(query.pages->width == s.width(), "attention_latent", "pages must hold c_kv | k_rope rows");
    require(query.keys >= 1, "attention_latent", "a query needs at least one key");
    // keys[j] = c_kv | k_rope of cached row j; the values are the c_kv parts.
    std::vector<float> keys(static_cast<std::size_t>(query.keys * s.width()));
    for (std::int64_t j = 0; j < query.keys; ++j)
      read_latent(*query.pages, j, keys.data() + j * s.width(), "attention_latent");
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const float* q_row = q_latent.row(r) + h * s.width();
      std::vector<double> p(static_cast<std::size_t>(query.keys));
      for (std::int64_t j = 0; j < query.keys; ++j) {
        double dot = 0.0;
        for (std::int64_t c = 0; c < s.width(); ++c) dot += static_cast<double>(q_row[c]) * keys[j * s.width() + c];
        p[j] = scale * dot;
      }
      softmax(p);
      for (std::int64_t c = 0; c < s.kv_lora; ++c) {
        double sum = 0.0;
        for (std::int64_t j = 0; j < query.keys; ++j) sum += p[j] * keys[j * s.width() + c];
        o_latent.row(r)[h * s.kv_lora + c] = static_cast<float>(sum);
      }
    }
  }
}

void ReferenceBackend::mla_absorb_output(Tensor o_latent, const Matrix& kv_b_proj, const MlaShape& s, Tensor out,
                                         Workspace&) const {
  check_weight(kv_b_proj, "mla_absorb_output");
  require(o_latent.cols == s.heads * s.kv_lora && kv_b_proj.rows == s.heads * (s.nope + s.v) &&
              kv_b_proj.cols == s.kv_lora && out.rows == o_latent.rows && out.cols == s.heads * s.v,
          "mla_absorb_output", "shapes");
  for (std::int64_t h = 0; h < s.heads; ++h)
    for (std::int64_t i = 0; i < s.v; ++i) {
      // W_UV[h] is rows [h (nope + v) + nope, (h + 1)(nope + v)) of kv_b_proj: [v, kv_lora].
      const std::vector<float> w = weight_row(kv_b_proj, h * (s.nope + s.v) + s.nope + i);
      for (std::int64_t r = 0; r < o_latent.rows; ++r) {
        double sum = 0.0;
        for (std::int64_t c = 0; c < s.kv_lora; ++c) sum += static_cast<double>(o_latent.row(r)[h * s.kv_lora + c]) * w[c];
        out.row(r)[h * s.v + i] = static_cast<float>(sum);
      }
    }
}

void ReferenceBackend::route(Tensor logits, std::span<const float> bias, const RouteParams& params,
                             std::span<std::int32_t> experts, std::span<float> weights) const {
  const std::int64_t tokens = logits.rows, n = logits.cols, top_k = params.top_k;
  require(static_cast<std::int64_t>(bias.size()) == n, "route", "one bias per expert");
  require(params.n_group >= 1 && n % params.n_group == 0, "route", "experts must split into n_group groups");
  const std::int64_t group_size = n / params.n_group;
  require(params.topk_group >= 1 && params.topk_group <= params.n_group, "route", "topk_group outside [1, n_group]");
  require(top_k >= 1 && top_k <= params.topk_group * group_size, "route", "top_k beyond the kept groups");
  require(static_cast<std::int64_t>(experts.size()) == tokens * top_k &&
              static_cast<std::int64_t>(weights.size()) == tokens * top_k,
          "route", "outputs must hold tokens * top_k routes");
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<double> score(static_cast<std::size_t>(n)), choice(score.size());
    for (std::int64_t e = 0; e < n; ++e) {
      score[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits.row(t)[e])));
      choice[e] = score[e] + bias[e];  // the bias steers the choice only
    }
    // Takes the best of `values` not yet taken, the lower index on ties (top_k never exceeds the
    // experts of the kept groups, so masked and taken entries are never chosen).
    auto take_best = [](std::vector<double>& values) {
      std::size_t best = 0;
      for (std::size_t i = 1; i < values.size(); ++i)
        if (values[i] > values[best]) best = i;
      const double value = values[best];
      values[best] = -std::numeric_limits<double>::infinity();  // taken
      return std::pair{best, value};
    };
    if (params.n_group > 1) {
      // A group scores the sum of its two best biased affinities; all but the topk_group best
      // groups are masked out of the choice.
      std::vector<double> group_score(static_cast<std::size_t>(params.n_group));
      for (std::int64_t g = 0; g < params.n_group; ++g) {
        std::vector<double> members(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
        group_score[g] = take_best(members).second;
        if (group_size > 1) group_score[g] += take_best(members).second;
      }
      std::vector<bool> kept(static_cast<std::size_t>(params.n_group), false);
      for (std::int64_t rank = 0; rank < params.topk_group; ++rank) kept[take_best(group_score).first] = true;
      for (std::int64_t e = 0; e < n; ++e)
        if (!kept[e / group_size]) choice[e] = -std::numeric_limits<double>::infinity();
    }
    double total = 0.0;
    for (std::int64_t k = 0; k < top_k; ++k) {
      const std::size_t e = take_best(choice).first;
      experts[t * top_k + k] = static_cast<std::int32_t>(e);
      total += score[e];
    }
    for (std::int64_t k = 0; k < top_k; ++k) {
      const double gate = score[experts[t * top_k + k]];
      weights[t * top_k + k] =
          static_cast<float>((params.norm_topk_prob ? gate / total : gate) * params.routed_scaling_factor);
    }
  }
}

Dispatch ReferenceBackend::moe_dispatch(Tensor x, std::span<const std::int32_t> experts, std::int64_t n_experts,
                                        std::int64_t top_k, Workspace& workspace) const {
  const std::int64_t routes = x.rows * top_k;
  require(static_cast<std::int64_t>(experts.size()) == routes, "moe_dispatch", "routes must be tokens * top_k");
  for (std::int32_t e : experts) require(e >= 0 && e < n_experts, "moe_dispatch", "expert outside [0, n_experts)");
  Dispatch dispatch{workspace.array<std::int64_t>(n_experts + 1), workspace.array<std::int64_t>(routes),
                    workspace.tensor(routes, x.cols), top_k};
  std::int64_t row = 0;
  for (std::int64_t e = 0; e < n_experts; ++e) {
    dispatch.offsets[e] = row;
    for (std::int64_t slot = 0; slot < routes; ++slot)
      if (experts[slot] == e) {
        dispatch.slots[row] = slot;
        for (std::int64_t c = 0; c < x.cols; ++c) dispatch.rows.row(row)[c] = x.row(slot / top_k)[c];
        ++row;
      }
  }
  dispatch.offsets[n_experts] = row;
  return dispatch;
}

void ReferenceBackend::moe_experts(const Dispatch& dispatch, std::span<const MlpWeights> experts, Tensor out,
                                   Workspace&, Tensor gate, Tensor up) const {
  require(dispatch.offsets.size() == experts.size() + 1, "moe_experts", "one offset per expert and one more");
  require(out.rows == dispatch.rows.rows && out.cols == dispatch.rows.cols, "moe_experts", "output shape");
  require((!gate.data || gate.rows == out.rows) && (!up.data || up.rows == out.rows), "moe_experts",
          "gate and up need a row per dispatched row");
  for (std::size_t e = 0; e < experts.size(); ++e) {
    const std::int64_t first = dispatch.offsets[e], count = dispatch.offsets[e + 1] - first;
    if (count == 0) continue;
    const MlpWeights& w = experts[e];
    if (w.gate_proj.empty()) {  // held by another rank
      fill(out.row_range(first, first + count), 0.0f);
      continue;
    }
    const std::int64_t intermediate = w.gate_proj.rows;
    std::vector<float> gate_values(static_cast<std::size_t>(count * intermediate)), up_values(gate_values.size());
    const Tensor rows = dispatch.rows.row_range(first, first + count);
    const Tensor gate_rows(gate_values.data(), count, intermediate), up_rows(up_values.data(), count, intermediate);
    linear(rows, w.gate_proj, gate_rows);
    linear(rows, w.up_proj, up_rows);
    if (gate.data) copy_rows(gate_rows, gate.row_range(first, first + count));
    if (up.data) copy_rows(up_rows, up.row_range(first, first + count));
    swiglu(gate_rows, up_rows, gate_rows);
    linear(gate_rows, w.down_proj, out.row_range(first, first + count));
  }
}

void ReferenceBackend::moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out,
                                   Tensor y) const {
  require(weights.size() == dispatch.slots.size() && out.rows == static_cast<std::int64_t>(dispatch.slots.size()) &&
              out.cols == y.cols && y.rows * dispatch.top_k == out.rows,
          "moe_combine", "shapes");
  // In float and in expert order, exactly as the interface promises, rather than in double: the
  // order is the contract (results must not depend on a device's schedule), so the twin keeps it.
  for (std::size_t e = 0; e + 1 < dispatch.offsets.size(); ++e)
    for (std::int64_t i = dispatch.offsets[e]; i < dispatch.offsets[e + 1]; ++i) {
      const std::int64_t slot = dispatch.slots[i];
      float* target = y.row(slot / dispatch.top_k);
      for (std::int64_t c = 0; c < y.cols; ++c) target[c] += weights[slot] * out.row(i)[c];
    }
}

void ReferenceBackend::matmul(const float* a, const float* b, float* c, const MatmulShape& s) const {
  for (std::int64_t i = 0; i < s.m; ++i)
    for (std::int64_t j = 0; j < s.n; ++j) {
      double sum = 0.0;
      for (std::int64_t p = 0; p < s.k; ++p)
        sum += static_cast<double>(a[i * s.lda + p]) * (s.b_transposed ? b[j * s.ldb + p] : b[p * s.ldb + j]);
      float& target = c[i * s.ldc + j];
      target = static_cast<float>(s.beta == 0.0f ? sum : sum + static_cast<double>(s.beta) * target);
    }
}

const ReferenceBackend& reference_backend() {
  static const ReferenceBackend backend;
  return backend;
}

}  // namespace dsv3::kernels
