#include "io/checkpoint_layout.h"

#include <tuple>

namespace dsv3 {
namespace {

using Kind = CheckpointTensor::Kind;
using Role = CheckpointTensor::Role;
using Mlp = CheckpointTensor::Mlp;

// Appends tensors to the table; `layer` and `mtp_depth` say where the next ones belong.
class LayoutBuilder {
 public:
  LayoutBuilder(const ModelConfig& config, std::vector<CheckpointTensor>& out) : c_(config), out_(out) {}

  CheckpointTensor& add(std::string name, std::vector<std::int64_t> shape, Kind kind, Role role, bool fp8 = false) {
    CheckpointTensor& t = out_.emplace_back();
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.kind = kind;
    t.role = role;
    t.fp8_in_official_checkpoints = fp8;
    t.layer = layer_;
    t.mtp_depth = mtp_depth_;
    return t;
  }
  void matrix(std::string name, std::int64_t rows, std::int64_t cols, Role role, bool fp8) {
    add(std::move(name), {rows, cols}, Kind::matrix, role, fp8);
  }
  void norm(std::string name, std::int64_t size, Role role) { add(std::move(name), {size}, Kind::norm, role); }

  void mlp(const std::string& prefix, std::int64_t intermediate, Mlp which, std::int64_t expert = -1) {
    const std::int64_t h = c_.hidden_size;
    for (auto [suffix, role, rows, cols] : {std::tuple{".gate_proj.weight", Role::gate_proj, intermediate, h},
                                            std::tuple{".up_proj.weight", Role::up_proj, intermediate, h},
                                            std::tuple{".down_proj.weight", Role::down_proj, h, intermediate}}) {
      CheckpointTensor& t = add(prefix + suffix, {rows, cols}, Kind::matrix, role, true);
      t.mlp = which;
      t.expert = expert;
    }
  }

  void decoder_layer(std::int64_t index) {
    layer_ = index;
    const std::string p = "model.layers." + std::to_string(index);
    const std::int64_t h = c_.hidden_size, heads = c_.num_attention_heads;
    norm(p + ".input_layernorm.weight", h, Role::input_layernorm);
    norm(p + ".post_attention_layernorm.weight", h, Role::post_attention_layernorm);
    const std::string a = p + ".self_attn";
    if (c_.q_lora_rank) {
      matrix(a + ".q_a_proj.weight", *c_.q_lora_rank, h, Role::q_a_proj, true);
      norm(a + ".q_a_layernorm.weight", *c_.q_lora_rank, Role::q_a_layernorm);
      matrix(a + ".q_b_proj.weight", heads * c_.qk_head_dim(), *c_.q_lora_rank, Role::q_b_proj, true);
    } else {
      matrix(a + ".q_proj.weight", heads * c_.qk_head_dim(), h, Role::q_proj, true);
    }
    matrix(a + ".kv_a_proj_with_mqa.weight", c_.kv_lora_rank + c_.qk_rope_head_dim, h, Role::kv_a_proj_with_mqa, true);
    norm(a + ".kv_a_layernorm.weight", c_.kv_lora_rank, Role::kv_a_layernorm);
    matrix(a + ".kv_b_proj.weight", heads * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank, Role::kv_b_proj,
           true);
    matrix(a + ".o_proj.weight", h, heads * c_.v_head_dim, Role::o_proj, true);
    if (c_.is_moe_layer(index)) {
      matrix(p + ".mlp.gate.weight", c_.n_routed_experts, h, Role::router, false);
      add(p + ".mlp.gate.e_score_correction_bias", {c_.n_routed_experts}, Kind::router_bias, Role::router_bias);
      for (std::int64_t e = 0; e < c_.n_routed_experts; ++e)
        mlp(p + ".mlp.experts." + std::to_string(e), c_.moe_intermediate_size, Mlp::routed_expert, e);
      if (c_.n_shared_experts > 0)
        mlp(p + ".mlp.shared_experts", c_.moe_intermediate_size * c_.n_shared_experts, Mlp::shared_experts);
    } else {
      mlp(p + ".mlp", c_.intermediate_size, Mlp::dense);
    }
  }

  void build() {
    const std::int64_t h = c_.hidden_size, vocab = c_.vocab_size;
    matrix("model.embed_tokens.weight", vocab, h, Role::embed_tokens, false);
    for (std::int64_t i = 0; i < c_.num_hidden_layers; ++i) decoder_layer(i);
    layer_ = -1;
    norm("model.norm.weight", h, Role::norm);
    if (!c_.tie_word_embeddings) matrix("lm_head.weight", vocab, h, Role::lm_head, false);
    const std::string head = c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    for (std::int64_t d = 0; d < c_.num_nextn_predict_layers; ++d) {
      const std::int64_t index = c_.num_hidden_layers + d;
      const std::string p = "model.layers." + std::to_string(index);
      mtp_depth_ = d;
      layer_ = index;
      norm(p + ".enorm.weight", h, Role::enorm);
      norm(p + ".hnorm.weight", h, Role::hnorm);
      matrix(p + ".eh_proj.weight", h, 2 * h, Role::eh_proj, false);
      decoder_layer(index);
      norm(p + ".shared_head.norm.weight", h, Role::shared_head_norm);
      add(p + ".shared_head.head.weight", {vocab, h}, Kind::matrix, Role::shared_head_head).copy_of = head;
      add(p + ".embed_tokens.weight", {vocab, h}, Kind::matrix, Role::mtp_embed_tokens).copy_of =
          "model.embed_tokens.weight";
    }
  }

 private:
  const ModelConfig& c_;
  std::vector<CheckpointTensor>& out_;
  std::int64_t layer_ = -1;
  std::int64_t mtp_depth_ = -1;
};

}  // namespace

std::int64_t CheckpointTensor::numel() const {
  std::int64_t count = 1;
  for (std::int64_t extent : shape) count *= extent;
  return count;
}

std::vector<CheckpointTensor> checkpoint_layout(const ModelConfig& config) {
  std::vector<CheckpointTensor> out;
  LayoutBuilder(config, out).build();
  return out;
}

std::string fp8_scale_tensor_name(const std::string& weight_name) { return weight_name + "_scale_inv"; }

ParameterCount count_parameters(const ModelConfig& c) {
  ParameterCount count;
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    if (!t.copy_of.empty()) continue;  // the same parameters as the original
    const std::int64_t n = t.numel();
    if (t.mtp_depth >= 0) {
      count.mtp += n;
      continue;
    }
    count.total += n;
    if (t.role == Role::embed_tokens || t.role == Role::lm_head) count.embedding += n;
    const bool routed = t.mlp == Mlp::routed_expert;
    if (routed) count.routed_expert_total += n;
    // A token uses num_experts_per_tok routed experts of each layer; all are the same size, so the
    // first ones stand for whichever the router picks.
    const bool used = !routed || t.expert < c.num_experts_per_tok;
    if (used) count.activated += n;
    // A decode step reads one row of the embedding table, unless it is also the output head.
    if (used && (t.role != Role::embed_tokens || c.tie_word_embeddings)) count.read_per_token += n;
  }
  return count;
}

}  // namespace dsv3
