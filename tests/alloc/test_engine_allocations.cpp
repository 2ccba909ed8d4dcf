// A warmed-up decode step allocates nothing: Engine::step at batch 1 and 8, with and without MTP
// drafts, greedy and with temperature, top-p and the repetition/presence/frequency penalties, on a
// random model with dense and MoE layers (routed experts in groups) and an MTP module, its weights
// in BF16 or, as DeepSeek-V3 ships them, FP8. Once every
// sequence decodes and a few steps have run, each further step reuses the engine's workspace,
// scratch and events, the sequences' page tables (reserved at admission) and penalty counts.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "allocation_counter.h"
#include "engine/engine.h"
#include "model/model.h"

namespace dsv3 {
namespace {

// The fixture's tiny shape, with four main layers (one dense, three MoE of 16 routed experts in 4
// groups, top 4 from the 2 best groups, a shared expert) and one MTP module.
ModelConfig test_config() {
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"],
    "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64,
    "num_hidden_layers": 4, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 64,
    "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
    "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
    "routed_scaling_factor": 2.5, "norm_topk_prob": true, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "rope_theta": 10000.0, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
    "num_nextn_predict_layers": 1, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
    "hidden_act": "silu", "torch_dtype": "bfloat16"
  })"));
}

// The random checkpoint stays on disk while the model maps it.
struct RandomModel {
  std::filesystem::path dir;
  std::unique_ptr<Model> model;
  explicit RandomModel(bool fp8) {
    dir = std::filesystem::temp_directory_path() /
          ("dsv3-alloc-engine-" + std::string(fp8 ? "fp8-" : "bf16-") + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    write_random_checkpoint(test_config(), dir, {.seed = 11, .fp8 = fp8});
    model = std::make_unique<Model>(Weights::load(dir));
  }
  ~RandomModel() {
    model.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

const Model& random_model(bool fp8) {
  static const RandomModel bf16_model(false), fp8_model(true);
  return *(fp8 ? fp8_model : bf16_model).model;
}

struct Case {
  std::int64_t batch;
  std::int64_t mtp;
  bool sampled;  // temperature, top-k/p, min-p, penalties, logit bias and top logprobs; else greedy
  bool fp8;      // FP8 weights with block scales; else BF16
};

std::string describe(const Case& c) {
  return "batch " + std::to_string(c.batch) + ", mtp " + std::to_string(c.mtp) + (c.sampled ? ", sampled" : ", greedy") +
         (c.fp8 ? ", fp8" : ", bf16");
}
void PrintTo(const Case& c, std::ostream* out) { *out << describe(c); }

constexpr int kMeasuredSteps = 24;

// Allocations of each of kMeasuredSteps consecutive steps once every sequence decodes and a few
// warm-up steps have run.
std::vector<std::int64_t> allocations_per_step(const Case& c) {
  const Model& model = random_model(c.fp8);
  // With the router's expert statistics counted, as dsv3 serve does by default.
  Engine engine(model, {.cache_tokens = 4096, .block_tokens = 16, .mtp_drafts = c.mtp, .expert_stats = true});
  for (std::int64_t s = 0; s < c.batch; ++s) {
    SamplingParams params;
    if (c.sampled) {
      params.temperature = 0.8f;
      params.top_p = 0.9f;
      params.top_k = 200;
      params.min_p = 0.001f;
      params.repetition_penalty = 1.2f;
      params.presence_penalty = 0.3f;
      params.frequency_penalty = 0.2f;
      params.logit_bias = {{7, 0.5f}, {300, -1.0f}};
      params.logprobs = 3;
    } else {
      params.temperature = 0.0f;
    }
    params.seed = 100 + static_cast<std::uint64_t>(s);
    params.max_tokens = 300;
    params.ignore_eos = true;
    std::vector<std::int32_t> prompt;
    for (std::int64_t i = 0; i < 5 + 3 * s; ++i) prompt.push_back(static_cast<std::int32_t>((37 * (i + 1) + 101 * s) % 1000 + 2));
    engine.add(std::move(prompt), params);
  }
  // Prefill, then warm-up decode steps: the workspace reaches the decode step's high-water mark
  // and folds it into one block, and scratch grows to its size.
  for (int step = 0; step < 6; ++step) engine.step();
  std::vector<std::int64_t> counts;
  for (int step = 0; step < kMeasuredSteps; ++step) {
    const std::int64_t before = test::heap_allocations();
    test::watch_allocations(true);
    const auto& events = engine.step();
    test::watch_allocations(false);
    counts.push_back(test::heap_allocations() - before);
    EXPECT_FALSE(events.empty()) << describe(c) << ": every step emits tokens";
    for (const TokenEvent& event : events)
      EXPECT_EQ(event.sampled.top_logprobs.size(), c.sampled ? 3u : 0u) << describe(c);
  }
  EXPECT_TRUE(engine.has_work()) << describe(c) << ": the sequences still decode (max_tokens 300)";
  EXPECT_GT(engine.router_counts()->rows, 0) << describe(c);
  return counts;
}

class EngineAllocations : public ::testing::TestWithParam<Case> {};

TEST_P(EngineAllocations, AWarmDecodeStepAllocatesNothing) {
  const Case c = GetParam();
  const std::vector<std::int64_t> counts = allocations_per_step(c);
  EXPECT_EQ(counts, std::vector<std::int64_t>(kMeasuredSteps, 0)) << describe(c);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const bool fp8 : {false, true})
    for (const std::int64_t batch : {1, 8})
      for (const std::int64_t mtp : {0, 2})
        for (const bool sampled : {false, true}) cases.push_back({batch, mtp, sampled, fp8});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(BatchMtpSampling, EngineAllocations, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return "batch" + std::to_string(c.batch) + "_mtp" + std::to_string(c.mtp) +
                                  (c.sampled ? "_sampled" : "_greedy") + (c.fp8 ? "_fp8" : "_bf16");
                         });

}  // namespace
}  // namespace dsv3
