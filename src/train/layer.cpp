// The backward pass of one pre-norm decoder layer: h_mid = h_in + MLA(norm(h_in)); h_out = h_mid +
// FFN(norm(h_mid)). The record keeps the two residual-stream states; both norms are recomputed.
#include <algorithm>
#include <vector>

#include "train/blocks.h"

namespace dsv3::train {

void layer_backward(const Backward& b, const LayerParameters& p, const LayerWeights& w, std::int64_t tokens,
                    std::span<const std::int64_t> positions, double alpha, const LayerRecord& record, float* d_h) {
  const auto size = static_cast<std::size_t>(tokens * b.config.hidden_size);
  std::vector<float> normed(size), d_normed(size, 0.0f);

  // d h_mid = d h_out + norm2ᵀ(FFNᵀ(d h_out))
  b.rmsnorm(record.h_mid.data, tokens, w.post_attention_layernorm, normed.data());
  if (p.moe) {
    moe_backward(b, *p.moe, *w.moe, normed.data(), tokens, alpha, record, d_h, d_normed.data());
  } else {
    mlp_backward(b, *p.mlp, *w.mlp, normed.data(), tokens, record.gate.data, record.up.data, d_h, d_normed.data());
  }
  rmsnorm_backward(record.h_mid.data, tokens, *p.post_attention_layernorm, b.eps, d_normed.data(), d_h);

  // d h_in = d h_mid + norm1ᵀ(MLAᵀ(d h_mid))
  b.rmsnorm(record.h_in.data, tokens, w.input_layernorm, normed.data());
  std::fill(d_normed.begin(), d_normed.end(), 0.0f);
  mla_backward(b, p.attention, w.attention, normed.data(), tokens, positions, record, d_h, d_normed.data());
  rmsnorm_backward(record.h_in.data, tokens, *p.input_layernorm, b.eps, d_normed.data(), d_h);
}

}  // namespace dsv3::train
