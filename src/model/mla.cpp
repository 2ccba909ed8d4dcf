#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"
#include "model/blocks.h"

namespace dsv3 {

void mla_forward(const AttentionWeights& w, const ModelConfig& c, const RopeTable& rope, const float* x,
                 std::int64_t tokens, std::span<const std::int64_t> positions, float* out) {
  const std::int64_t heads = c.num_attention_heads;
  const std::int64_t nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim, v_dim = c.v_head_dim;
  const std::int64_t qk_dim = c.qk_head_dim();

  // q: [T, heads, qk_dim] through the low-rank path when q_lora_rank is set.
  std::vector<float> q(static_cast<std::size_t>(tokens * heads * qk_dim));
  if (c.q_lora_rank) {
    std::vector<float> c_q(static_cast<std::size_t>(tokens * *c.q_lora_rank));  // [T, q_lora_rank]
    kernels::linear(x, tokens, w.q_a_proj, c_q.data());
    kernels::rmsnorm(c_q.data(), tokens, *c.q_lora_rank, w.q_a_layernorm.data(), static_cast<float>(c.rms_norm_eps),
                     c_q.data());
    kernels::linear(c_q.data(), tokens, w.q_b_proj, q.data());
  } else {
    kernels::linear(x, tokens, w.q_proj, q.data());
  }

  // kv_a: [T, kv_lora_rank + rope_dim] = (c_kv, k_rope); c_kv is the only per-token state MLA caches.
  const std::int64_t kv_a_dim = c.kv_lora_rank + rope_dim;
  std::vector<float> kv_a(static_cast<std::size_t>(tokens * kv_a_dim));
  kernels::linear(x, tokens, w.kv_a_proj_with_mqa, kv_a.data());
  std::vector<float> c_kv(static_cast<std::size_t>(tokens * c.kv_lora_rank));
  for (std::int64_t t = 0; t < tokens; ++t)
    std::copy_n(kv_a.data() + t * kv_a_dim, c.kv_lora_rank, c_kv.data() + t * c.kv_lora_rank);
  kernels::rmsnorm(c_kv.data(), tokens, c.kv_lora_rank, w.kv_a_layernorm.data(), static_cast<float>(c.rms_norm_eps),
                   c_kv.data());

  // Decoupled RoPE: on the rope part of every query head, and on the single shared k_rope.
  rope.apply(q.data() + nope, tokens * heads, qk_dim, heads, positions);
  float* k_rope = kv_a.data() + c.kv_lora_rank;
  rope.apply(k_rope, tokens, kv_a_dim, 1, positions);

  // kv: [T, heads, nope + v_dim] = kv_b_proj(c_kv), the per-head k_nope and v.
  const std::int64_t kv_dim = nope + v_dim;
  std::vector<float> kv(static_cast<std::size_t>(tokens * heads * kv_dim));
  kernels::linear(c_kv.data(), tokens, w.kv_b_proj, kv.data());
  std::vector<float> k(static_cast<std::size_t>(tokens * heads * qk_dim));  // [T, heads, nope | rope]
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t h = 0; h < heads; ++h) {
      float* k_row = k.data() + (t * heads + h) * qk_dim;
      std::copy_n(kv.data() + (t * heads + h) * kv_dim, nope, k_row);
      std::copy_n(k_rope + t * kv_a_dim, rope_dim, k_row + nope);
    }

  kernels::AttentionShape shape;
  shape.tokens = tokens;
  shape.heads = heads;
  shape.qk_dim = qk_dim;
  shape.v_dim = v_dim;
  shape.q_stride = shape.k_stride = heads * qk_dim;
  shape.q_head_stride = shape.k_head_stride = qk_dim;
  shape.v_stride = heads * kv_dim;
  shape.v_head_stride = kv_dim;
  std::vector<float> attention(static_cast<std::size_t>(tokens * heads * v_dim));
  kernels::attention_causal(q.data(), k.data(), kv.data() + nope, shape, static_cast<float>(c.softmax_scale()),
                            attention.data());
  kernels::linear(attention.data(), tokens, w.o_proj, out);
}

}  // namespace dsv3
