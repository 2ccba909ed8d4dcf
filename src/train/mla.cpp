// The backward pass of Multi-head Latent Attention. The model's forward kept only the latents (c_q,
// kv_a) and the attention output; this rebuilds the normed latents, the up-projections
// q = q_b_proj(c_q) and [k_nope | v] = kv_b_proj(c_kv), and the rotated k_rope from them (the
// paper's recomputation), all through the backend's ops.
#include <algorithm>
#include <vector>

#include "train/blocks.h"

namespace dsv3::train {
namespace {

struct MlaTensors {
  std::vector<float> c_q;   // [T, q_lora_rank], after q_a_layernorm
  std::vector<float> c_kv;  // [T, kv_lora_rank], after kv_a_layernorm
  std::vector<float> q;     // [T, heads, nope | rope], rope part rotated
  std::vector<float> kv;    // [T, heads, nope + v_dim], kv_b_proj output
  std::vector<float> k;     // [T, heads, nope | rope], the shared rotated k_rope in every head
};

std::size_t count(std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); }

// Rotates `rows` rope parts of rope_dim floats, `stride` apart, through the backend's rope op.
void apply_rope(const Backward& b, float* x, std::int64_t rows, std::int64_t stride, std::int64_t rows_per_position,
                std::span<const std::int64_t> positions) {
  const auto dim = static_cast<std::int64_t>(2 * b.rope.inverse_frequencies.size());
  b.backend.rope(kernels::Tensor(x, rows, dim, stride), rows_per_position, positions, b.rope);
}

void rebuild(const Backward& b, const AttentionWeights& w, const float* x, std::int64_t tokens,
             std::span<const std::int64_t> positions, const LayerRecord& saved, MlaTensors& t) {
  const ModelConfig& c = b.config;
  const std::int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim;
  const std::int64_t qk_dim = c.qk_head_dim(), kv_dim = nope + c.v_head_dim;

  t.q.resize(count(tokens, heads * qk_dim));
  if (c.q_lora_rank) {
    t.c_q.resize(static_cast<std::size_t>(saved.c_q.size()));
    b.rmsnorm(saved.c_q.data, tokens, w.q_a_layernorm, t.c_q.data());
    b.linear(t.c_q.data(), tokens, w.q_b_proj, t.q.data());
  } else {
    b.linear(x, tokens, w.q_proj, t.q.data());
  }
  apply_rope(b, t.q.data() + nope, tokens * heads, qk_dim, heads, positions);

  t.c_kv.resize(count(tokens, c.kv_lora_rank));
  std::vector<float> k_rope(count(tokens, rope_dim));
  for (std::int64_t i = 0; i < tokens; ++i) {
    std::copy_n(saved.kv_a.row(i), c.kv_lora_rank, t.c_kv.data() + i * c.kv_lora_rank);
    std::copy_n(saved.kv_a.row(i) + c.kv_lora_rank, rope_dim, k_rope.data() + i * rope_dim);
  }
  b.rmsnorm(t.c_kv.data(), tokens, w.kv_a_layernorm, t.c_kv.data());
  apply_rope(b, k_rope.data(), tokens, rope_dim, 1, positions);

  t.kv.resize(count(tokens, heads * kv_dim));
  b.linear(t.c_kv.data(), tokens, w.kv_b_proj, t.kv.data());
  t.k.resize(count(tokens, heads * qk_dim));
  for (std::int64_t i = 0; i < tokens; ++i)
    for (std::int64_t h = 0; h < heads; ++h) {
      float* k_row = t.k.data() + (i * heads + h) * qk_dim;
      std::copy_n(t.kv.data() + (i * heads + h) * kv_dim, nope, k_row);
      std::copy_n(k_rope.data() + i * rope_dim, rope_dim, k_row + nope);
    }
}

kernels::AttentionShape attention_shape(const ModelConfig& c, std::int64_t tokens) {
  const std::int64_t heads = c.num_attention_heads, qk_dim = c.qk_head_dim();
  const std::int64_t kv_dim = c.qk_nope_head_dim + c.v_head_dim;
  kernels::AttentionShape shape;
  shape.tokens = tokens;
  shape.heads = heads;
  shape.qk_dim = qk_dim;
  shape.v_dim = c.v_head_dim;
  shape.q_stride = shape.k_stride = heads * qk_dim;
  shape.q_head_stride = shape.k_head_stride = qk_dim;
  shape.v_stride = heads * kv_dim;
  shape.v_head_stride = kv_dim;
  return shape;
}

}  // namespace

void mla_backward(const Backward& b, const AttentionParameters& p, const AttentionWeights& w, const float* x,
                  std::int64_t tokens, std::span<const std::int64_t> positions, const LayerRecord& saved,
                  const float* d_out, float* d_x) {
  const ModelConfig& c = b.config;
  const std::int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim;
  const std::int64_t qk_dim = c.qk_head_dim(), kv_dim = nope + c.v_head_dim;
  const std::int64_t kv_a_dim = c.kv_lora_rank + rope_dim;
  const float eps = b.eps;

  std::vector<float> d_attention(static_cast<std::size_t>(saved.attention.size()), 0.0f);
  linear_backward(saved.attention.data, tokens, *p.o_proj, d_out, d_attention.data());

  MlaTensors t;
  rebuild(b, w, x, tokens, positions, saved, t);
  std::vector<float> d_q(t.q.size()), d_k(t.k.size()), d_kv(t.kv.size());
  attention_causal_backward(t.q.data(), t.k.data(), t.kv.data() + nope, attention_shape(c, tokens),
                            static_cast<float>(c.softmax_scale()), d_attention.data(), d_q.data(), d_k.data(),
                            d_kv.data() + nope);

  // A rotation's transpose is the rotation by -angle: RoPE at position -p undoes position p
  // (YaRN's attention factor scales both the same way).
  std::vector<std::int64_t> negated(positions.size());
  std::transform(positions.begin(), positions.end(), negated.begin(), [](std::int64_t p) { return -p; });

  // k = [k_nope of each head | the one k_rope shared by all heads]: the heads' k_rope gradients add up.
  std::vector<float> d_kv_a(count(tokens, kv_a_dim), 0.0f);
  for (std::int64_t i = 0; i < tokens; ++i)
    for (std::int64_t h = 0; h < heads; ++h) {
      const float* dk_row = d_k.data() + (i * heads + h) * qk_dim;
      std::copy_n(dk_row, nope, d_kv.data() + (i * heads + h) * kv_dim);
      float* d_rope = d_kv_a.data() + i * kv_a_dim + c.kv_lora_rank;
      for (std::int64_t j = 0; j < rope_dim; ++j) d_rope[j] += dk_row[nope + j];
    }
  apply_rope(b, d_kv_a.data() + c.kv_lora_rank, tokens, kv_a_dim, 1, negated);

  std::vector<float> d_c_kv(t.c_kv.size(), 0.0f);
  linear_backward(t.c_kv.data(), tokens, *p.kv_b_proj, d_kv.data(), d_c_kv.data());
  std::vector<float> c_kv_raw(t.c_kv.size()), d_c_kv_raw(t.c_kv.size(), 0.0f);
  for (std::int64_t i = 0; i < tokens; ++i)
    std::copy_n(saved.kv_a.row(i), c.kv_lora_rank, c_kv_raw.data() + i * c.kv_lora_rank);
  rmsnorm_backward(c_kv_raw.data(), tokens, *p.kv_a_layernorm, eps, d_c_kv.data(), d_c_kv_raw.data());
  for (std::int64_t i = 0; i < tokens; ++i)
    std::copy_n(d_c_kv_raw.data() + i * c.kv_lora_rank, c.kv_lora_rank, d_kv_a.data() + i * kv_a_dim);
  linear_backward(x, tokens, *p.kv_a_proj_with_mqa, d_kv_a.data(), d_x);

  apply_rope(b, d_q.data() + nope, tokens * heads, qk_dim, heads, negated);
  if (p.q_a_proj) {
    std::vector<float> d_c_q(t.c_q.size(), 0.0f), d_c_q_raw(t.c_q.size(), 0.0f);
    linear_backward(t.c_q.data(), tokens, *p.q_b_proj, d_q.data(), d_c_q.data());
    rmsnorm_backward(saved.c_q.data, tokens, *p.q_a_layernorm, eps, d_c_q.data(), d_c_q_raw.data());
    linear_backward(x, tokens, *p.q_a_proj, d_c_q_raw.data(), d_x);
  } else {
    linear_backward(x, tokens, *p.q_proj, d_q.data(), d_x);
  }
}

}  // namespace dsv3::train
