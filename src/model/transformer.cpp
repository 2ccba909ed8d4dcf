#include <vector>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

void decoder_layer_forward(const LayerWeights& w, const ModelConfig& c, const RopeTable& rope, std::int64_t layer,
                           float* h, const BatchRows& batch, LatentCache& cache) {
  const std::int64_t hidden = c.hidden_size, rows = batch.rows();
  const auto eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> normed(static_cast<std::size_t>(rows * hidden)), update(normed.size());
  kernels::rmsnorm(h, rows, hidden, w.input_layernorm.data(), eps, normed.data());
  mla_forward(w.attention, c, rope, layer, normed.data(), batch, cache, update.data());
  for (std::size_t i = 0; i < update.size(); ++i) h[i] += update[i];
  kernels::rmsnorm(h, rows, hidden, w.post_attention_layernorm.data(), eps, normed.data());
  if (w.moe) {
    moe_forward(*w.moe, c, normed.data(), rows, update.data());
  } else {
    mlp_forward(*w.mlp, normed.data(), rows, update.data());
  }
  for (std::size_t i = 0; i < update.size(); ++i) h[i] += update[i];
}

// Lays out the rows of a step: runs of (table, start, count), checked against the cache.
BatchRows make_batch_rows(const std::vector<BatchRows::Run>& requests, const LatentCache& cache) {
  BatchRows batch;
  for (BatchRows::Run run : requests) {
    if (run.count == 0) fail("a step segment has no tokens");
    const std::int64_t reserved = run.table ? cache.reserved_tokens(*run.table) : 0;
    if (reserved < run.start + run.count)
      fail("a step segment's cache pages hold {} tokens, {} needed", reserved, run.start + run.count);
    run.first_row = batch.rows();
    batch.runs.push_back(run);
    for (std::int64_t i = 0; i < run.count; ++i) batch.positions.push_back(run.start + i);
  }
  return batch;
}

void output_head(const Matrix& head_weight, const std::vector<float>& norm, float eps, const BatchRows& batch,
          const std::vector<bool>& all_logits, const float* h, std::int64_t hidden, StepOutput& out) {
  std::vector<std::int64_t> rows;
  out.logit_offsets.push_back(0);
  for (std::size_t s = 0; s < batch.runs.size(); ++s) {
    const auto& run = batch.runs[s];
    for (std::int64_t i = all_logits[s] ? 0 : run.count - 1; i < run.count; ++i) rows.push_back(run.first_row + i);
    out.logit_offsets.push_back(static_cast<std::int64_t>(rows.size()));
  }
  std::vector<float> selected(rows.size() * static_cast<std::size_t>(hidden));
  for (std::size_t r = 0; r < rows.size(); ++r)
    kernels::rmsnorm(h + rows[r] * hidden, 1, hidden, norm.data(), eps, selected.data() + r * hidden);
  out.logits.resize(rows.size() * static_cast<std::size_t>(head_weight.rows));
  kernels::linear(selected.data(), static_cast<std::int64_t>(rows.size()), head_weight, out.logits.data());
}

Model::Model(Weights weights) : weights_(std::move(weights)), rope_(weights_.config) {}

StepOutput Model::step(std::span<const StepSegment> segments, LatentCache& cache) const {
  const ModelConfig& c = weights_.config;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  std::vector<BatchRows::Run> runs;
  std::vector<std::int64_t> ids;
  std::vector<bool> all_logits;
  for (const auto& segment : segments) {
    runs.push_back({segment.table, segment.start, static_cast<std::int64_t>(segment.tokens.size())});
    ids.insert(ids.end(), segment.tokens.begin(), segment.tokens.end());
    all_logits.push_back(segment.all_logits);
  }
  const BatchRows batch = make_batch_rows(runs, cache);
  const std::int64_t rows = batch.rows();

  StepOutput out;
  out.hidden.resize(static_cast<std::size_t>(rows * c.hidden_size));
  kernels::embedding(weights_.embed_tokens, ids, out.hidden.data());
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
    decoder_layer_forward(weights_.layers[layer], c, rope_, layer, out.hidden.data(), batch, cache);
  output_head(weights_.lm_head, weights_.norm, eps, batch, all_logits, out.hidden.data(), c.hidden_size, out);
  kernels::rmsnorm(out.hidden.data(), rows, c.hidden_size, weights_.norm.data(), eps, out.hidden.data());
  return out;
}

ForwardOutput Model::forward(std::span<const std::int64_t> ids) const {
  LatentCache cache(weights_.config, {.capacity_tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(ids.size())),
                                      .dtype = DType::F32});
  LatentCache::Table table;
  cache.reserve(table, static_cast<std::int64_t>(ids.size()));
  const StepSegment segment{&table, 0, ids, true};
  StepOutput out = step(std::span(&segment, 1), cache);
  return {std::move(out.hidden), std::move(out.logits)};
}

}  // namespace dsv3
