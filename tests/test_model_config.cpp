// ModelConfig from config.json: the fixture and the real published shapes load with the right
// fields, parameter counts match the papers, unsupported values fail at load naming the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"
#include "model/model.h"
#include "support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

fs::path bench_config(const std::string& name) { return test::shared_dir() / "bench" / (name + ".json"); }

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// The error from_json raises for the fixture's config with `edit` applied.
template <typename Edit>
std::string edited_config_error(Edit&& edit) {
  json config = read_json(test::tiny_model_dir() / "config.json");
  edit(config);
  return test::error_message([&] { ModelConfig::from_json(config, "edited/config.json"); });
}

void expect_equal(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.kv_lora_rank, b.kv_lora_rank);
  EXPECT_EQ(a.qk_nope_head_dim, b.qk_nope_head_dim);
  EXPECT_EQ(a.qk_rope_head_dim, b.qk_rope_head_dim);
  EXPECT_EQ(a.v_head_dim, b.v_head_dim);
  EXPECT_EQ(a.n_routed_experts, b.n_routed_experts);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.n_group, b.n_group);
  EXPECT_EQ(a.topk_group, b.topk_group);
  EXPECT_EQ(a.first_k_dense_replace, b.first_k_dense_replace);
  EXPECT_EQ(a.moe_layer_freq, b.moe_layer_freq);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.yarn, b.rope_scaling.yarn);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rope_scaling.beta_fast, b.rope_scaling.beta_fast);
  EXPECT_EQ(a.rope_scaling.beta_slow, b.rope_scaling.beta_slow);
  EXPECT_EQ(a.rope_scaling.mscale, b.rope_scaling.mscale);
  EXPECT_EQ(a.rope_scaling.mscale_all_dim, b.rope_scaling.mscale_all_dim);
  EXPECT_EQ(a.rope_scaling.attention_factor, b.rope_scaling.attention_factor);
  EXPECT_EQ(a.rope_interleave, b.rope_interleave);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.num_nextn_predict_layers, b.num_nextn_predict_layers);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.quantization.fp8, b.quantization.fp8);
  EXPECT_EQ(a.quantization.block_rows, b.quantization.block_rows);
  EXPECT_EQ(a.quantization.block_cols, b.quantization.block_cols);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

TEST(ModelConfig, TinyFixture) {
  const ModelConfig c = ModelConfig::load(test::tiny_model_dir());
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.q_lora_rank, 96);
  EXPECT_EQ(c.kv_lora_rank, 64);
  EXPECT_EQ(c.qk_head_dim(), 48);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 256);
  EXPECT_EQ(c.rope_scaling.mscale_all_dim, 1.0);
  EXPECT_FALSE(c.rope_scaling.attention_factor.has_value());
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{1});
  EXPECT_FALSE(c.quantization.fp8);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(3));  // the MTP layer
  // 1/sqrt(48) x (0.1 ln 4 + 1)^2: YaRN's mscale_all_dim scales the softmax.
  const double mscale = 0.1 * std::log(4.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), mscale * mscale / std::sqrt(48.0), 1e-12);
  // The same file named directly loads the same config.
  expect_equal(ModelConfig::load(test::tiny_model_dir() / "config.json"), c);
}

TEST(ModelConfig, Bench1b) {
  const ModelConfig c = ModelConfig::load(bench_config("bench-1b"));
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.q_lora_rank, 384);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  const ParameterCount count = count_parameters(c);
  // bench/README.md: ~1.16B + MTP.
  EXPECT_NEAR(static_cast<double>(count.total), 1.165e9, 0.01e9);
}

TEST(ModelConfig, MoonlightHasNoQLoraOneGroupAndNoRopeScaling) {
  const ModelConfig c = ModelConfig::load(bench_config("moonlight-16b-a3b"));
  EXPECT_FALSE(c.q_lora_rank.has_value());
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_FALSE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.rope_theta, 50000.0);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.446);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.vocab_size, 163840);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_EQ(c.bos_token_id, 163584);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{163586});
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-15);
}

TEST(ModelConfig, DeepSeekV3HasFp8BlockQuantisation) {
  const ModelConfig c = ModelConfig::load(bench_config("deepseek-v3-671b"));
  EXPECT_TRUE(c.quantization.fp8);
  EXPECT_EQ(c.quantization.block_rows, 128);
  EXPECT_EQ(c.quantization.block_cols, 128);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // an integer in the file
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_TRUE(c.rope_interleave);
}

// DeepSeek-V3 technical report (arXiv 2412.19437): "671B total parameters with 37B activated for
// each token"; the Hugging Face card adds "14B Multi-Token Prediction (MTP) Module weights". The
// 671B counts the embedding and the output head; so does 37B, to within 1.5%.
TEST(ModelConfig, DeepSeekV3ParameterCountsMatchThePaper) {
  const ParameterCount count = count_parameters(ModelConfig::load(bench_config("deepseek-v3-671b")));
  std::printf("DeepSeek-V3: total %.3fB, activated %.3fB, embedding+head %.3fB, MTP own %.3fB\n",
              count.total / 1e9, count.activated / 1e9, count.embedding / 1e9, count.mtp / 1e9);
  EXPECT_NEAR(static_cast<double>(count.total), 671e9, 0.01 * 671e9);
  EXPECT_NEAR(static_cast<double>(count.activated), 37e9, 0.02 * 37e9);
  EXPECT_EQ(count.embedding, 2ll * 129280 * 7168);
  // 58 MoE layers of 256 routed experts, 3 x 7168 x 2048 each.
  EXPECT_EQ(count.routed_expert_total, 58ll * 256 * 3 * 7168 * 2048);
  // The MTP module is one more MoE layer plus eh_proj and norms (~11.6B); with its copies of the
  // embedding and head, as the released checkpoint stores them, it makes the card's 14B.
  EXPECT_NEAR(static_cast<double>(count.mtp + count.embedding), 14e9, 0.05 * 14e9);
}

TEST(ModelConfig, MoonlightParameterCounts) {
  const ParameterCount count = count_parameters(ModelConfig::load(bench_config("moonlight-16b-a3b")));
  std::printf("Moonlight: total %.3fB, activated %.3fB\n", count.total / 1e9, count.activated / 1e9);
  EXPECT_NEAR(static_cast<double>(count.total), 16e9, 0.02 * 16e9);
  EXPECT_NEAR(static_cast<double>(count.activated), 3e9, 0.05 * 3e9);
  EXPECT_EQ(count.mtp, 0);
}

TEST(ModelConfig, RopeInterleaveDefaultsTrueAndCanBeTurnedOff) {
  json config = read_json(test::tiny_model_dir() / "config.json");
  ASSERT_FALSE(config.contains("rope_interleave"));
  EXPECT_TRUE(ModelConfig::from_json(config).rope_interleave);
  config["rope_interleave"] = false;
  const ModelConfig off = ModelConfig::from_json(config);
  EXPECT_FALSE(off.rope_interleave);
  EXPECT_FALSE(ModelConfig::from_json(off.to_json()).rope_interleave);
}

TEST(ModelConfig, ToJsonRoundTrips) {
  for (const fs::path& path : {test::tiny_model_dir() / "config.json", bench_config("bench-1b"),
                               bench_config("moonlight-16b-a3b"), bench_config("deepseek-v3-671b")}) {
    SCOPED_TRACE(path.string());
    const ModelConfig original = ModelConfig::load(path);
    expect_equal(ModelConfig::from_json(original.to_json()), original);
    // Through text too, as a written config.json is read back.
    expect_equal(ModelConfig::from_json(json::parse(original.to_json().dump())), original);
  }
  json config = read_json(test::tiny_model_dir() / "config.json");
  config["eos_token_id"] = {1, 7};
  config["rope_scaling"]["attention_factor"] = 0.75;
  const ModelConfig varied = ModelConfig::from_json(config);
  EXPECT_EQ(varied.eos_token_ids, (std::vector<std::int64_t>{1, 7}));
  expect_equal(ModelConfig::from_json(varied.to_json()), varied);
}

struct Unsupported {
  std::string key;     // what the message must name
  std::string value;   // the value written, as JSON text
  std::string within;  // the object the key lives in ("" for the top level)
};

TEST(ModelConfig, UnsupportedValuesFailNamingTheKey) {
  const std::vector<Unsupported> cases = {
      {"scoring_func", R"("softmax")", ""},
      {"topk_method", R"("greedy")", ""},
      {"hidden_act", R"("gelu")", ""},
      {"model_type", R"("llama")", ""},
      {"attention_bias", "true", ""},
      {"hidden_size", R"("256")", ""},
      {"num_hidden_layers", "3.5", ""},
      {"num_hidden_layers", "1e30", ""},
      {"norm_topk_prob", "1", ""},
      {"routed_scaling_factor", R"("2.5")", ""},
      {"vocab_size", "-4", ""},
      {"qk_rope_head_dim", "15", ""},
      {"topk_group", "5", ""},
      {"num_experts_per_tok", "9", ""},
      {"rope_scaling.type", R"("linear")", "rope_scaling"},
      {"quantization_config.quant_method", R"("gptq")", "quantization_config"},
      {"quantization_config.fmt", R"("e5m2")", "quantization_config"},
      {"quantization_config.weight_block_size", "[128]", "quantization_config"},
  };
  for (const auto& [key, value, within] : cases) {
    const std::string message = edited_config_error([&](json& config) {
      const std::string leaf = within.empty() ? key : key.substr(within.size() + 1);
      if (within == "quantization_config")
        config[within] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}};
      (within.empty() ? config : config[within])[leaf] = json::parse(value);
    });
    EXPECT_THAT(message, AllOf(HasSubstr("edited/config.json"), HasSubstr(key))) << key << " = " << value;
  }
}

TEST(ModelConfig, MissingRequiredKeyAndBadGrouping) {
  EXPECT_THAT(edited_config_error([](json& config) { config.erase("hidden_size"); }),
              AllOf(HasSubstr("edited/config.json"), HasSubstr("missing required key hidden_size")));
  EXPECT_THAT(edited_config_error([](json& config) { config["n_group"] = 3; }),
              AllOf(HasSubstr("n_routed_experts = 16 is not divisible by n_group = 3")));
  EXPECT_THAT(edited_config_error([](json& config) { config["rope_scaling"] = "yarn"; }),
              AllOf(HasSubstr("edited/config.json"), HasSubstr("rope_scaling")));
  EXPECT_THAT(test::error_message([] { ModelConfig::from_json(json::array({1, 2}), "list.json"); }),
              AllOf(HasSubstr("list.json"), HasSubstr("not a JSON object")));
}

TEST(ModelConfig, MalformedOrMissingFileIsNamed) {
  const fs::path dir = test::temp_dir("config");
  std::ofstream(dir / "config.json") << R"({"vocab_size": 1024, "hidden_size": )";
  EXPECT_THAT(test::error_message([&] { ModelConfig::load(dir); }),
              AllOf(HasSubstr((dir / "config.json").string()), HasSubstr("malformed JSON")));
  EXPECT_THAT(test::error_message([&] { ModelConfig::load(dir / "absent.json"); }),
              AllOf(HasSubstr((dir / "absent.json").string()), HasSubstr("cannot open")));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv3
