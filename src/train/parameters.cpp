#include <algorithm>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/ops.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

using Kind = CheckpointTensor::Kind;
using Role = CheckpointTensor::Role;
using Mlp = CheckpointTensor::Mlp;

// The field of `model` that tensor `t` fills (make_room first): a Parameter pointer, or the router
// bias, which steers the choice of experts and gets no gradient.
struct Slot {
  Parameter** parameter = nullptr;
  std::vector<float>* values = nullptr;
};
Slot slot_of(TrainableModel& model, const CheckpointTensor& t) {
  MtpParameters* mtp = t.mtp_depth >= 0 ? &model.mtp[t.mtp_depth] : nullptr;
  LayerParameters* layer = mtp ? &mtp->layer : t.layer >= 0 ? &model.layers[t.layer] : nullptr;
  MoeParameters* moe = layer && layer->moe ? &*layer->moe : nullptr;
  MlpParameters* mlp = t.mlp == Mlp::dense            ? &*layer->mlp
                       : t.mlp == Mlp::shared_experts ? &*moe->shared_experts
                       : t.mlp == Mlp::routed_expert  ? &moe->experts[t.expert]
                                                      : nullptr;
  switch (t.role) {
    case Role::embed_tokens: return {&model.embed_tokens};
    case Role::norm: return {&model.norm};
    case Role::lm_head: return {&model.lm_head};
    case Role::input_layernorm: return {&layer->input_layernorm};
    case Role::post_attention_layernorm: return {&layer->post_attention_layernorm};
    case Role::q_a_proj: return {&layer->attention.q_a_proj};
    case Role::q_a_layernorm: return {&layer->attention.q_a_layernorm};
    case Role::q_b_proj: return {&layer->attention.q_b_proj};
    case Role::q_proj: return {&layer->attention.q_proj};
    case Role::kv_a_proj_with_mqa: return {&layer->attention.kv_a_proj_with_mqa};
    case Role::kv_a_layernorm: return {&layer->attention.kv_a_layernorm};
    case Role::kv_b_proj: return {&layer->attention.kv_b_proj};
    case Role::o_proj: return {&layer->attention.o_proj};
    case Role::router: return {&moe->router};
    case Role::router_bias: return {nullptr, &moe->e_score_correction_bias};
    case Role::gate_proj: return {&mlp->gate_proj};
    case Role::up_proj: return {&mlp->up_proj};
    case Role::down_proj: return {&mlp->down_proj};
    case Role::enorm: return {&mtp->enorm};
    case Role::hnorm: return {&mtp->hnorm};
    case Role::eh_proj: return {&mtp->eh_proj};
    case Role::shared_head_norm: return {&mtp->shared_head_norm};
    case Role::shared_head_head:
    case Role::mtp_embed_tokens:
      break;  // copies of the main embedding and head: the same Parameters, no slot of their own
  }
  fail("{}: no trainable parameter (a copy of {})", t.name, t.copy_of);
}

// A matrix widened to float32, every row looked up as the embedding op does.
void widen(const Matrix& source, float* out) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(source.rows));
  for (std::int64_t r = 0; r < source.rows; ++r) rows[static_cast<std::size_t>(r)] = r;
  kernels::default_backend().embedding(source, rows, kernels::Tensor(out, source.rows, source.cols));
}

void copy_matrix(const Matrix& source, Parameter* target) {
  if (source.rows != target->rows() || source.cols != target->cols())
    fail("{}: shape [{},{}], expected [{},{}]", source.name, source.rows, source.cols, target->rows(), target->cols());
  widen(source, target->value.data());
}

void copy_vector(const std::vector<float>& source, Parameter* target) {
  if (source.size() != target->value.size())
    fail("{}: {} values, expected {}", target->name, source.size(), target->value.size());
  target->value = source;
}

// The MTP module reads the main embedding and head; a checkpoint whose copies differ cannot be
// trained with them shared, and silently picking one would change the model.
void require_same(const Matrix& copy, const Parameter& main) {
  std::vector<float> values(static_cast<std::size_t>(copy.rows * copy.cols));
  widen(copy, values.data());
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
  m.data = reinterpret_cast<const std::byte*>(fp8_gemm ? gemm_value.data() : value.data());
  m.fp8_input_tiles = fp8_gemm;
  return m;
}

Weights TrainableModel::weights() {
  for (auto& [name, p] : parameters) {
    if (!p.fp8_gemm) {
      p.gemm_value.clear();
      continue;
    }
    p.gemm_value.resize(p.value.size());
    fp8_quantize_dequantize(p.value.data(), p.rows(), p.cols(), kFp8Tile, kFp8Tile, p.gemm_value.data());
  }
  return Weights::assemble(
      config,
      [&](const CheckpointTensor& t) { return t.copy_of.empty() ? parameter(t.name).matrix() : Matrix{}; },
      [&](const CheckpointTensor& t) {
        const Slot slot = slot_of(*this, t);
        return slot.values ? *slot.values : (*slot.parameter)->value;
      });
}

TrainableModel::TrainableModel(const ModelConfig& c) : config(c) {
  // DeepSeek-V3 checkpoints have a separate lm_head; a tied head would need its gradient summed
  // into the embedding, which nothing here does yet.
  if (c.tie_word_embeddings) fail("training: tie_word_embeddings = true is not supported");
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    if (!t.copy_of.empty()) continue;  // the MTP module shares the main embedding and head
    make_room(*this, t);
    const Slot slot = slot_of(*this, t);
    if (slot.values) {
      slot.values->assign(static_cast<std::size_t>(t.numel()), 0.0f);
      continue;
    }
    Parameter& p = parameters[t.name];
    p.name = t.name;
    p.shape = t.shape;
    p.value.assign(static_cast<std::size_t>(t.numel()), 0.0f);
    p.grad.assign(p.value.size(), 0.0f);
    *slot.parameter = &p;
  }
}

TrainableModel TrainableModel::from_weights(const Weights& weights) {
  TrainableModel model(weights.config);
  for (const CheckpointTensor& t : checkpoint_layout(weights.config)) {
    const Weights::Slot source = weights.slot(t);
    if (!t.copy_of.empty()) {
      require_same(*source.matrix, model.parameter(t.copy_of));  // the table lists the original first
    } else if (t.kind == Kind::router_bias) {
      *slot_of(model, t).values = *source.vector;
    } else if (source.matrix) {
      copy_matrix(*source.matrix, &model.parameter(t.name));
    } else {
      copy_vector(*source.vector, &model.parameter(t.name));
    }
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
