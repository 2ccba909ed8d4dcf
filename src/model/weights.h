#pragma once
// Weights: the tensors of a DeepSeek-V3 checkpoint as typed views, checked once against the
// config. Matrices stay in the mapped files in their storage dtype (BF16, F16, F32 or FP8 with
// block scales); norm vectors and the router bias are small and copied to float32.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "io/checkpoint_layout.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/shard.h"

namespace dsv3 {
namespace kernels {
class Backend;
}

struct AttentionWeights {
  // q path: q_a_proj -> q_a_layernorm -> q_b_proj when q_lora_rank is set, else one q_proj.
  Matrix q_a_proj;                   // [q_lora_rank, hidden]
  std::vector<float> q_a_layernorm;  // [q_lora_rank]
  Matrix q_b_proj;                   // [heads * qk_head_dim, q_lora_rank]
  Matrix q_proj;                     // [heads * qk_head_dim, hidden]
  Matrix kv_a_proj_with_mqa;         // [kv_lora_rank + qk_rope_head_dim, hidden]
  std::vector<float> kv_a_layernorm; // [kv_lora_rank]
  Matrix kv_b_proj;                  // [heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  Matrix o_proj;                     // [hidden, heads * v_head_dim]
};

struct MoeWeights {
  Matrix router;                              // mlp.gate.weight [n_routed_experts, hidden]
  std::vector<float> e_score_correction_bias; // used only to choose experts
  // One per physical expert copy (shard.h): in one process, the routed experts in order; across
  // ranks, every rank's copies, those held elsewhere empty.
  std::vector<MlpWeights> experts;
  ExpertCopies copies;  // empty in one process: copy e is expert e
  std::optional<MlpWeights> shared_experts;
};

struct LayerWeights {
  std::vector<float> input_layernorm;
  std::vector<float> post_attention_layernorm;
  AttentionWeights attention;
  std::optional<MlpWeights> mlp;  // dense layers
  std::optional<MoeWeights> moe;  // MoE layers
};

// Multi-Token Prediction module at layer index num_hidden_layers + depth.
struct MtpWeights {
  std::vector<float> enorm;
  std::vector<float> hnorm;
  Matrix eh_proj;  // [hidden, 2 * hidden]
  LayerWeights layer;
  std::vector<float> shared_head_norm;
  Matrix shared_head_head;  // the main lm_head in the released checkpoints
  Matrix embed_tokens;      // the main embedding in the released checkpoints
};

struct Weights {
  ModelConfig config;
  TensorStore store;  // owns the mappings every Matrix points into
  Matrix embed_tokens;
  std::vector<LayerWeights> layers;
  std::vector<float> norm;
  Matrix lm_head;
  std::vector<MtpWeights> mtp;
  // This rank's part (whole in one process): cut_weights (shard.h) cut the matrices to it.
  Shard shard;

  // Loads config.json and the safetensors of a model directory, checking every tensor of
  // checkpoint_layout(config): present, a supported dtype, the expected shape (errors name tensor
  // and file). The MTP modules' copies of the embedding and head may be absent (the originals
  // serve); with tie_word_embeddings the head is the embedding.
  static Weights load(const std::filesystem::path& model_dir);
  static Weights load(ModelConfig config, TensorStore store);
  // Weights from elsewhere than files (training's parameters): each tensor of
  // checkpoint_layout(config) from `matrix` or `vector`; an empty matrix for an MTP copy of the
  // embedding or head means the original serves. The matrices stay views of what they point into.
  static Weights assemble(ModelConfig config, const std::function<Matrix(const CheckpointTensor&)>& matrix,
                          const std::function<std::vector<float>(const CheckpointTensor&)>& vector);

  // Where tensor `t` of checkpoint_layout(config) was loaded: a matrix, or a vector for norms and
  // router biases.
  struct Slot {
    const Matrix* matrix = nullptr;
    const std::vector<float>* vector = nullptr;
  };
  Slot slot(const CheckpointTensor& t) const;
};

// The output head, and the MTP modules' stored copies of it, re-quantised to FP8 E4M3 with 128 x
// 128 block scales, as DeepSeek's FP8 checkpoints store every other linear (they keep the head
// BF16). Opt-in (`--head-fp8`): it halves the bytes a decode step streams for the head (bench-1b:
// 265 of a step's 412 MB in FP8) at the cost of the head's rounding. Heads already FP8, or F32
// (training's), are left alone; the source's mapped pages are given back.
void quantize_output_heads_fp8(Weights& weights);
// Whether the commands that load a model for inference do that: set by --head-fp8, first read from
// DSV3_HEAD_FP8 (1 or 0) so that ranks and child processes agree.
bool output_heads_fp8();
void set_output_heads_fp8(bool fp8);

// Lets the backend keep the weights a decode step reads with every row of its batch in its kernels'
// own order as well (Backend::prepare_decode_weight: on the CPU in fast mode with AVX512-BF16, a
// BF16 weight in pair tiles, which a batch's rows read in one pass): the output head, the widest,
// the main layers' dense linears (attention's projections, dense MLPs, shared experts) and their
// kv_b_proj, for the absorbed attention's products (Backend::prepare_absorb_weight); the routed
// experts, read by a row or two each, stay as they are. Returns the bytes of
// those copies (0: none), which the weights keep besides their own (prefill's GEMM reads those).
// The MTP modules are left as they are: a draft step reads them with few rows, and the copies
// would cost memory for a module that may never run. DSV3_DECODE_TILES=head tiles the head alone,
// =0 nothing (the memory, or a comparison in the same build).
std::size_t prepare_decode_weights(Weights& weights, const kernels::Backend& backend);
// The bytes of the copies prepare_decode_weights made.
std::size_t decode_copy_bytes(const Weights& weights);

}  // namespace dsv3
