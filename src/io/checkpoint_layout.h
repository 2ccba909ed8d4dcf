#pragma once
// The one checkpoint layout (DESIGN.md): every tensor of the official Hugging Face DeepSeek-V3
// checkpoint of a config, with its name, shape, kind and the weight it is. The loader
// (Weights::load), random init (dsv3 init), training (TrainableModel, export) and the parameter
// count all walk this table, so none of them spells a tensor name or shape of its own.
#include <cstdint>
#include <string>
#include <vector>

#include "io/model_config.h"

namespace dsv3 {

struct CheckpointTensor {
  enum class Kind { matrix, norm, router_bias };
  // Which weight a tensor is, enough for a reader to find the field it fills: model-level weights,
  // then those of decoder layer `layer`, then those of MTP module `mtp_depth`.
  enum class Role {
    embed_tokens, norm, lm_head,
    input_layernorm, post_attention_layernorm,
    q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj,
    router, router_bias,
    gate_proj, up_proj, down_proj,  // a projection of the MLP named by `mlp`
    enorm, hnorm, eh_proj, shared_head_norm, shared_head_head, mtp_embed_tokens,
  };
  // The SwiGLU MLP a gate/up/down projection belongs to.
  enum class Mlp { none, dense, shared_experts, routed_expert };

  std::string name;
  std::vector<std::int64_t> shape;
  Kind kind = Kind::matrix;
  // Whether DeepSeek-V3's FP8 checkpoints store it in E4M3 with block scales: the Linear weights of
  // attention and MLP/experts; embedding, heads, router, eh_proj and norms stay in BF16.
  bool fp8_in_official_checkpoints = false;
  // For the MTP's copies of the shared embedding and head: the tensor it copies. The released
  // checkpoints store the copies; a reader may take the original when one is absent, and the copy
  // is no parameter of its own (not counted, not trained).
  std::string copy_of;
  Role role = Role::embed_tokens;
  std::int64_t layer = -1;      // decoder layer index (an MTP module's at num_hidden_layers + depth); -1 outside
  std::int64_t mtp_depth = -1;  // the MTP module it belongs to; -1 for the main model
  Mlp mlp = Mlp::none;
  std::int64_t expert = -1;     // for Mlp::routed_expert

  std::int64_t numel() const;
};

// Every tensor of the official checkpoint layout for `config`, in a stable order (embedding, main
// layers, norm, head, then each MTP module), without FP8 scale tensors. With tie_word_embeddings
// there is no lm_head.weight (the embedding is the head).
std::vector<CheckpointTensor> checkpoint_layout(const ModelConfig& config);

// The name of the block-scale tensor of an FP8 weight: "...proj.weight" -> "...proj.weight_scale_inv".
std::string fp8_scale_tensor_name(const std::string& weight_name);

// Parameter counts from the config alone (works without weights, e.g. for planning): sums over
// checkpoint_layout, copies excluded.
struct ParameterCount {
  std::int64_t total = 0;               // main model, embedding and head included, MTP excluded
  std::int64_t activated = 0;           // used per token: everything but the unchosen routed experts
  std::int64_t embedding = 0;           // embed_tokens + lm_head (one matrix when tied)
  std::int64_t read_per_token = 0;      // weights a decode step streams: activated less the embedding
                                        // table (only one of its rows is read)
  std::int64_t mtp = 0;                 // each MTP module's own weights (embedding and head are shared)
  std::int64_t routed_expert_total = 0; // all routed experts of all layers
};
ParameterCount count_parameters(const ModelConfig& config);

// Grows a structure shaped like the model (Weights, train::TrainableModel: `layers` and
// `mtp[depth].layer`, each with an optional `moe` holding `experts` and `shared_experts`, or an
// optional dense `mlp`) so that it has a place for tensor `t` of the layout.
template <typename Model>
void make_room(Model& model, const CheckpointTensor& t) {
  using Role = CheckpointTensor::Role;
  using Mlp = CheckpointTensor::Mlp;
  if (t.mtp_depth >= 0 && t.mtp_depth >= static_cast<std::int64_t>(model.mtp.size())) model.mtp.resize(t.mtp_depth + 1);
  if (t.mtp_depth < 0 && t.layer >= static_cast<std::int64_t>(model.layers.size())) model.layers.resize(t.layer + 1);
  if (t.layer < 0) return;
  auto& layer = t.mtp_depth >= 0 ? model.mtp[t.mtp_depth].layer : model.layers[t.layer];
  const bool in_moe = t.role == Role::router || t.role == Role::router_bias || t.mlp == Mlp::shared_experts ||
                      t.mlp == Mlp::routed_expert;
  if (in_moe && !layer.moe) layer.moe.emplace();
  if (t.mlp == Mlp::dense && !layer.mlp) layer.mlp.emplace();
  if (t.mlp == Mlp::shared_experts && !layer.moe->shared_experts) layer.moe->shared_experts.emplace();
  if (t.mlp == Mlp::routed_expert && t.expert >= static_cast<std::int64_t>(layer.moe->experts.size()))
    layer.moe->experts.resize(t.expert + 1);
}

}  // namespace dsv3
