#include <algorithm>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

StepOutput Model::mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, std::int64_t depth) const {
  const ModelConfig& c = weights_.config;
  if (depth < 0 || depth >= static_cast<std::int64_t>(weights_.mtp.size()))
    fail("MTP depth {} requested, the model has {} MTP module(s)", depth, weights_.mtp.size());
  const MtpWeights& mtp = weights_.mtp[static_cast<std::size_t>(depth)];
  const std::int64_t hidden = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);

  std::vector<BatchRows::Run> runs;
  std::vector<std::int64_t> next_tokens;
  std::vector<bool> all_logits;
  for (const auto& segment : segments) {
    const auto count = static_cast<std::int64_t>(segment.next_tokens.size());
    if (static_cast<std::int64_t>(segment.hidden.size()) != count * hidden)
      fail("an MTP segment has {} hidden values for {} rows of {}", segment.hidden.size(), count, hidden);
    runs.push_back({segment.table, segment.start, count});
    next_tokens.insert(next_tokens.end(), segment.next_tokens.begin(), segment.next_tokens.end());
    all_logits.push_back(segment.all_logits);
  }
  const BatchRows batch = make_batch_rows(runs, cache);
  const std::int64_t rows = batch.rows();

  // Row p: eh_proj(concat(enorm(embed(t[p+1])), hnorm(h[p]))), with the embedding at position 0
  // zeroed (the convention of vLLM and SGLang, which serve the released checkpoints).
  std::vector<float> embedded(static_cast<std::size_t>(rows * hidden));
  kernels::embedding(mtp.embed_tokens, next_tokens, embedded.data());
  for (std::int64_t r = 0; r < rows; ++r)
    if (batch.positions[r] == 0) std::fill_n(embedded.begin() + r * hidden, hidden, 0.0f);
  kernels::rmsnorm(embedded.data(), rows, hidden, mtp.enorm.data(), eps, embedded.data());
  std::vector<float> concatenated(static_cast<std::size_t>(rows * 2 * hidden));
  std::int64_t row = 0;
  for (const auto& segment : segments)
    for (std::size_t i = 0; i < segment.next_tokens.size(); ++i, ++row) {
      float* target = concatenated.data() + row * 2 * hidden;
      std::copy_n(embedded.data() + row * hidden, hidden, target);
      kernels::rmsnorm(segment.hidden.data() + i * hidden, 1, hidden, mtp.hnorm.data(), eps, target + hidden);
    }

  StepOutput out;
  out.hidden.resize(static_cast<std::size_t>(rows * hidden));
  kernels::linear(concatenated.data(), rows, mtp.eh_proj, out.hidden.data());
  decoder_layer_forward(mtp.layer, c, rope_, c.num_hidden_layers + depth, out.hidden.data(), batch, cache);
  output_head(mtp.shared_head_head, mtp.shared_head_norm, eps, batch, all_logits, out.hidden.data(), hidden, out);
  return out;
}

std::vector<float> Model::mtp_logits(std::span<const std::int64_t> ids, std::span<const float> hidden) const {
  const ModelConfig& c = weights_.config;
  if (weights_.mtp.empty()) fail("this model has no MTP module (num_nextn_predict_layers = 0)");
  const auto rows = static_cast<std::int64_t>(ids.size()) - 1;  // row p predicts token p + 2
  if (rows <= 0) return {};
  if (static_cast<std::int64_t>(hidden.size()) < rows * c.hidden_size)
    fail("mtp_logits: {} hidden values for {} rows of {}", hidden.size(), rows, c.hidden_size);
  LatentCache cache(c, {.capacity_tokens = rows, .dtype = DType::F32});
  LatentCache::Table table;
  cache.reserve(table, rows);
  const MtpSegment segment{&table, 0, hidden.first(static_cast<std::size_t>(rows * c.hidden_size)), ids.subspan(1),
                           true};
  return mtp_step(std::span(&segment, 1), cache).logits;
}

}  // namespace dsv3
