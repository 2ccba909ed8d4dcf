#pragma once
// Options shared by the commands that generate (generate, chat, bench): the model and tokenizer
// folders, sampling parameters and engine settings, with one spelling and one set of defaults.
#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {

// The most MTP drafts per step --mtp accepts: acceptance falls with every further draft, and each
// draft costs a forward pass of the MTP module per step.
constexpr std::int64_t kMostDrafts = 64;

struct GenerationOptions {
  std::string model;
  std::string tokenizer;  // default: the model folder, when it holds tokenizer.json
  SamplingParams sampling;
  std::int64_t max_tokens = 256;
  std::optional<std::uint64_t> seed;
  EngineOptions engine;
  std::string cache_dtype = "bf16";
  std::int64_t cache_bytes = 0;  // when set, the cache capacity in bytes instead of --cache-tokens

  // The engine options for `config`: cache capacity from --cache-bytes when given.
  EngineOptions engine_options(const ModelConfig& config) const;

  // Sampling and engine options; `default_temperature` differs per command (greedy for generate).
  void add_to(CLI::App& app, float default_temperature);
  // Fills sampling.max_tokens/seed and engine.cache_dtype from the parsed strings; validates.
  void finalise();
  // The tokenizer to use, or nullopt when neither --tokenizer nor the model folder has one.
  std::optional<Tokenizer> load_tokenizer() const;
  std::string tokenizer_dir() const;  // --tokenizer, else the model folder when it has one, else ""
  // Fits sampling to a model/tokenizer pair: a tokenizer larger than the model's vocabulary is an
  // error naming both; ids past the tokenizer (the model's padding rows: DeepSeek-V3 has 129280
  // rows for 128815 tokens) have no text, so they are never sampled.
  void fit_to(const Tokenizer& tokenizer, const ModelConfig& config, SamplingParams& params) const;
};

// Loads weights. With `read_in`, or on a terminal (with a progress bar; quiet when piped), every
// page is read now instead of on first use. The model computes on `backend`.
Model load_model(const std::string& dir, bool read_in = false,
                 const kernels::Backend& backend = kernels::default_backend());

}  // namespace dsv3::cli
