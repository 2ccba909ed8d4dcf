#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

using kernels::Tensor;

StepOutput Model::compute_mtp_step(std::span<const MtpSegment> segments, LatentCache& cache,
                                   kernels::Workspace& workspace, std::int64_t depth, StepRecord* record) const {
  const ModelConfig& c = weights_.config;
  if (depth < 0 || depth >= static_cast<std::int64_t>(weights_.mtp.size()))
    fail("MTP depth {} requested, the model has {} MTP module(s)", depth, weights_.mtp.size());
  const MtpWeights& mtp = weights_.mtp[static_cast<std::size_t>(depth)];
  const std::int64_t hidden = c.hidden_size;
  workspace.reset();
  Context ctx{c, backend_, workspace, rope_.params(), static_cast<float>(c.rms_norm_eps), record};
  ctx.shard = &weights_.shard;
  ctx.comm = comm_;

  std::span<BatchRows::Run> runs = workspace.array<BatchRows::Run>(static_cast<std::int64_t>(segments.size()));
  for (std::size_t s = 0; s < segments.size(); ++s) {
    const auto count = static_cast<std::int64_t>(segments[s].next_tokens.size());
    if (static_cast<std::int64_t>(segments[s].hidden.size()) != count * hidden)
      fail("an MTP segment has {} hidden values for {} rows of {}", segments[s].hidden.size(), count, hidden);
    runs[s] = {segments[s].table, segments[s].start, count, 0, segments[s].all_logits};
  }
  const BatchRows batch = make_batch_rows(ctx, runs, cache);
  const std::int64_t rows = batch.rows();
  // Row p: eh_proj(concat(enorm(embed(t[p+1])), hnorm(h[p]))), with the embedding at position 0
  // zeroed (the convention of vLLM and SGLang, which serve the released checkpoints).
  std::span<std::int64_t> next_tokens = workspace.array<std::int64_t>(rows);
  for (std::size_t s = 0; s < segments.size(); ++s)
    for (std::int64_t i = 0; i < runs[s].count; ++i)
      next_tokens[runs[s].first_row + i] =
          batch.positions[runs[s].first_row + i] == 0 ? kernels::Backend::kZeroRow : segments[s].next_tokens[i];

  StepOutput out;
  out.hidden = workspace.tensor(rows, hidden);
  {
    kernels::Workspace::Scope scope(workspace);
    Tensor concatenated = workspace.tensor(rows, 2 * hidden);  // [rows, enorm(embedding) | hnorm(h)]
    Tensor embedded = concatenated.columns(0, hidden), previous = concatenated.columns(hidden, 2 * hidden);
    embed(ctx, mtp.embed_tokens, next_tokens, embedded);
    backend_.rmsnorm(embedded, mtp.enorm, ctx.eps, embedded);
    for (std::size_t s = 0; s < segments.size(); ++s) {
      // The hidden states arrive from the caller's memory (the main model's output of an earlier step).
      const Tensor given(const_cast<float*>(segments[s].hidden.data()), runs[s].count, hidden);
      backend_.rmsnorm(given, mtp.hnorm, ctx.eps, previous.row_range(runs[s].first_row, runs[s].first_row + runs[s].count));
    }
    backend_.linear(concatenated, mtp.eh_proj, out.hidden);
  }
  decoder_layer_forward(ctx, mtp.layer, c.num_hidden_layers + depth, out.hidden, batch, cache);
  output_head(ctx, mtp.shared_head_head, mtp.shared_head_norm, batch, out.hidden, out);
  if (record) {
    record->last_hidden = ctx.keep(out.hidden.rows, out.hidden.cols);
    backend_.copy_rows(out.hidden, record->last_hidden);
  }
  return out;
}

std::vector<float> Model::mtp_logits(std::span<const std::int64_t> ids, std::span<const float> hidden) const {
  const ModelConfig& c = weights_.config;
  if (weights_.mtp.empty()) fail("this model has no MTP module (num_nextn_predict_layers = 0)");
  const auto rows = static_cast<std::int64_t>(ids.size()) - 1;  // row p predicts token p + 2
  if (rows <= 0) return {};
  if (static_cast<std::int64_t>(hidden.size()) < rows * c.hidden_size)
    fail("mtp_logits: {} hidden values for {} rows of {}", hidden.size(), rows, c.hidden_size);
  LatentCache cache(c, {.capacity_tokens = rows, .dtype = DType::F32}, backend_);
  LatentCache::Table table;
  cache.reserve(table, rows);
  kernels::Workspace workspace(backend_);
  const MtpSegment segment{&table, 0, hidden.first(static_cast<std::size_t>(rows * c.hidden_size)), ids.subspan(1),
                           true};
  const StepOutput out = mtp_step(std::span(&segment, 1), cache, workspace);
  return kernels::read(backend_, out.logits);
}

}  // namespace dsv3
