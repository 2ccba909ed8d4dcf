#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "model/blocks.h"

namespace dsv3 {
namespace {

struct MlaDims {
  std::int64_t heads, nope, rope, v, qk, kv_lora, width;
  explicit MlaDims(const ModelConfig& c)
      : heads(c.num_attention_heads), nope(c.qk_nope_head_dim), rope(c.qk_rope_head_dim), v(c.v_head_dim),
        qk(c.qk_head_dim()), kv_lora(c.kv_lora_rank), width(c.kv_lora_rank + c.qk_rope_head_dim) {}
};

// Prefill-sized runs attend in the expanded form: kv_b_proj up-projects every cached latent once,
// then queries meet per-head keys of qk dims. Small runs (decode, speculative verification) use
// the absorbed form: W_UK folds into the query and W_UV into the output, so attention reads the
// latents directly, at (2 kv_lora + rope) per query-key pair instead of (qk + v) plus the
// up-projection's kv_lora (nope + v) per key. Expanded wins once a run has more queries than
// kv_lora (nope + v) / (2 kv_lora + rope - qk - v).
bool expanded_is_cheaper(const MlaDims& d, std::int64_t queries) {
  const std::int64_t per_query_saving = 2 * d.kv_lora + d.rope - d.qk - d.v;
  return queries > 1 && (per_query_saving <= 0 || queries * per_query_saving > d.kv_lora * (d.nope + d.v));
}

// Attention of one run's queries over its cached latents [0, start + count), expanded form.
void attend_expanded(const AttentionWeights& w, const MlaDims& d, float scale, std::int64_t layer,
                     const BatchRows::Run& run, const float* q, const LatentCache& cache, float* out) {
  const std::int64_t keys = run.start + run.count;
  std::vector<float> latents(static_cast<std::size_t>(keys * d.width));
  cache.load(layer, *run.table, keys, latents.data());
  std::vector<float> c_kv(static_cast<std::size_t>(keys * d.kv_lora));
  for (std::int64_t j = 0; j < keys; ++j)
    std::copy_n(latents.data() + j * d.width, d.kv_lora, c_kv.data() + j * d.kv_lora);
  // kv: [keys, heads, nope + v] = kv_b_proj(c_kv): per-head k_nope and v.
  const std::int64_t kv_dim = d.nope + d.v;
  std::vector<float> kv(static_cast<std::size_t>(keys * d.heads * kv_dim));
  kernels::linear(c_kv.data(), keys, w.kv_b_proj, kv.data());
  std::vector<float> k(static_cast<std::size_t>(keys * d.heads * d.qk));  // [keys, heads, nope | rope]
  for (std::int64_t j = 0; j < keys; ++j)
    for (std::int64_t h = 0; h < d.heads; ++h) {
      float* k_row = k.data() + (j * d.heads + h) * d.qk;
      std::copy_n(kv.data() + (j * d.heads + h) * kv_dim, d.nope, k_row);
      std::copy_n(latents.data() + j * d.width + d.kv_lora, d.rope, k_row + d.nope);
    }
  kernels::AttentionShape shape;
  shape.tokens = run.count;
  shape.query_offset = run.start;
  shape.heads = d.heads;
  shape.qk_dim = d.qk;
  shape.v_dim = d.v;
  shape.q_stride = shape.k_stride = d.heads * d.qk;
  shape.q_head_stride = shape.k_head_stride = d.qk;
  shape.v_stride = d.heads * kv_dim;
  shape.v_head_stride = kv_dim;
  kernels::attention_causal(q + run.first_row * d.heads * d.qk, k.data(), kv.data() + d.nope, shape, scale,
                            out + run.first_row * d.heads * d.v);
}

// Absorbed-form attention for `rows` (row indices into the batch), all at once so each head's
// slice of kv_b_proj is dequantised once per step.
void attend_absorbed(const AttentionWeights& w, const MlaDims& d, float scale, std::int64_t layer,
                     const BatchRows& batch, const std::vector<std::int64_t>& rows, const float* q,
                     const LatentCache& cache, float* out) {
  const auto count = static_cast<std::int64_t>(rows.size());
  const std::int64_t kv_dim = d.nope + d.v;
  // q_latent[r, h] = (W_UK[h]ᵀ q_nope[r, h] | q_rope[r, h]): [rows, heads, width]
  std::vector<float> q_latent(static_cast<std::size_t>(count * d.heads * d.width));
  std::vector<float> o_latent(static_cast<std::size_t>(count * d.heads * d.kv_lora));
  auto& pool = ThreadPool::global();
  std::vector<float> q_nope(static_cast<std::size_t>(d.heads * count * d.nope));  // [heads, rows, nope]
  for (std::int64_t r = 0; r < count; ++r)
    for (std::int64_t h = 0; h < d.heads; ++h) {
      const float* q_row = q + (rows[r] * d.heads + h) * d.qk;
      std::copy_n(q_row, d.nope, q_nope.data() + (h * count + r) * d.nope);
      std::copy_n(q_row + d.nope, d.rope, q_latent.data() + (r * d.heads + h) * d.width + d.kv_lora);
    }
  pool.parallel_for(d.heads, 1, [&](std::int64_t h0, std::int64_t h1) {
    std::vector<float> w_uk(static_cast<std::size_t>(d.nope * d.kv_lora));
    for (std::int64_t h = h0; h < h1; ++h) {
      kernels::dequantize_rows(w.kv_b_proj, h * kv_dim, h * kv_dim + d.nope, w_uk.data());  // W_UK[h]: [nope, kv_lora]
      kernels::matmul(q_nope.data() + h * count * d.nope, w_uk.data(), q_latent.data() + h * d.width,
                      {.m = count, .n = d.kv_lora, .k = d.nope, .lda = d.nope, .ldb = d.kv_lora,
                       .ldc = d.heads * d.width});
    }
  });
  // Attention over the latents, per (row, key range): a decoding row over a long context is
  // split into ranges of at least kMinKeysPerTask keys so every core has work, and the ranges'
  // partial softmaxes are merged.
  constexpr std::int64_t kMinKeysPerTask = 256;
  const std::int64_t wanted_splits = std::max<std::int64_t>(1, (2 * pool.size() + count - 1) / count);
  std::vector<std::int64_t> splits(static_cast<std::size_t>(count)), first_task(static_cast<std::size_t>(count) + 1, 0);
  for (std::int64_t r = 0; r < count; ++r) {
    const std::int64_t keys = batch.positions[rows[r]] + 1;
    splits[r] = std::clamp<std::int64_t>(keys / kMinKeysPerTask, 1, wanted_splits);
    first_task[r + 1] = first_task[r] + splits[r];
  }
  std::vector<kernels::LatentPartial> partials(static_cast<std::size_t>(first_task[count]));
  std::vector<std::int64_t> task_row(partials.size());
  for (std::int64_t r = 0; r < count; ++r)
    for (std::int64_t t = first_task[r]; t < first_task[r + 1]; ++t) task_row[t] = r;
  std::vector<const BatchRows::Run*> run_of_row(static_cast<std::size_t>(count));
  for (std::int64_t r = 0; r < count; ++r)
    for (const auto& run : batch.runs)
      if (rows[r] >= run.first_row && rows[r] < run.first_row + run.count) run_of_row[r] = &run;
  pool.parallel_for(static_cast<std::int64_t>(partials.size()), 1, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t task = first; task < last; ++task) {
      const std::int64_t r = task_row[task], part = task - first_task[r];
      const std::int64_t keys = batch.positions[rows[r]] + 1;
      const std::int64_t key_begin = keys * part / splits[r], key_end = keys * (part + 1) / splits[r];
      kernels::attention_latent(q_latent.data() + r * d.heads * d.width, d.heads, cache.pages(layer, *run_of_row[r]->table),
                                key_begin, key_end, d.kv_lora, scale, partials[task]);
    }
  });
  for (std::int64_t r = 0; r < count; ++r)
    kernels::merge_latent_partials(std::span(partials).subspan(first_task[r], splits[r]), d.heads, d.kv_lora,
                                   o_latent.data() + r * d.heads * d.kv_lora);
  // out[r, h] = W_UV[h] o_latent[r, h]: each head's slice of kv_b_proj through the GEMV kernel,
  // which converts the stored weights in registers.
  const std::int64_t kv_rows = w.kv_b_proj.rows;
  std::vector<float> kv_out(static_cast<std::size_t>(count * kv_rows));  // [rows, heads * (nope + v)]
  pool.parallel_for(d.heads, 1, [&](std::int64_t h0, std::int64_t h1) {
    std::vector<float> latent(static_cast<std::size_t>(count * d.kv_lora));  // o_latent[:, h]: [rows, kv_lora]
    for (std::int64_t h = h0; h < h1; ++h) {
      for (std::int64_t r = 0; r < count; ++r)
        std::copy_n(o_latent.data() + (r * d.heads + h) * d.kv_lora, d.kv_lora, latent.data() + r * d.kv_lora);
      kernels::linear_rows(latent.data(), count, w.kv_b_proj, h * kv_dim + d.nope, (h + 1) * kv_dim, kv_out.data());
    }
  });
  for (std::int64_t r = 0; r < count; ++r)
    for (std::int64_t h = 0; h < d.heads; ++h)
      std::copy_n(kv_out.data() + r * kv_rows + h * kv_dim + d.nope, d.v, out + (rows[r] * d.heads + h) * d.v);
}

}  // namespace

void mla_forward(const AttentionWeights& w, const ModelConfig& c, const RopeTable& rope, std::int64_t layer,
                 const float* x, const BatchRows& batch, LatentCache& cache, float* out) {
  const MlaDims d(c);
  const std::int64_t rows = batch.rows();
  const auto eps = static_cast<float>(c.rms_norm_eps);

  // q: [rows, heads, qk] through the low-rank path when q_lora_rank is set.
  std::vector<float> q(static_cast<std::size_t>(rows * d.heads * d.qk));
  if (c.q_lora_rank) {
    std::vector<float> c_q(static_cast<std::size_t>(rows * *c.q_lora_rank));  // [rows, q_lora_rank]
    kernels::linear(x, rows, w.q_a_proj, c_q.data());
    kernels::rmsnorm(c_q.data(), rows, *c.q_lora_rank, w.q_a_layernorm.data(), eps, c_q.data());
    kernels::linear(c_q.data(), rows, w.q_b_proj, q.data());
  } else {
    kernels::linear(x, rows, w.q_proj, q.data());
  }
  rope.apply(q.data() + d.nope, rows * d.heads, d.qk, d.heads, batch.positions);

  // latent rows [rows, kv_lora + rope] = (rmsnorm(c_kv), rope(k_rope)): the only per-token state MLA caches.
  std::vector<float> latent(static_cast<std::size_t>(rows * d.width));
  kernels::linear(x, rows, w.kv_a_proj_with_mqa, latent.data());
  for (std::int64_t r = 0; r < rows; ++r)
    kernels::rmsnorm(latent.data() + r * d.width, 1, d.kv_lora, w.kv_a_layernorm.data(), eps,
                     latent.data() + r * d.width);
  rope.apply(latent.data() + d.kv_lora, rows, d.width, 1, batch.positions);
  for (const auto& run : batch.runs)
    for (std::int64_t i = 0; i < run.count; ++i)
      cache.store(layer, *run.table, run.start + i, latent.data() + (run.first_row + i) * d.width);

  const auto scale = static_cast<float>(c.softmax_scale());
  std::vector<float> attention(static_cast<std::size_t>(rows * d.heads * d.v));
  std::vector<std::int64_t> absorbed_rows;
  for (const auto& run : batch.runs) {
    if (expanded_is_cheaper(d, run.count)) {
      attend_expanded(w, d, scale, layer, run, q.data(), cache, attention.data());
    } else {
      for (std::int64_t i = 0; i < run.count; ++i) absorbed_rows.push_back(run.first_row + i);
    }
  }
  if (!absorbed_rows.empty()) attend_absorbed(w, d, scale, layer, batch, absorbed_rows, q.data(), cache, attention.data());
  kernels::linear(attention.data(), rows, w.o_proj, out);
}

}  // namespace dsv3
