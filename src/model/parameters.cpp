#include "model/model.h"

namespace dsv3 {
namespace {

struct LayerCount {
  std::int64_t total = 0;
  std::int64_t activated = 0;
  std::int64_t routed = 0;
};

LayerCount count_layer(const ModelConfig& c, std::int64_t layer) {
  const std::int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
  std::int64_t attention = 0;
  if (c.q_lora_rank) {
    attention += hidden * *c.q_lora_rank + *c.q_lora_rank + *c.q_lora_rank * heads * c.qk_head_dim();
  } else {
    attention += hidden * heads * c.qk_head_dim();
  }
  attention += hidden * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank;
  attention += c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim);
  attention += heads * c.v_head_dim * hidden;
  const std::int64_t norms = 2 * hidden;

  LayerCount count;
  count.total = count.activated = attention + norms;
  if (c.is_moe_layer(layer)) {
    const std::int64_t expert = 3 * hidden * c.moe_intermediate_size;
    const std::int64_t router = c.n_routed_experts * hidden + c.n_routed_experts;
    const std::int64_t shared = c.n_shared_experts * expert;
    count.routed = c.n_routed_experts * expert;
    count.total += router + shared + count.routed;
    count.activated += router + shared + c.num_experts_per_tok * expert;
  } else {
    count.total += 3 * hidden * c.intermediate_size;
    count.activated += 3 * hidden * c.intermediate_size;
  }
  return count;
}

}  // namespace

ParameterCount count_parameters(const ModelConfig& c) {
  ParameterCount count;
  count.embedding = c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2);
  count.total = count.activated = count.embedding + c.hidden_size;  // + model.norm
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const LayerCount layer_count = count_layer(c, layer);
    count.total += layer_count.total;
    count.activated += layer_count.activated;
    count.routed_expert_total += layer_count.routed;
  }
  count.read_per_token = count.activated - (c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size);
  for (std::int64_t depth = 0; depth < c.num_nextn_predict_layers; ++depth) {
    const LayerCount layer_count = count_layer(c, c.num_hidden_layers + depth);
    count.mtp += layer_count.total + 2 * c.hidden_size + 2 * c.hidden_size * c.hidden_size + c.hidden_size;
  }
  return count;
}

}  // namespace dsv3
