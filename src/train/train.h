#pragma once
// Training DeepSeek-V3: FP32 master parameters, exact gradients of the training objective, and the
// activation memory they need. The public face of train/ (DESIGN.md).
//
// The objective for one sequence t[0..T-1]:
//   loss_main    = mean_{p=0..T-2} CE(logits[p], t[p+1])
//   loss_mtp     = mean_{p=1..T-3} CE(mtp_logits[p], t[p+2])      (row p of MTP depth 1, see fixtures)
//   loss_balance = alpha * sum over MoE layers of sum_i f_i * P_i   (the paper's sequence-wise loss)
//   total        = loss_main + mtp_weight * loss_mtp + loss_balance
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace dsv3::train {

// One trainable tensor: FP32 values and the gradient accumulated into them.
struct Parameter {
  std::string name;
  std::vector<std::int64_t> shape;  // [rows, cols] or [size]
  std::vector<float> value;
  std::vector<float> grad;

  std::int64_t rows() const { return shape[0]; }
  std::int64_t cols() const { return shape.size() > 1 ? shape[1] : 1; }
  Matrix matrix() const;  // an F32 view of `value` for the kernels
};

struct AttentionParameters {
  Parameter* q_a_proj = nullptr;  // q path when q_lora_rank is set ...
  Parameter* q_a_layernorm = nullptr;
  Parameter* q_b_proj = nullptr;
  Parameter* q_proj = nullptr;  // ... else one q_proj
  Parameter* kv_a_proj_with_mqa = nullptr;
  Parameter* kv_a_layernorm = nullptr;
  Parameter* kv_b_proj = nullptr;
  Parameter* o_proj = nullptr;
};

struct MlpParameters {
  Parameter* gate_proj = nullptr;
  Parameter* up_proj = nullptr;
  Parameter* down_proj = nullptr;
};

struct MoeParameters {
  Parameter* router = nullptr;                // mlp.gate.weight
  std::vector<float> e_score_correction_bias; // steers the choice only; never gets a gradient
  std::vector<MlpParameters> experts;
  std::optional<MlpParameters> shared_experts;
};

struct LayerParameters {
  Parameter* input_layernorm = nullptr;
  Parameter* post_attention_layernorm = nullptr;
  AttentionParameters attention;
  std::optional<MlpParameters> mlp;
  std::optional<MoeParameters> moe;
};

// The MTP module's own weights; its embedding and output head are the main model's (shared, as in
// DeepSeek-V3), so their gradients land in embed_tokens and lm_head.
struct MtpParameters {
  Parameter* enorm = nullptr;
  Parameter* hnorm = nullptr;
  Parameter* eh_proj = nullptr;
  LayerParameters layer;
  Parameter* shared_head_norm = nullptr;
};

class TrainableModel {
 public:
  // Every weight of the checkpoint as FP32 (BF16/F16/FP8 converted). The MTP copies of the
  // embedding and head must equal the main ones, since training shares them.
  static TrainableModel from_weights(const Weights& weights);
  // A freshly initialised model: matrices ~ N(0, std^2), norm weights 1, router bias 0.
  static TrainableModel initialise(const ModelConfig& config, std::uint64_t seed, float std = 0.02f);

  TrainableModel(TrainableModel&&) = default;
  TrainableModel& operator=(TrainableModel&&) = default;
  TrainableModel(const TrainableModel&) = delete;
  TrainableModel& operator=(const TrainableModel&) = delete;

  ModelConfig config;
  std::map<std::string, Parameter> parameters;  // by checkpoint name; owns every tensor below
  Parameter* embed_tokens = nullptr;
  std::vector<LayerParameters> layers;
  Parameter* norm = nullptr;
  Parameter* lm_head = nullptr;
  std::vector<MtpParameters> mtp;

  Parameter& parameter(const std::string& name);  // throws naming the tensor when absent
  void zero_gradients();

 private:
  explicit TrainableModel(const ModelConfig& config);
};

struct ObjectiveOptions {
  double mtp_weight = 0.3;
  double balance_alpha = 0.0;  // 0 reproduces the fixture's loss
};

struct LossReport {
  double main = 0.0;
  double mtp = 0.0;      // unweighted; 0 when there is no MTP module or T < 4
  double balance = 0.0;  // already multiplied by alpha
  double total = 0.0;
  std::int64_t stored_activation_bytes = 0;  // kept from the forward pass for the backward pass
};

// Adds d(total)/d(parameter) for one sequence into every Parameter::grad (call zero_gradients
// first for a fresh gradient) and returns the losses.
LossReport accumulate_gradients(TrainableModel& model, std::span<const std::int64_t> ids,
                                const ObjectiveOptions& options);

// Activation memory of one sequence of `tokens` (MTP included), from the shapes alone.
struct ActivationMemory {
  std::int64_t stored = 0;                     // what accumulate_gradients keeps (recomputing norms etc.)
  std::int64_t norms_and_up_projections = 0;   // what storing the RMSNorm outputs, the MLA up-projections
                                               // (q_b_proj / kv_b_proj outputs) and SwiGLU products would add
  std::int64_t attention_probabilities = 0;    // what storing the causal softmax (not recomputed) would add
};
ActivationMemory activation_memory(const ModelConfig& config, std::int64_t tokens);

}  // namespace dsv3::train
