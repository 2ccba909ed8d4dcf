#include <algorithm>

#include "core/error.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

using kernels::Tensor;

void decoder_layer_forward(Context& ctx, const LayerWeights& w, std::int64_t layer, Tensor h, const BatchRows& batch,
                           LatentCache& cache) {
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  LayerRecord* record = nullptr;
  if (ctx.record) {
    record = &ctx.record->layers.emplace_back();
    record->h_in = ctx.keep(h.rows, h.cols);
    ops.copy_rows(h, record->h_in);
  }
  ctx.layer = record;
  ctx.expert_counts = ctx.router_counts ? ctx.router_counts->of_layer(layer) : std::span<std::int64_t>();
  Tensor normed = ctx.workspace.tensor(h.rows, h.cols), update = ctx.workspace.tensor(h.rows, h.cols);
  ops.rmsnorm(h, w.input_layernorm, ctx.eps, normed);
  mla_forward(ctx, w.attention, layer, normed, batch, cache, update);
  ctx.all_reduce(update);
  ops.add(h, update);
  if (record) {
    record->h_mid = ctx.keep(h.rows, h.cols);
    ops.copy_rows(h, record->h_mid);
  }
  ops.rmsnorm(h, w.post_attention_layernorm, ctx.eps, normed);
  if (w.moe) {
    moe_forward(ctx, *w.moe, normed, update);
  } else {
    mlp_forward(ctx, *w.mlp, normed, update, record ? &record->gate : nullptr, record ? &record->up : nullptr);
  }
  ctx.all_reduce(update);
  ops.add(h, update);
  ctx.layer = nullptr;
  ctx.expert_counts = {};
}

BatchRows make_batch_rows(Context& ctx, std::span<BatchRows::Run> runs, const LatentCache& cache) {
  std::int64_t rows = 0;
  for (BatchRows::Run& run : runs) {
    if (run.count == 0) fail("a step segment has no tokens");
    const std::int64_t reserved = run.table ? cache.reserved_tokens(*run.table) : 0;
    if (reserved < run.start + run.count)
      fail("a step segment's cache pages hold {} tokens, {} needed", reserved, run.start + run.count);
    run.first_row = rows;
    rows += run.count;
  }
  BatchRows batch{runs, ctx.workspace.array<std::int64_t>(rows)};
  for (const BatchRows::Run& run : runs)
    for (std::int64_t i = 0; i < run.count; ++i) batch.positions[run.first_row + i] = run.start + i;
  return batch;
}

void output_head(Context& ctx, const Matrix& head_weight, std::span<const float> norm, const BatchRows& batch, Tensor h,
                 StepOutput& out) {
  std::span<std::int64_t> offsets = ctx.workspace.array<std::int64_t>(static_cast<std::int64_t>(batch.runs.size()) + 1);
  offsets[0] = 0;
  for (std::size_t s = 0; s < batch.runs.size(); ++s)
    offsets[s + 1] = offsets[s] + (batch.runs[s].all_logits ? batch.runs[s].count : 1);
  std::span<std::int64_t> rows = ctx.workspace.array<std::int64_t>(offsets.back());
  for (std::size_t s = 0; s < batch.runs.size(); ++s) {
    const auto& run = batch.runs[s];
    for (std::int64_t r = offsets[s]; r < offsets[s + 1]; ++r) rows[r] = run.first_row + run.count - (offsets[s + 1] - r);
  }
  out.logit_offsets = offsets;
  out.logits = ctx.workspace.tensor(offsets.back(), ctx.split() ? ctx.config.vocab_size : head_weight.rows);
  kernels::Workspace::Scope scope(ctx.workspace);
  Tensor selected = ctx.workspace.tensor(offsets.back(), h.cols);
  ctx.backend.gather_rows(h, rows, selected);
  ctx.backend.rmsnorm(selected, norm, ctx.eps, selected);
  if (!ctx.split()) {
    ctx.backend.linear(selected, head_weight, out.logits);
    return;
  }
  // This rank's vocabulary slice, padded to the widest rank's, gathered to rank 0 in rank order.
  const Shard& shard = *ctx.shard;
  Tensor mine = ctx.workspace.tensor(offsets.back(), shard.vocab.size());
  ctx.backend.linear(selected, head_weight, mine);
  Tensor local = ctx.workspace.tensor(offsets.back(), shard.vocab_stride());
  ctx.backend.fill(local, 0.0f);
  ctx.backend.copy_rows(mine, local.columns(0, shard.vocab.size()));
  const std::vector<float> all = ctx.comm->gather(std::span<const float>(local.data, static_cast<std::size_t>(local.size())));
  if (ctx.comm->rank() != 0) return;
  for (int r = 0; r < shard.ranks; ++r) {
    const std::int64_t first = shard.vocab_bounds[r], width = shard.vocab_bounds[r + 1] - first;
    const Tensor from(const_cast<float*>(all.data()) + r * local.size(), local.rows, width, local.cols);
    ctx.backend.copy_rows(from, out.logits.columns(first, first + width));
  }
}

void Context::all_reduce(Tensor t) const {
  if (!split()) return;
  if (!t.contiguous()) fail("all-reduce of a strided tensor");
  comm->all_reduce_sum(std::span<float>(t.data, static_cast<std::size_t>(t.size())));
}

void embed(Context& ctx, const Matrix& table, std::span<const std::int64_t> ids, Tensor out) {
  if (!ctx.split()) {
    ctx.backend.embedding(table, ids, out);
    return;
  }
  const IndexRange vocab = ctx.shard->vocab;
  std::span<std::int64_t> local = ctx.workspace.array<std::int64_t>(static_cast<std::int64_t>(ids.size()));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int64_t id = ids[i];
    if (id != kernels::Backend::kZeroRow && (id < 0 || id >= ctx.config.vocab_size))
      fail("embedding: token id {} outside the vocabulary of {}", id, ctx.config.vocab_size);
    local[i] = vocab.contains(id) ? id - vocab.begin : kernels::Backend::kZeroRow;
  }
  kernels::Workspace::Scope scope(ctx.workspace);
  Tensor joined = out.contiguous() ? out : ctx.workspace.tensor(out.rows, out.cols);
  ctx.backend.embedding(table, local, joined);
  ctx.all_reduce(joined);
  if (joined.data != out.data) ctx.backend.copy_rows(joined, out);
}

StepOutput Model::compute_step(std::span<const StepSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                               StepRecord* record, RouterCounts* counts) const {
  const ModelConfig& c = weights_.config;
  workspace.reset();
  Context ctx{c, backend_, workspace, rope_.params(), static_cast<float>(c.rms_norm_eps), record};
  ctx.shard = &weights_.shard;
  ctx.comm = comm_;
  ctx.router_counts = counts;
  if (counts && !counts->fits(c)) fail("router counts made for another model's MoE layers or experts");
  std::span<BatchRows::Run> runs = workspace.array<BatchRows::Run>(static_cast<std::int64_t>(segments.size()));
  for (std::size_t s = 0; s < segments.size(); ++s)
    runs[s] = {segments[s].table, segments[s].start, static_cast<std::int64_t>(segments[s].tokens.size()), 0,
               segments[s].all_logits};
  const BatchRows batch = make_batch_rows(ctx, runs, cache);
  std::span<std::int64_t> ids = workspace.array<std::int64_t>(batch.rows());
  if (counts) counts->rows += batch.rows();
  for (std::size_t s = 0; s < segments.size(); ++s)
    std::copy(segments[s].tokens.begin(), segments[s].tokens.end(), ids.begin() + runs[s].first_row);

  StepOutput out;
  out.hidden = workspace.tensor(batch.rows(), c.hidden_size);
  embed(ctx, weights_.embed_tokens, ids, out.hidden);
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
    decoder_layer_forward(ctx, weights_.layers[layer], layer, out.hidden, batch, cache);
  output_head(ctx, weights_.lm_head, weights_.norm, batch, out.hidden, out);
  if (record) {
    record->last_hidden = ctx.keep(out.hidden.rows, out.hidden.cols);
    backend_.copy_rows(out.hidden, record->last_hidden);
  }
  backend_.rmsnorm(out.hidden, weights_.norm, ctx.eps, out.hidden);
  return out;
}

ForwardOutput Model::forward(std::span<const std::int64_t> ids) const {
  LatentCache cache(weights_.config,
                    {.capacity_tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(ids.size())), .dtype = DType::F32},
                    backend_);
  LatentCache::Table table;
  cache.reserve(table, static_cast<std::int64_t>(ids.size()));
  kernels::Workspace workspace(backend_);
  const StepSegment segment{&table, 0, ids, true};
  const StepOutput out = step(std::span(&segment, 1), cache, workspace);
  return {kernels::read(backend_, out.hidden), kernels::read(backend_, out.logits)};
}

RouterCounts::RouterCounts(const ModelConfig& config) {
  for (std::int64_t layer = 0; layer < config.num_hidden_layers; ++layer)
    if (config.is_moe_layer(layer)) {
      layers.push_back(layer);
      experts.emplace_back(static_cast<std::size_t>(config.n_routed_experts), 0);
    }
}

bool RouterCounts::fits(const ModelConfig& config) const {
  std::size_t m = 0;
  for (std::int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    if (!config.is_moe_layer(layer)) continue;
    if (m >= layers.size() || layers[m] != layer ||
        static_cast<std::int64_t>(experts[m].size()) != config.n_routed_experts)
      return false;
    ++m;
  }
  return m == layers.size();
}

std::span<std::int64_t> RouterCounts::of_layer(std::int64_t layer) {
  const auto it = std::find(layers.begin(), layers.end(), layer);
  return it == layers.end() ? std::span<std::int64_t>() : std::span(experts[static_cast<std::size_t>(it - layers.begin())]);
}

std::int64_t StepRecord::bytes() const {
  const auto floats = [](const kernels::Tensor& t) { return 4 * t.size(); };
  std::int64_t total = floats(last_hidden);
  for (const LayerRecord& l : layers) {
    total += floats(l.h_in) + floats(l.h_mid) + floats(l.c_q) + floats(l.kv_a) + floats(l.attention) +
             floats(l.gate) + floats(l.up) + floats(l.router_logits) + floats(l.expert_gate) + floats(l.expert_up) +
             floats(l.shared_gate) + floats(l.shared_up);
    total += static_cast<std::int64_t>(l.experts.size_bytes() + l.weights.size_bytes() + l.offsets.size_bytes() +
                                       l.slots.size_bytes());
  }
  return total;
}

}  // namespace dsv3
