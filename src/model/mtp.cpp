#include <algorithm>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

std::vector<float> Model::mtp_logits(std::span<const std::int64_t> ids, std::span<const float> hidden) const {
  const ModelConfig& c = weights_.config;
  if (weights_.mtp.empty()) fail("this model has no MTP module (num_nextn_predict_layers = 0)");
  const MtpWeights& mtp = weights_.mtp.front();
  const std::int64_t hidden_size = c.hidden_size;
  const auto rows = static_cast<std::int64_t>(ids.size()) - 1;  // row p predicts token p + 2
  if (rows <= 0) return {};
  if (static_cast<std::int64_t>(hidden.size()) < rows * hidden_size)
    fail("mtp_logits: {} hidden values for {} rows of {}", hidden.size(), rows, hidden_size);
  const auto eps = static_cast<float>(c.rms_norm_eps);

  // Input row p = eh_proj(concat(enorm(embed(t[p+1])), hnorm(h[p]))), with the embedding at
  // position 0 zeroed (the convention of vLLM and SGLang, which serve the released checkpoints).
  std::vector<float> embedded(static_cast<std::size_t>(rows * hidden_size));
  kernels::embedding(mtp.embed_tokens, ids.subspan(1), embedded.data());
  std::fill_n(embedded.begin(), hidden_size, 0.0f);
  kernels::rmsnorm(embedded.data(), rows, hidden_size, mtp.enorm.data(), eps, embedded.data());
  std::vector<float> normed_hidden(static_cast<std::size_t>(rows * hidden_size));
  kernels::rmsnorm(hidden.data(), rows, hidden_size, mtp.hnorm.data(), eps, normed_hidden.data());
  std::vector<float> concatenated(static_cast<std::size_t>(rows * 2 * hidden_size));
  for (std::int64_t p = 0; p < rows; ++p) {
    std::copy_n(embedded.data() + p * hidden_size, hidden_size, concatenated.data() + p * 2 * hidden_size);
    std::copy_n(normed_hidden.data() + p * hidden_size, hidden_size,
                concatenated.data() + p * 2 * hidden_size + hidden_size);
  }
  std::vector<float> h(static_cast<std::size_t>(rows * hidden_size));
  kernels::linear(concatenated.data(), rows, mtp.eh_proj, h.data());

  std::vector<std::int64_t> positions(static_cast<std::size_t>(rows));
  for (std::int64_t p = 0; p < rows; ++p) positions[p] = p;
  decoder_layer_forward(mtp.layer, c, rope_, h.data(), rows, positions);
  kernels::rmsnorm(h.data(), rows, hidden_size, mtp.shared_head_norm.data(), eps, h.data());
  std::vector<float> logits(static_cast<std::size_t>(rows * c.vocab_size));
  kernels::linear(h.data(), rows, mtp.shared_head_head, logits.data());
  return logits;
}

}  // namespace dsv3
