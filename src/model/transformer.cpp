#include <vector>

#include "kernels/cpu/ops.h"
#include "model/blocks.h"
#include "model/model.h"

namespace dsv3 {

void decoder_layer_forward(const LayerWeights& w, const ModelConfig& c, const RopeTable& rope, float* h,
                           std::int64_t tokens, std::span<const std::int64_t> positions) {
  const std::int64_t hidden = c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> normed(static_cast<std::size_t>(tokens * hidden)), update(normed.size());
  kernels::rmsnorm(h, tokens, hidden, w.input_layernorm.data(), eps, normed.data());
  mla_forward(w.attention, c, rope, normed.data(), tokens, positions, update.data());
  for (std::size_t i = 0; i < update.size(); ++i) h[i] += update[i];
  kernels::rmsnorm(h, tokens, hidden, w.post_attention_layernorm.data(), eps, normed.data());
  if (w.moe) {
    moe_forward(*w.moe, c, normed.data(), tokens, update.data());
  } else {
    mlp_forward(*w.mlp, normed.data(), tokens, update.data());
  }
  for (std::size_t i = 0; i < update.size(); ++i) h[i] += update[i];
}

Model::Model(Weights weights) : weights_(std::move(weights)), rope_(weights_.config) {}

ForwardOutput Model::forward(std::span<const std::int64_t> ids) const {
  const ModelConfig& c = weights_.config;
  const auto tokens = static_cast<std::int64_t>(ids.size());
  std::vector<std::int64_t> positions(ids.size());
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int64_t>(i);

  ForwardOutput result;
  result.hidden.resize(static_cast<std::size_t>(tokens * c.hidden_size));
  kernels::embedding(weights_.embed_tokens, ids, result.hidden.data());
  for (const LayerWeights& layer : weights_.layers)
    decoder_layer_forward(layer, c, rope_, result.hidden.data(), tokens, positions);
  kernels::rmsnorm(result.hidden.data(), tokens, c.hidden_size, weights_.norm.data(),
                   static_cast<float>(c.rms_norm_eps), result.hidden.data());
  result.logits.resize(static_cast<std::size_t>(tokens * c.vocab_size));
  kernels::linear(result.hidden.data(), tokens, weights_.lm_head, result.logits.data());
  return result;
}

}  // namespace dsv3
