// One pre-norm decoder layer for training: h_mid = h_in + MLA(norm(h_in)); h_out = h_mid + FFN(norm(h_mid)).
// Only the two residual-stream states are kept; both norms are recomputed in the backward pass.
#include <algorithm>
#include <vector>

#include "train/blocks.h"

namespace dsv3::train {
namespace {

template <typename T>
std::int64_t bytes_of(const std::vector<T>& values) {
  return static_cast<std::int64_t>(values.size() * sizeof(T));
}

std::int64_t bytes_of(const MlpSaved& saved) { return bytes_of(saved.gate) + bytes_of(saved.up); }

}  // namespace

std::int64_t LayerSaved::bytes() const {
  std::int64_t total = bytes_of(h_in) + bytes_of(h_mid) + bytes_of(attention.c_q) + bytes_of(attention.kv_a) +
                       bytes_of(attention.attention) + bytes_of(mlp) + bytes_of(moe.scores) +
                       bytes_of(moe.routes.experts) + bytes_of(moe.routes.weights) + bytes_of(moe.shared);
  for (const MlpSaved& expert : moe.experts) total += bytes_of(expert);
  return total;
}

double layer_forward(const LayerParameters& w, const ModelConfig& c, const RopeTable& rope, float* h,
                     std::int64_t tokens, std::span<const std::int64_t> positions, double alpha, LayerSaved& saved) {
  const std::int64_t size = tokens * c.hidden_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> normed(static_cast<std::size_t>(size)), update(normed.size());
  saved.h_in.assign(h, h + size);
  rmsnorm(h, tokens, *w.input_layernorm, eps, normed.data());
  mla_forward(w.attention, c, rope, normed.data(), tokens, positions, saved.attention, update.data());
  for (std::int64_t i = 0; i < size; ++i) h[i] += update[i];
  saved.h_mid.assign(h, h + size);
  rmsnorm(h, tokens, *w.post_attention_layernorm, eps, normed.data());
  double balance = 0.0;
  if (w.moe) {
    balance = moe_forward(*w.moe, c, normed.data(), tokens, alpha, saved.moe, update.data());
  } else {
    mlp_forward(*w.mlp, normed.data(), tokens, saved.mlp, update.data());
  }
  for (std::int64_t i = 0; i < size; ++i) h[i] += update[i];
  return balance;
}

void layer_backward(const LayerParameters& w, const ModelConfig& c, const RopeTable& rope, std::int64_t tokens,
                    std::span<const std::int64_t> positions, double alpha, const LayerSaved& saved, float* d_h) {
  const auto size = static_cast<std::size_t>(tokens * c.hidden_size);
  const auto eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> normed(size), d_normed(size, 0.0f);

  // d h_mid = d h_out + norm2ᵀ(FFNᵀ(d h_out))
  rmsnorm(saved.h_mid.data(), tokens, *w.post_attention_layernorm, eps, normed.data());
  if (w.moe) {
    moe_backward(*w.moe, c, normed.data(), tokens, alpha, saved.moe, d_h, d_normed.data());
  } else {
    mlp_backward(*w.mlp, normed.data(), tokens, saved.mlp, d_h, d_normed.data());
  }
  rmsnorm_backward(saved.h_mid.data(), tokens, *w.post_attention_layernorm, eps, d_normed.data(), d_h);

  // d h_in = d h_mid + norm1ᵀ(MLAᵀ(d h_mid))
  rmsnorm(saved.h_in.data(), tokens, *w.input_layernorm, eps, normed.data());
  std::fill(d_normed.begin(), d_normed.end(), 0.0f);
  mla_backward(w.attention, c, rope, normed.data(), tokens, positions, saved.attention, d_h, d_normed.data());
  rmsnorm_backward(saved.h_in.data(), tokens, *w.input_layernorm, eps, d_normed.data(), d_h);
}

}  // namespace dsv3::train
