#include <algorithm>
#include <cstring>
#include <random>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

// Creates every Parameter the config implies (zero values) and wires the per-block pointers.
class Builder {
 public:
  explicit Builder(TrainableModel& model) : model_(model) {}

  Parameter* add(const std::string& name, std::vector<std::int64_t> shape) {
    std::int64_t count = 1;
    for (std::int64_t extent : shape) count *= extent;
    Parameter& p = model_.parameters[name];
    p.name = name;
    p.shape = std::move(shape);
    p.value.assign(static_cast<std::size_t>(count), 0.0f);
    p.grad.assign(p.value.size(), 0.0f);
    return &p;
  }

  MlpParameters mlp(const std::string& prefix, std::int64_t intermediate) {
    const std::int64_t hidden = model_.config.hidden_size;
    return {add(prefix + ".gate_proj.weight", {intermediate, hidden}), add(prefix + ".up_proj.weight", {intermediate, hidden}),
            add(prefix + ".down_proj.weight", {hidden, intermediate})};
  }

  LayerParameters layer(std::int64_t index, bool moe) {
    const ModelConfig& c = model_.config;
    const std::string prefix = "model.layers." + std::to_string(index);
    const std::int64_t hidden = c.hidden_size, heads = c.num_attention_heads;
    LayerParameters l;
    l.input_layernorm = add(prefix + ".input_layernorm.weight", {hidden});
    l.post_attention_layernorm = add(prefix + ".post_attention_layernorm.weight", {hidden});
    AttentionParameters& a = l.attention;
    const std::string attn = prefix + ".self_attn.";
    if (c.q_lora_rank) {
      a.q_a_proj = add(attn + "q_a_proj.weight", {*c.q_lora_rank, hidden});
      a.q_a_layernorm = add(attn + "q_a_layernorm.weight", {*c.q_lora_rank});
      a.q_b_proj = add(attn + "q_b_proj.weight", {heads * c.qk_head_dim(), *c.q_lora_rank});
    } else {
      a.q_proj = add(attn + "q_proj.weight", {heads * c.qk_head_dim(), hidden});
    }
    a.kv_a_proj_with_mqa = add(attn + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, hidden});
    a.kv_a_layernorm = add(attn + "kv_a_layernorm.weight", {c.kv_lora_rank});
    a.kv_b_proj = add(attn + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    a.o_proj = add(attn + "o_proj.weight", {hidden, heads * c.v_head_dim});
    if (moe) {
      MoeParameters m;
      m.router = add(prefix + ".mlp.gate.weight", {c.n_routed_experts, hidden});
      m.e_score_correction_bias.assign(static_cast<std::size_t>(c.n_routed_experts), 0.0f);
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
        m.experts.push_back(mlp(prefix + ".mlp.experts." + std::to_string(e), c.moe_intermediate_size));
      if (c.n_shared_experts > 0)
        m.shared_experts = mlp(prefix + ".mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts);
      l.moe = std::move(m);
    } else {
      l.mlp = mlp(prefix + ".mlp", c.intermediate_size);
    }
    return l;
  }

  void build() {
    const ModelConfig& c = model_.config;
    model_.embed_tokens = add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) model_.layers.push_back(layer(i, c.is_moe_layer(i)));
    model_.norm = add("model.norm.weight", {c.hidden_size});
    model_.lm_head = add("lm_head.weight", {c.vocab_size, c.hidden_size});
    for (std::int64_t d = 0; d < c.num_nextn_predict_layers; ++d) {
      const std::int64_t index = c.num_hidden_layers + d;
      const std::string prefix = "model.layers." + std::to_string(index);
      MtpParameters m;
      m.enorm = add(prefix + ".enorm.weight", {c.hidden_size});
      m.hnorm = add(prefix + ".hnorm.weight", {c.hidden_size});
      m.eh_proj = add(prefix + ".eh_proj.weight", {c.hidden_size, 2 * c.hidden_size});
      m.layer = layer(index, c.is_moe_layer(index));
      m.shared_head_norm = add(prefix + ".shared_head.norm.weight", {c.hidden_size});
      model_.mtp.push_back(std::move(m));
    }
  }

 private:
  TrainableModel& model_;
};

void copy_matrix(const Matrix& source, Parameter* target) {
  if (source.rows != target->rows() || source.cols != target->cols())
    fail("{}: shape [{},{}], expected [{},{}]", source.name, source.rows, source.cols, target->rows(), target->cols());
  kernels::dequantize_rows(source, 0, source.rows, target->value.data());
}

void copy_vector(const std::vector<float>& source, Parameter* target) {
  if (source.size() != target->value.size())
    fail("{}: {} values, expected {}", target->name, source.size(), target->value.size());
  target->value = source;
}

void copy_mlp(const MlpWeights& source, const MlpParameters& target) {
  copy_matrix(source.gate_proj, target.gate_proj);
  copy_matrix(source.up_proj, target.up_proj);
  copy_matrix(source.down_proj, target.down_proj);
}

void copy_layer(const LayerWeights& source, LayerParameters& target) {
  copy_vector(source.input_layernorm, target.input_layernorm);
  copy_vector(source.post_attention_layernorm, target.post_attention_layernorm);
  const AttentionWeights& a = source.attention;
  AttentionParameters& t = target.attention;
  if (t.q_a_proj) {
    copy_matrix(a.q_a_proj, t.q_a_proj);
    copy_vector(a.q_a_layernorm, t.q_a_layernorm);
    copy_matrix(a.q_b_proj, t.q_b_proj);
  } else {
    copy_matrix(a.q_proj, t.q_proj);
  }
  copy_matrix(a.kv_a_proj_with_mqa, t.kv_a_proj_with_mqa);
  copy_vector(a.kv_a_layernorm, t.kv_a_layernorm);
  copy_matrix(a.kv_b_proj, t.kv_b_proj);
  copy_matrix(a.o_proj, t.o_proj);
  if (target.moe) {
    copy_matrix(source.moe->router, target.moe->router);
    target.moe->e_score_correction_bias = source.moe->e_score_correction_bias;
    for (std::size_t e = 0; e < target.moe->experts.size(); ++e) copy_mlp(source.moe->experts[e], target.moe->experts[e]);
    if (target.moe->shared_experts) copy_mlp(*source.moe->shared_experts, *target.moe->shared_experts);
  } else {
    copy_mlp(*source.mlp, *target.mlp);
  }
}

// The MTP module reads the main embedding and head; a checkpoint whose copies differ cannot be
// trained with them shared, and silently picking one would change the model.
void require_same(const Matrix& copy, const Parameter& main) {
  std::vector<float> values(static_cast<std::size_t>(copy.rows * copy.cols));
  kernels::dequantize_rows(copy, 0, copy.rows, values.data());
  if (values != main.value)
    fail("{} differs from {}: training shares the MTP module's embedding and head with the main model", copy.name,
         main.name);
}

}  // namespace

Matrix Parameter::matrix() const {
  Matrix m;
  m.name = name;
  m.dtype = DType::F32;
  m.rows = rows();
  m.cols = cols();
  m.data = reinterpret_cast<const std::byte*>(value.data());
  return m;
}

TrainableModel::TrainableModel(const ModelConfig& c) : config(c) {
  // DeepSeek-V3 checkpoints have a separate lm_head; a tied head would need its gradient summed
  // into the embedding, which nothing here does yet.
  if (c.tie_word_embeddings) fail("training: tie_word_embeddings = true is not supported");
  Builder(*this).build();
}

TrainableModel TrainableModel::from_weights(const Weights& weights) {
  TrainableModel model(weights.config);
  copy_matrix(weights.embed_tokens, model.embed_tokens);
  for (std::size_t i = 0; i < model.layers.size(); ++i) copy_layer(weights.layers[i], model.layers[i]);
  copy_vector(weights.norm, model.norm);
  copy_matrix(weights.lm_head, model.lm_head);
  for (std::size_t d = 0; d < model.mtp.size(); ++d) {
    const MtpWeights& source = weights.mtp[d];
    MtpParameters& target = model.mtp[d];
    copy_vector(source.enorm, target.enorm);
    copy_vector(source.hnorm, target.hnorm);
    copy_matrix(source.eh_proj, target.eh_proj);
    copy_layer(source.layer, target.layer);
    copy_vector(source.shared_head_norm, target.shared_head_norm);
    require_same(source.embed_tokens, *model.embed_tokens);
    require_same(source.shared_head_head, *model.lm_head);
  }
  return model;
}

TrainableModel TrainableModel::initialise(const ModelConfig& config, std::uint64_t seed, float std) {
  TrainableModel model(config);
  std::mt19937_64 generator(seed);
  std::normal_distribution<float> normal(0.0f, std);
  for (auto& [name, p] : model.parameters) {
    if (p.shape.size() == 1) {
      std::fill(p.value.begin(), p.value.end(), 1.0f);  // norm weights
    } else {
      for (float& v : p.value) v = normal(generator);
    }
  }
  return model;
}

Parameter& TrainableModel::parameter(const std::string& name) {
  auto it = parameters.find(name);
  if (it == parameters.end()) fail("{}: no such parameter in this model", name);
  return it->second;
}

void TrainableModel::zero_gradients() {
  for (auto& [name, p] : parameters) std::fill(p.grad.begin(), p.grad.end(), 0.0f);
}

}  // namespace dsv3::train
