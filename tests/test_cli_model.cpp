// The `dsv3 info` and `dsv3 forward` commands, run as a user runs them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "model/latent_cache.h"
#include "support.h"

namespace dsv3 {
namespace {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CommandResult run(const std::string& arguments) {
  CommandResult result;
  result.exit_code = test::run_dsv3(arguments, result.output);
  return result;
}

TEST(CliModel, ForwardWritesTheParityContract) {
  const auto dir = test::temp_dir("forward");
  const auto fixture = test::tiny_model_dir();
  const auto result = run("forward --model " + fixture.string() + " --input " +
                          (fixture / "reference.safetensors").string() + " --output " + (dir / "out.safetensors").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto ours = SafetensorsFile::open(dir / "out.safetensors");
  const auto reference = SafetensorsFile::open(fixture / "reference.safetensors");
  int compared = 0;
  for (const auto& [name, view] : reference->tensors()) {
    if (!name.starts_with("logits_") && !name.starts_with("mtp_logits_")) continue;
    SCOPED_TRACE(name);
    ASSERT_TRUE(ours->tensors().contains(name));
    const TensorView& mine = ours->tensors().at(name);
    EXPECT_EQ(mine.dtype, DType::F32);
    EXPECT_EQ(mine.shape, view.shape);
    const auto a = test::read_f32(mine), b = test::read_f32(view);
    const std::int64_t skip = name.starts_with("mtp_") ? view.shape[1] : 0;  // MTP rows p >= 1
    if (static_cast<std::int64_t>(b.size()) > skip) {
      EXPECT_LE(test::relative_l2(a.data() + skip, b.data() + skip, static_cast<std::int64_t>(b.size()) - skip), 1e-3);
    }
    ++compared;
  }
  EXPECT_EQ(compared, 7);  // 4 logits + 3 mtp_logits (T = 1 has no MTP row)
  std::filesystem::remove_all(dir);
}

TEST(CliModel, InfoDescribesTheModel) {
  const auto result = run("info --model " + test::tiny_model_dir().string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("kv_lora_rank 64"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("640.00 B per token"), std::string::npos) << result.output;  // (3+1) x (64+16) x 2
  EXPECT_NE(result.output.find("BF16"), std::string::npos);
  EXPECT_NE(result.output.find("1 module(s)"), std::string::npos);  // MTP present
  const auto v3 = run("info --model " + (test::shared_dir() / "bench" / "deepseek-v3-671b.json").string());
  ASSERT_EQ(v3.exit_code, 0) << v3.output;
  EXPECT_NE(v3.output.find("config only"), std::string::npos) << v3.output;
  EXPECT_NE(v3.output.find("fp8 e4m3"), std::string::npos) << v3.output;
}

// info --ranks N: each rank's heads and vocabulary rows tile the model; DeepSeek-V3's FP8
// checkpoint cuts over 16 ranks but not 32 (its shared expert's 2048 columns are 16 scale blocks).
TEST(CliModel, InfoRanksShowsEachRanksPart) {
  const auto tiny = run("info --model " + test::tiny_model_dir().string() + " --ranks 3");
  ASSERT_EQ(tiny.exit_code, 0) << tiny.output;
  EXPECT_NE(tiny.output.find("across 3 ranks"), std::string::npos) << tiny.output;
  EXPECT_NE(tiny.output.find("rank 0 "), std::string::npos) << tiny.output;
  EXPECT_NE(tiny.output.find("heads [2, 4), vocabulary rows [682, 1024)"), std::string::npos) << tiny.output;
  EXPECT_NE(tiny.output.find("640.00 B per token on every rank"), std::string::npos) << tiny.output;
  const std::string v3 = (test::shared_dir() / "bench" / "deepseek-v3-671b.json").string();
  const auto sixteen = run("info --model " + v3 + " --ranks 16");
  ASSERT_EQ(sixteen.exit_code, 0) << sixteen.output;
  EXPECT_NE(sixteen.output.find("rank 15 "), std::string::npos) << sixteen.output;
  EXPECT_NE(sixteen.output.find("heads [120, 128)"), std::string::npos) << sixteen.output;
  const auto too_many = run("info --model " + v3 + " --ranks 32");
  EXPECT_NE(too_many.exit_code, 0);
  EXPECT_NE(too_many.output.find("shared_experts.gate_proj.weight: 2048 columns cannot be split over 32 ranks"),
            std::string::npos)
      << too_many.output;
}

// info reports the KV cache the engine allocates: LatentCache holds a row per token for every
// layer, the MTP module's included.
TEST(CliModel, InfoKvCacheIsTheEnginesFigure) {
  for (const auto& model : {test::tiny_model_dir(), test::shared_dir() / "bench" / "deepseek-v3-671b.json"}) {
    const ModelConfig c = ModelConfig::load(model);
    ASSERT_GT(c.num_nextn_predict_layers, 0);
    const auto result = run("info --model " + model.string());
    ASSERT_EQ(result.exit_code, 0) << result.output;
    for (const DType dtype : {DType::BF16, DType::F32}) {
      const double bytes = static_cast<double>(LatentCache::bytes_per_token(c, dtype));
      const std::string figure = bytes >= 1000 ? fmt::format("{:.2f} KB per token", bytes / 1000)
                                               : fmt::format("{:.2f} B per token", bytes);
      EXPECT_NE(result.output.find(figure), std::string::npos) << figure << "\n" << result.output;
    }
    EXPECT_NE(result.output.find(fmt::format("{} layers + 1 MTP", c.num_hidden_layers)), std::string::npos)
        << result.output;
  }
}

TEST(CliModel, BadArgumentsGiveClearErrors) {
  const auto missing_model = run("forward --input x --output y");
  EXPECT_NE(missing_model.exit_code, 0);
  EXPECT_NE(missing_model.output.find("--model"), std::string::npos) << missing_model.output;

  const auto no_such_dir = run("info --model /nonexistent/model");
  EXPECT_EQ(no_such_dir.exit_code, 1);
  EXPECT_NE(no_such_dir.output.find("/nonexistent/model"), std::string::npos) << no_such_dir.output;

  const auto dir = test::temp_dir("bad-input");
  const auto fixture = test::tiny_model_dir();
  const auto not_ids = run("forward --model " + fixture.string() + " --input " + (fixture / "config.json").string() +
                           " --output " + (dir / "out.safetensors").string());
  EXPECT_EQ(not_ids.exit_code, 1);
  EXPECT_NE(not_ids.output.find("config.json"), std::string::npos) << not_ids.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {

TEST(CliModel, BenchReportsSpeedsNextToTheRoofline) {
  const auto result = run("bench --model " + test::tiny_model_dir().string() +
                          " --prompt-len 16 --gen-len 8 --batch 2 --mtp 1 --json 2>/dev/null");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto report = nlohmann::json::parse(result.output);
  for (const char* key : {"prefill_tokens_s", "decode_tokens_s", "time_to_first_token_s", "decode_roofline_tokens_s",
                          "read_bandwidth_gb_s", "peak_memory_bytes"})
    EXPECT_GT(report.at(key).get<double>(), 0.0) << key;
  EXPECT_EQ(report.at("batch").get<int>(), 2);
  EXPECT_EQ(report.at("mtp").at("acceptance_by_position").size(), 1u);
  EXPECT_GT(report.at("gemm_gflop_s").at("f32").get<double>(), 0.0);
  EXPECT_GT(report.at("prefill_vs_gemm_rate").get<double>(), 0.0);
  for (const auto& pass : report.at("read_bandwidth_before_after_gb_s")) EXPECT_GT(pass.get<double>(), 0.0);
  ASSERT_EQ(report.at("batches").size(), 1u);
  EXPECT_EQ(report.at("batches").at(0).at("batch").get<int>(), 2);
  // A list of batch sizes runs each one: aggregate decode speed per batch size.
  const auto listed = run("bench --model " + test::tiny_model_dir().string() +
                          " --prompt-len 8 --gen-len 4 --batch 1,3 --json 2>/dev/null");
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  const auto batches = nlohmann::json::parse(listed.output).at("batches");
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches.at(1).at("batch").get<int>(), 3);
  EXPECT_GT(batches.at(1).at("decode_tokens_s").get<double>(), 0.0);
  // Each batch size decodes --passes times (3 by default), interleaved, and reports its fastest pass.
  for (const auto& entry : batches) {
    const auto& passes = entry.at("decode_passes_tokens_s");
    ASSERT_EQ(passes.size(), 3u);
    double fastest = 0.0;
    for (const auto& rate : passes) fastest = std::max(fastest, rate.get<double>());
    EXPECT_EQ(entry.at("decode_tokens_s").get<double>(), fastest);
  }
  const auto one_pass = run("bench --model " + test::tiny_model_dir().string() +
                            " --prompt-len 8 --gen-len 4 --passes 1 --json 2>/dev/null");
  ASSERT_EQ(one_pass.exit_code, 0) << one_pass.output;
  EXPECT_EQ(nlohmann::json::parse(one_pass.output).at("decode_passes_tokens_s").size(), 1u);
  EXPECT_FALSE(report.at("machine").at("cpu").get<std::string>().empty());
  // --head-fp8: the BF16 head re-quantised at load, so a decode step streams fewer bytes.
  const auto fp8_head = run("bench --model " + test::tiny_model_dir().string() +
                            " --prompt-len 8 --gen-len 4 --head-fp8 --json 2>/dev/null");
  ASSERT_EQ(fp8_head.exit_code, 0) << fp8_head.output;
  const auto fp8_report = nlohmann::json::parse(fp8_head.output);
  EXPECT_EQ(report.at("head_dtype").get<std::string>(), "BF16");
  EXPECT_EQ(fp8_report.at("head_dtype").get<std::string>(), "F8_E4M3");
  EXPECT_LT(fp8_report.at("weight_bytes_per_token").get<double>(), report.at("weight_bytes_per_token").get<double>());
  // Where few-row products are AVX512-BF16 dot products, the BF16 head is also kept in pair tiles
  // (the tiny model's 1024 x 256 head: 64 tiles of 16 rows x 128 column pairs, 4 bytes a pair);
  // an FP8 head is not.
  const bool dot_products =
      report.at("arithmetic").get<std::string>().find("AVX512-BF16 dot products") != std::string::npos;
  EXPECT_EQ(report.at("head_tiles_bytes").get<std::size_t>(), dot_products ? 1024u * 128 * 4 : 0u);
  EXPECT_EQ(fp8_report.at("head_tiles_bytes").get<std::size_t>(), 0u);
  // And so are the layers' dense linears (all but kv_b_proj and the routed experts), each in tiles
  // of 16 rows by column pairs, and kv_b_proj per head as W_UK[h]ᵀ and W_UV[h] in such tiles: the
  // bytes follow from the config.
  {
    std::ifstream file(test::tiny_model_dir() / "config.json");
    const auto c = nlohmann::json::parse(file);
    const auto dim = [&](const char* key) { return c.at(key).get<std::size_t>(); };
    const auto tiles = [](std::size_t rows, std::size_t cols) { return (rows + 15) / 16 * 16 * ((cols + 1) / 2) * 4; };
    const std::size_t hidden = dim("hidden_size"), heads = dim("num_attention_heads"),
                      layers = dim("num_hidden_layers"), dense = dim("first_k_dense_replace");
    const std::size_t attention = tiles(dim("q_lora_rank"), hidden) +
                                  tiles(heads * (dim("qk_nope_head_dim") + dim("qk_rope_head_dim")), dim("q_lora_rank")) +
                                  tiles(dim("kv_lora_rank") + dim("qk_rope_head_dim"), hidden) +
                                  tiles(hidden, heads * dim("v_head_dim")) +
                                  heads * (tiles(dim("kv_lora_rank"), dim("qk_nope_head_dim")) +
                                           tiles(dim("v_head_dim"), dim("kv_lora_rank")));
    const auto mlp = [&](std::size_t inner) { return 2 * tiles(inner, hidden) + tiles(hidden, inner); };
    const std::size_t expected = 1024u * 128 * 4 + layers * attention + dense * mlp(dim("intermediate_size")) +
                                 (layers - dense) * mlp(dim("n_shared_experts") * dim("moe_intermediate_size"));
    EXPECT_EQ(report.at("tiles_bytes").get<std::size_t>(), dot_products ? expected : 0u);
  }
  // DSV3_DECODE_TILES=head keeps the head's tiles alone, 0 none; anything else is refused by name.
  for (const auto& [setting, bytes] : std::vector<std::pair<std::string, std::size_t>>{
           {"head", report.at("head_tiles_bytes").get<std::size_t>()}, {"0", 0u}}) {
    setenv("DSV3_DECODE_TILES", setting.c_str(), 1);
    const auto chosen = run("bench --model " + test::tiny_model_dir().string() +
                            " --prompt-len 8 --gen-len 4 --passes 1 --json 2>/dev/null");
    unsetenv("DSV3_DECODE_TILES");
    ASSERT_EQ(chosen.exit_code, 0) << chosen.output;
    EXPECT_EQ(nlohmann::json::parse(chosen.output).at("tiles_bytes").get<std::size_t>(), bytes) << setting;
  }
  setenv("DSV3_DECODE_TILES", "yes", 1);
  const auto refused = run("bench --model " + test::tiny_model_dir().string() + " --prompt-len 8 --gen-len 4 --passes 1");
  unsetenv("DSV3_DECODE_TILES");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("DSV3_DECODE_TILES=yes"), std::string::npos) << refused.output;
  // --profile times every op of every batch size's decode (and the first size's prefill): a step's
  // output head runs once on each of the batch's rows, the ops' time stays within the step's.
  const auto profiled = run("bench --model " + test::tiny_model_dir().string() +
                            " --prompt-len 8 --gen-len 4 --batch 1,3 --passes 1 --profile --json 2>/dev/null");
  ASSERT_EQ(profiled.exit_code, 0) << profiled.output;
  // The profiler times the kernels the model runs without it: the head's tiles too.
  EXPECT_EQ(nlohmann::json::parse(profiled.output).at("head_tiles_bytes"), report.at("head_tiles_bytes"));
  for (const auto& entry : nlohmann::json::parse(profiled.output).at("batches")) {
    const int batch = entry.at("batch").get<int>();
    for (const char* phase : {"prefill_profile", "decode_profile"}) {
      SCOPED_TRACE(fmt::format("batch {} {}", batch, phase));
      const auto& profile = entry.at(phase);
      EXPECT_EQ(profile.at("steps").get<int>(), std::string(phase) == "prefill_profile" ? 1 : 3);  // 4 tokens
      double in_ops = 0.0;
      bool head = false;
      for (const auto& op : profile.at("ops")) {
        in_ops += op.at("ms_per_step").get<double>();
        if (op.at("op").get<std::string>() != "linear lm_head") continue;
        head = true;
        EXPECT_EQ(op.at("calls_per_step").get<double>(), 1.0);
        EXPECT_EQ(op.at("rows_per_call").get<double>(), batch);
        EXPECT_GT(op.at("weight_bytes_per_step").get<double>(), 0.0);
      }
      EXPECT_TRUE(head);
      EXPECT_GT(in_ops, 0.0);
      EXPECT_NEAR(in_ops + profile.at("outside_ops_ms").get<double>(), profile.at("step_ms").get<double>(), 1e-9);
      EXPECT_GE(profile.at("outside_ops_ms").get<double>(), 0.0);
    }
  }
  const auto profile_text = run("bench --model " + test::tiny_model_dir().string() +
                                " --prompt-len 8 --gen-len 4 --batch 1,3 --passes 1 --profile 2>/dev/null");
  ASSERT_EQ(profile_text.exit_code, 0) << profile_text.output;
  for (const char* table : {"profile, prefill, batch 1:", "profile, decode, batch 1:", "profile, decode, batch 3:",
                            "profile, decode by batch size"})
    EXPECT_NE(profile_text.output.find(table), std::string::npos) << table << "\n" << profile_text.output;
  const auto too_long = run("bench --model " + test::tiny_model_dir().string() + " --prompt-len 2000");
  EXPECT_EQ(too_long.exit_code, 1);
  EXPECT_NE(too_long.output.find("exceeds the model's 1024 positions"), std::string::npos) << too_long.output;
}

}  // namespace
}  // namespace dsv3
