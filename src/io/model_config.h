#pragma once
// ModelConfig: the Hugging Face config.json of a deepseek_v3 model as a plain struct, every key
// validated once at load. Code never re-reads JSON.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dsv3 {

struct RopeScaling {
  bool yarn = false;  // false: plain RoPE (rope_scaling absent or null)
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> attention_factor;
};

struct QuantizationConfig {
  bool fp8 = false;  // quant_method "fp8", fmt "e4m3", block-scaled weights
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t moe_intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::optional<std::int64_t> q_lora_rank;  // null: a plain q_proj (Moonlight, DeepSeek-V2-Lite)
  std::int64_t kv_lora_rank = 0;
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  std::int64_t n_routed_experts = 0;
  std::int64_t n_shared_experts = 0;
  std::int64_t num_experts_per_tok = 0;
  std::int64_t n_group = 1;
  std::int64_t topk_group = 1;
  std::int64_t first_k_dense_replace = 0;
  std::int64_t moe_layer_freq = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_interleave = true;  // absent in the released configs, which rotate interleaved pairs
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  std::int64_t num_nextn_predict_layers = 0;
  std::int64_t bos_token_id = 0;
  std::vector<std::int64_t> eos_token_ids;
  bool tie_word_embeddings = false;
  QuantizationConfig quantization;
  std::string torch_dtype = "bfloat16";

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(std::int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // DeepSeek-V3's softmax scale: 1/sqrt(qk_head_dim), times mscale^2 under YaRN with mscale_all_dim.
  double softmax_scale() const;

  // `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  static ModelConfig load(const std::filesystem::path& path);  // a config.json or a model directory
  nlohmann::json to_json() const;  // the Hugging Face keys, loadable by transformers
};

// YaRN's attention temperature, 0.1 * mscale * ln(scale) + 1 for scale > 1 (DeepSeek's yarn_get_mscale).
double yarn_get_mscale(double scale, double mscale);

}  // namespace dsv3
