#include "io/model_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv3 {
namespace {

using json = nlohmann::json;

class Reader {
 public:
  Reader(const json& root, std::string source) : root_(root), source_(std::move(source)) {}

  const json* find(const char* key) const {
    const auto it = root_.find(key);
    return it == root_.end() ? nullptr : &*it;
  }

  std::int64_t integer(const char* key, std::optional<std::int64_t> fallback = std::nullopt,
                       std::int64_t minimum = 0) const {
    const json* value = find(key);
    if (!value || value->is_null()) {
      if (!fallback) fail("{}: missing required key {}", source_, key);
      return *fallback;
    }
    // 2^63 bounds the floats that convert to int64 without undefined behaviour.
    if (!value->is_number_integer() &&
        !(value->is_number_float() && std::floor(value->get<double>()) == value->get<double>() &&
          std::abs(value->get<double>()) < 9223372036854775808.0))
      fail("{}: {} must be an integer, got {}", source_, key, value->dump());
    const auto result = value->is_number_integer() ? value->get<std::int64_t>()
                                                   : static_cast<std::int64_t>(value->get<double>());
    if (result < minimum) fail("{}: {} = {} must be at least {}", source_, key, result, minimum);
    return result;
  }

  double number(const char* key, double fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_number()) fail("{}: {} must be a number, got {}", source_, key, value->dump());
    return value->get<double>();
  }

  bool boolean(const char* key, bool fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_boolean()) fail("{}: {} must be true or false, got {}", source_, key, value->dump());
    return value->get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_string()) fail("{}: {} must be a string, got {}", source_, key, value->dump());
    return value->get<std::string>();
  }

  const std::string& source() const { return source_; }

 private:
  const json& root_;
  std::string source_;
};

RopeScaling read_rope_scaling(const json* value, std::int64_t max_position_embeddings,
                              const std::string& source) {
  RopeScaling rope;
  if (!value || value->is_null()) return rope;
  if (!value->is_object()) fail("{}: rope_scaling must be an object or null", source);
  const Reader reader(*value, source + ": rope_scaling");
  std::string type = reader.string("type", reader.string("rope_type", ""));
  if (type == "default" || type.empty()) return rope;
  if (type != "yarn")
    fail("{}: rope_scaling.type = \"{}\" is not supported (only \"yarn\" or no scaling)", source, type);
  rope.yarn = true;
  rope.factor = reader.number("factor", 1.0);
  if (rope.factor <= 0) fail("{}: rope_scaling.factor must be positive", source);
  rope.original_max_position_embeddings =
      reader.integer("original_max_position_embeddings", max_position_embeddings, 1);
  rope.beta_fast = reader.number("beta_fast", 32.0);
  rope.beta_slow = reader.number("beta_slow", 1.0);
  if (const json* m = value->contains("mscale") ? &(*value)["mscale"] : nullptr; m && !m->is_null())
    rope.mscale = reader.number("mscale", 1.0);
  if (value->contains("mscale_all_dim") && !(*value)["mscale_all_dim"].is_null())
    rope.mscale_all_dim = reader.number("mscale_all_dim", 0.0);
  if (value->contains("attention_factor") && !(*value)["attention_factor"].is_null())
    rope.attention_factor = reader.number("attention_factor", 1.0);
  return rope;
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope_scaling.yarn && rope_scaling.mscale_all_dim && *rope_scaling.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(rope_scaling.factor, *rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

ModelConfig ModelConfig::from_json(const json& root, const std::string& source) {
  if (!root.is_object()) fail("{}: not a JSON object", source);
  const Reader r(root, source);
  ModelConfig c;
  c.model_type = r.string("model_type", "deepseek_v3");
  if (c.model_type != "deepseek_v3" && c.model_type != "kimi_k2")
    fail("{}: model_type = \"{}\" is not a DeepSeek-V3-architecture model (expected deepseek_v3)", source,
         c.model_type);
  c.vocab_size = r.integer("vocab_size", std::nullopt, 1);
  c.hidden_size = r.integer("hidden_size", std::nullopt, 1);
  c.intermediate_size = r.integer("intermediate_size", std::nullopt, 1);
  c.num_hidden_layers = r.integer("num_hidden_layers", std::nullopt, 1);
  c.num_attention_heads = r.integer("num_attention_heads", std::nullopt, 1);
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads, 1);
  if (const json* q = r.find("q_lora_rank"); q && !q->is_null()) c.q_lora_rank = r.integer("q_lora_rank", {}, 1);
  c.kv_lora_rank = r.integer("kv_lora_rank", std::nullopt, 1);
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim", std::nullopt, 0);
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim", std::nullopt, 0);
  c.v_head_dim = r.integer("v_head_dim", std::nullopt, 1);
  if (c.qk_rope_head_dim % 2 != 0) fail("{}: qk_rope_head_dim = {} must be even", source, c.qk_rope_head_dim);
  if (c.qk_head_dim() == 0) fail("{}: qk_nope_head_dim + qk_rope_head_dim must be positive", source);

  c.n_routed_experts = r.integer("n_routed_experts", 0, 0);
  c.first_k_dense_replace = r.integer("first_k_dense_replace", 0, 0);
  c.moe_layer_freq = r.integer("moe_layer_freq", 1, 1);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = r.integer("moe_intermediate_size", std::nullopt, 1);
    c.n_shared_experts = r.integer("n_shared_experts", 0, 0);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", std::nullopt, 1);
    c.n_group = r.integer("n_group", 1, 1);
    c.topk_group = r.integer("topk_group", c.n_group, 1);
    c.routed_scaling_factor = r.number("routed_scaling_factor", 1.0);
    c.norm_topk_prob = r.boolean("norm_topk_prob", true);
    if (c.n_routed_experts % c.n_group != 0)
      fail("{}: n_routed_experts = {} is not divisible by n_group = {}", source, c.n_routed_experts, c.n_group);
    if (c.topk_group > c.n_group)
      fail("{}: topk_group = {} exceeds n_group = {}", source, c.topk_group, c.n_group);
    const std::int64_t group_size = c.n_routed_experts / c.n_group;
    if (c.n_group > 1 && group_size < 2)
      fail("{}: group-limited routing needs at least 2 experts per group (n_routed_experts / n_group = {})",
           source, group_size);
    if (c.num_experts_per_tok > c.topk_group * group_size)
      fail("{}: num_experts_per_tok = {} exceeds the {} experts in topk_group = {} groups", source,
           c.num_experts_per_tok, c.topk_group * group_size, c.topk_group);
    const std::string scoring = r.string("scoring_func", "sigmoid");
    if (scoring != "sigmoid")
      fail("{}: scoring_func = \"{}\" is not supported (DeepSeek-V3 uses \"sigmoid\")", source, scoring);
    const std::string topk_method = r.string("topk_method", "noaux_tc");
    if (topk_method != "noaux_tc")
      fail("{}: topk_method = \"{}\" is not supported (DeepSeek-V3 uses \"noaux_tc\")", source, topk_method);
  }
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act = \"{}\" is not supported (only \"silu\")", source, act);
  if (r.boolean("attention_bias", false)) fail("{}: attention_bias = true is not supported", source);

  c.rope_theta = r.number("rope_theta", 10000.0);
  if (c.rope_theta <= 0) fail("{}: rope_theta must be positive", source);
  c.max_position_embeddings = r.integer("max_position_embeddings", 4096, 1);
  c.rope_scaling = read_rope_scaling(r.find("rope_scaling"), c.max_position_embeddings, source);
  c.rope_interleave = r.boolean("rope_interleave", true);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", 0, 0);
  c.bos_token_id = r.integer("bos_token_id", 0, 0);
  if (const json* eos = r.find("eos_token_id"); eos && eos->is_array()) {
    for (const auto& id : *eos) {
      if (!id.is_number_integer()) fail("{}: eos_token_id must hold integers", source);
      c.eos_token_ids.push_back(id.get<std::int64_t>());
    }
  } else {
    c.eos_token_ids.push_back(r.integer("eos_token_id", 1, 0));
  }
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", "bfloat16"));

  if (const json* q = r.find("quantization_config"); q && !q->is_null()) {
    if (!q->is_object()) fail("{}: quantization_config must be an object", source);
    const Reader qr(*q, source + ": quantization_config");
    const std::string method = qr.string("quant_method", "");
    if (method != "fp8")
      fail("{}: quantization_config.quant_method = \"{}\" is not supported (only \"fp8\")", source, method);
    const std::string format = qr.string("fmt", "e4m3");
    if (format != "e4m3")
      fail("{}: quantization_config.fmt = \"{}\" is not supported (only \"e4m3\")", source, format);
    c.quantization.fp8 = true;
    if (const json* block = qr.find("weight_block_size"); block && !block->is_null()) {
      if (!block->is_array() || block->size() != 2 || !(*block)[0].is_number_integer() ||
          !(*block)[1].is_number_integer() || (*block)[0].get<std::int64_t>() <= 0 ||
          (*block)[1].get<std::int64_t>() <= 0)
        fail("{}: quantization_config.weight_block_size must be two positive integers", source);
      c.quantization.block_rows = (*block)[0].get<std::int64_t>();
      c.quantization.block_cols = (*block)[1].get<std::int64_t>();
    }
  }
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  std::ifstream in(file);
  if (!in) fail("{}: cannot open", file.string());
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: malformed JSON: {}", file.string(), e.what());
  }
  return from_json(root, file.string());
}

json ModelConfig::to_json() const {
  json j = {
      {"architectures", {"DeepseekV3ForCausalLM"}},
      {"model_type", model_type},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"moe_intermediate_size", moe_intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"q_lora_rank", q_lora_rank ? json(*q_lora_rank) : json(nullptr)},
      {"kv_lora_rank", kv_lora_rank},
      {"qk_nope_head_dim", qk_nope_head_dim},
      {"qk_rope_head_dim", qk_rope_head_dim},
      {"v_head_dim", v_head_dim},
      {"n_routed_experts", n_routed_experts},
      {"n_shared_experts", n_shared_experts},
      {"num_experts_per_tok", num_experts_per_tok},
      {"n_group", n_group},
      {"topk_group", topk_group},
      {"first_k_dense_replace", first_k_dense_replace},
      {"moe_layer_freq", moe_layer_freq},
      {"routed_scaling_factor", routed_scaling_factor},
      {"norm_topk_prob", norm_topk_prob},
      {"scoring_func", "sigmoid"},
      {"topk_method", "noaux_tc"},
      {"hidden_act", "silu"},
      {"rope_theta", rope_theta},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"num_nextn_predict_layers", num_nextn_predict_layers},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids)},
      {"tie_word_embeddings", tie_word_embeddings},
      {"attention_bias", false},
      {"torch_dtype", torch_dtype},
  };
  if (!rope_interleave) j["rope_interleave"] = false;
  if (rope_scaling.yarn) {
    json rope = {{"type", "yarn"},
                 {"factor", rope_scaling.factor},
                 {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
                 {"beta_fast", rope_scaling.beta_fast},
                 {"beta_slow", rope_scaling.beta_slow}};
    if (rope_scaling.mscale) rope["mscale"] = *rope_scaling.mscale;
    if (rope_scaling.mscale_all_dim) rope["mscale_all_dim"] = *rope_scaling.mscale_all_dim;
    if (rope_scaling.attention_factor) rope["attention_factor"] = *rope_scaling.attention_factor;
    j["rope_scaling"] = rope;
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (quantization.fp8)
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {quantization.block_rows, quantization.block_cols}}};
  return j;
}

}  // namespace dsv3
