#pragma once
// Shared set-up of the training tests: a tiny DeepSeek-V3 shape, a small BPE tokenizer trained on
// State of the Union speeches (the npm corpus scripts/setup.sh installs), and a training config.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "support.h"
#include "tokenizer/bpe_trainer.h"
#include "train/train.h"

namespace dsv3::test {

inline std::filesystem::path sotu_dir() {
  return std::filesystem::path(DSV3_DATA_DIR) / "npm" / "node_modules" / "@stdlib" / "datasets-sotu" / "data";
}

// The first `count` speeches (by file name: chronological).
inline std::vector<std::string> sotu_files(std::size_t count) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(sotu_dir()))
    if (entry.path().extension() == ".txt") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  EXPECT_GE(files.size(), count) << "the SOTU corpus is missing; run scripts/setup.sh";
  files.resize(std::min(files.size(), count));
  return files;
}

// hidden 64, 2 layers (one dense, one MoE with 8 routed experts, top-2, one shared) and one MTP
// module (an MoE layer too).
inline nlohmann::json tiny_config_json(std::int64_t vocab) {
  return {{"vocab_size", vocab},          {"hidden_size", 64},        {"intermediate_size", 128},
          {"moe_intermediate_size", 32},  {"num_hidden_layers", 2},   {"first_k_dense_replace", 1},
          {"num_attention_heads", 2},     {"q_lora_rank", 32},        {"kv_lora_rank", 32},
          {"qk_nope_head_dim", 16},       {"qk_rope_head_dim", 8},    {"v_head_dim", 16},
          {"n_routed_experts", 8},        {"n_shared_experts", 1},    {"num_experts_per_tok", 2},
          {"n_group", 1},                 {"topk_group", 1},          {"routed_scaling_factor", 1.0},
          {"norm_topk_prob", true},       {"rope_theta", 10000.0},    {"max_position_embeddings", 256},
          {"rms_norm_eps", 1e-6},         {"num_nextn_predict_layers", 1}, {"model_type", "deepseek_v3"},
          {"bos_token_id", 0},            {"eos_token_id", 1},        {"tie_word_embeddings", false},
          {"num_key_value_heads", 2}};
}

struct TrainingSetup {
  std::filesystem::path dir;
  std::vector<std::string> corpus;
  train::TrainConfig config;
};

// Trains a 640-token BPE tokenizer on `speeches` SOTU speeches, writes the tiny config, and
// returns a training config over those speeches (seq_len 128, batch 4, lr 3e-3 with warmup).
inline TrainingSetup training_setup(const std::string& tag, std::size_t speeches = 24) {
  TrainingSetup s;
  s.dir = temp_dir(tag);
  s.corpus = sotu_files(speeches);
  BpeTrainerOptions options;
  options.vocab_size = 640;
  const TrainedBpe bpe = train_bpe(s.corpus, options);
  write_tokenizer_files(bpe, (s.dir / "tokenizer").string());
  std::ofstream(s.dir / "config.json") << tiny_config_json(static_cast<std::int64_t>(bpe.size())).dump(2);
  train::TrainConfig& c = s.config;
  c.model_config = (s.dir / "config.json").string();
  c.tokenizer = (s.dir / "tokenizer").string();
  c.corpus = s.corpus;
  c.seq_len = 128;
  c.batch_size = 4;
  c.steps = 100;
  c.lr = {.peak = 3e-3, .floor = 3e-4, .warmup_steps = 10, .decay_start = 10, .decay_steps = 90};
  c.validation_fraction = 0.1;
  c.validation_interval = 0;
  c.validation_sequences = 16;
  c.seed = 7;
  return s;
}

inline double mean_tail(const std::vector<double>& values, std::size_t count) {
  count = std::min(count, values.size());
  double total = 0.0;
  for (std::size_t i = values.size() - count; i < values.size(); ++i) total += values[i];
  return total / static_cast<double>(count);
}

}  // namespace dsv3::test
