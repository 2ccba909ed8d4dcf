// Multi-head Latent Attention (DeepSeek-V2/V3): queries and keys/values through low-rank
// projections, a decoupled RoPE part, and a cache of only the latent c_kv and the shared k_rope.
#include "model/blocks.h"

namespace dsv3 {
namespace {

using kernels::MlaShape;
using kernels::Tensor;

// This rank's heads (all of them in one process).
MlaShape mla_shape(const Context& ctx) {
  const ModelConfig& c = ctx.config;
  return {.heads = ctx.shard ? ctx.shard->heads.size() : c.num_attention_heads, .nope = c.qk_nope_head_dim, .rope = c.qk_rope_head_dim,
          .v = c.v_head_dim, .kv_lora = c.kv_lora_rank};
}

// Prefill-sized runs attend in the expanded form: kv_b_proj up-projects every cached latent once,
// then queries meet per-head keys of qk dims. Small runs (decode, speculative verification) use
// the absorbed form: W_UK folds into the query and W_UV into the output, so attention reads the
// latents directly, at (2 kv_lora + rope) per query-key pair instead of (qk + v) plus the
// up-projection's kv_lora (nope + v) per key. Expanded wins once a run has more queries than
// kv_lora (nope + v) / (2 kv_lora + rope - qk - v).
bool expanded_is_cheaper(const MlaShape& d, std::int64_t queries) {
  const std::int64_t per_query_saving = 2 * d.kv_lora + d.rope - d.qk() - d.v;
  return queries > 1 && (per_query_saving <= 0 || queries * per_query_saving > d.kv_lora * (d.nope + d.v));
}

// One run's queries over its cached latents [0, start + count), expanded form.
// q: [rows, heads * qk] of the whole batch; out: [rows, heads * v].
void attend_expanded(Context& ctx, const AttentionWeights& w, const MlaShape& d, float scale, std::int64_t layer,
                     const BatchRows::Run& run, Tensor q, const LatentCache& cache, Tensor out) {
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const std::int64_t keys = run.start + run.count, kv_dim = d.nope + d.v;
  Tensor latents = ctx.workspace.tensor(keys, d.width());  // [keys, c_kv | k_rope]
  ops.cache_load(cache.pages(layer, *run.table), latents);
  Tensor c_kv = ctx.workspace.tensor(keys, d.kv_lora);
  ops.copy_rows(latents.columns(0, d.kv_lora), c_kv);
  Tensor kv = ctx.workspace.tensor(keys, d.heads * kv_dim);  // [keys, heads, k_nope | v]
  ops.linear(c_kv, w.kv_b_proj, kv);
  // k: [keys, heads, k_nope | k_rope], the one k_rope of a key shared by every head.
  Tensor k = ctx.workspace.tensor(keys * d.heads, d.qk());
  ops.copy_rows(kv.reshape(keys * d.heads, kv_dim).columns(0, d.nope), k.columns(0, d.nope));
  ops.copy_rows(latents.columns(d.kv_lora, d.width()), k.columns(d.nope, d.qk()), d.heads);
  kernels::AttentionShape shape;
  shape.tokens = run.count;
  shape.query_offset = run.start;
  shape.heads = d.heads;
  shape.qk_dim = d.qk();
  shape.v_dim = d.v;
  shape.q_stride = shape.k_stride = d.heads * d.qk();
  shape.q_head_stride = shape.k_head_stride = d.qk();
  shape.v_stride = d.heads * kv_dim;
  shape.v_head_stride = kv_dim;
  ops.attention_causal(q.row(run.first_row), k.data, kv.data + d.nope, shape, scale, out.row(run.first_row));
}

// The absorbed form for the rows of the runs in `absorbed`, all at once, so each head's slice of
// kv_b_proj is read once per step.
void attend_absorbed(Context& ctx, const AttentionWeights& w, const MlaShape& d, float scale, std::int64_t layer,
                     const BatchRows& batch, std::span<const std::int64_t> absorbed, std::int64_t rows, Tensor q,
                     const LatentCache& cache, Tensor out) {
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  // The absorbed runs' rows, packed: [rows, heads * qk].
  Tensor q_rows = ctx.workspace.tensor(rows, d.heads * d.qk());
  std::span<kernels::LatentPages> pages = ctx.workspace.array<kernels::LatentPages>(static_cast<std::int64_t>(absorbed.size()));
  std::span<kernels::LatentQuery> queries = ctx.workspace.array<kernels::LatentQuery>(rows);
  std::int64_t row = 0;
  for (std::size_t i = 0; i < absorbed.size(); ++i) {
    const BatchRows::Run& run = batch.runs[absorbed[i]];
    ops.copy_rows(q.row_range(run.first_row, run.first_row + run.count), q_rows.row_range(row, row + run.count));
    pages[i] = cache.pages(layer, *run.table);
    for (std::int64_t j = 0; j < run.count; ++j) queries[row + j] = {&pages[i], run.start + j + 1};
    row += run.count;
  }
  // q_latent[r, h] = (W_UK[h]ᵀ q_nope[r, h] | q_rope[r, h]): [rows, heads, kv_lora + rope]
  Tensor q_latent = ctx.workspace.tensor(rows, d.heads * d.width());
  ops.mla_absorb_query(q_rows, w.kv_b_proj, d, q_latent, ctx.workspace);
  // o_latent[r, h] = softmax(scale · q_latent · [c_kv | k_rope]ᵀ) · c_kv: [rows, heads, kv_lora]
  Tensor o_latent = ctx.workspace.tensor(rows, d.heads * d.kv_lora);
  ops.attention_latent(q_latent, queries, d, scale, o_latent, ctx.workspace);
  // o[r, h] = W_UV[h] o_latent[r, h]: [rows, heads * v], back to the runs' rows.
  Tensor o_rows = ctx.workspace.tensor(rows, d.heads * d.v);
  ops.mla_absorb_output(o_latent, w.kv_b_proj, d, o_rows, ctx.workspace);
  row = 0;
  for (const std::int64_t index : absorbed) {
    const BatchRows::Run& run = batch.runs[index];
    ops.copy_rows(o_rows.row_range(row, row + run.count), out.row_range(run.first_row, run.first_row + run.count));
    row += run.count;
  }
}

}  // namespace

void mla_forward(Context& ctx, const AttentionWeights& w, std::int64_t layer, Tensor x, const BatchRows& batch,
                 LatentCache& cache, Tensor out) {
  const ModelConfig& c = ctx.config;
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const MlaShape d = mla_shape(ctx);
  const std::int64_t rows = batch.rows();

  // q: [rows, heads * (q_nope | q_rope)], through the low-rank path when q_lora_rank is set.
  LayerRecord* record = ctx.layer;
  Tensor q = ctx.workspace.tensor(rows, d.heads * d.qk());
  if (c.q_lora_rank) {
    Tensor c_q = ctx.workspace.tensor(rows, *c.q_lora_rank);  // [rows, q_lora_rank]
    ops.linear(x, w.q_a_proj, c_q);
    if (record) {
      record->c_q = ctx.keep(rows, *c.q_lora_rank);
      ops.copy_rows(c_q, record->c_q);
    }
    ops.rmsnorm(c_q, w.q_a_layernorm, ctx.eps, c_q);
    ops.linear(c_q, w.q_b_proj, q);
  } else {
    ops.linear(x, w.q_proj, q);
  }
  ops.rope(q.reshape(rows * d.heads, d.qk()).columns(d.nope, d.qk()), d.heads, batch.positions, ctx.rope);

  // latent: [rows, c_kv | k_rope] = (rmsnorm(c_kv), rope(k_rope)): the only per-token state MLA caches.
  Tensor latent = ctx.workspace.tensor(rows, d.width());
  ops.linear(x, w.kv_a_proj_with_mqa, latent);
  if (record) {
    record->kv_a = ctx.keep(rows, d.width());
    ops.copy_rows(latent, record->kv_a);
  }
  ops.rmsnorm(latent.columns(0, d.kv_lora), w.kv_a_layernorm, ctx.eps, latent.columns(0, d.kv_lora));
  ops.rope(latent.columns(d.kv_lora, d.width()), 1, batch.positions, ctx.rope);
  for (const auto& run : batch.runs)
    ops.cache_store(cache.pages(layer, *run.table), run.start, latent.row_range(run.first_row, run.first_row + run.count));

  const auto scale = static_cast<float>(c.softmax_scale());
  // [rows, heads * v]
  Tensor attention = record ? (record->attention = ctx.keep(rows, d.heads * d.v)) : ctx.workspace.tensor(rows, d.heads * d.v);
  std::span<std::int64_t> absorbed = ctx.workspace.array<std::int64_t>(static_cast<std::int64_t>(batch.runs.size()));
  std::int64_t absorbed_runs = 0, absorbed_rows = 0;
  for (std::size_t i = 0; i < batch.runs.size(); ++i) {
    const BatchRows::Run& run = batch.runs[i];
    if (record || expanded_is_cheaper(d, run.count)) {
      attend_expanded(ctx, w, d, scale, layer, run, q, cache, attention);
    } else {
      absorbed[absorbed_runs++] = static_cast<std::int64_t>(i);
      absorbed_rows += run.count;
    }
  }
  if (absorbed_runs > 0)
    attend_absorbed(ctx, w, d, scale, layer, batch, absorbed.first(static_cast<std::size_t>(absorbed_runs)),
                    absorbed_rows, q, cache, attention);
  ops.linear(attention, w.o_proj, out);
}

}  // namespace dsv3
