#include "cli/generation_options.h"

#include "cli/command.h"

#include <filesystem>
#include <limits>

#include "cli/numeric_option.h"
#include "core/error.h"
#include "core/machine.h"
#include "core/progress.h"
#include "model/distributed.h"
#include "model/weights.h"

namespace dsv3::cli {

void GenerationOptions::add_to(CLI::App& app, float default_temperature) {
  sampling.temperature = default_temperature;
  app.add_option("--model", model, "Model directory (config.json + safetensors)")->required();
  app.add_option("--tokenizer", tokenizer, "Tokenizer directory (default: the model directory)");
  add_exact_flag(app);
  add_head_fp8_flag(app);
  constexpr std::int32_t most_int = std::numeric_limits<std::int32_t>::max();
  constexpr float most_float = std::numeric_limits<float>::max();
  add_number(app, "--max-tokens", max_tokens, "Most tokens to generate", 1, most_int)->capture_default_str();
  add_number(app, "--temperature", sampling.temperature, "Sampling temperature; 0 is greedy", 0.0f, most_float)
      ->capture_default_str();
  add_number(app, "--top-p", sampling.top_p, "Nucleus sampling: keep the smallest set reaching this mass", 0.0f, 1.0f)
      ->capture_default_str();
  add_number(app, "--top-k", sampling.top_k, "Keep the k most likely tokens (0: off)", 0, most_int)
      ->capture_default_str();
  add_number(app, "--min-p", sampling.min_p, "Drop tokens below min-p times the most likely (0: off)", 0.0f, 1.0f)
      ->capture_default_str();
  add_number(app, "--repetition-penalty", sampling.repetition_penalty, "CTRL repetition penalty (1: off)", 0.0f,
             most_float)
      ->capture_default_str();
  add_number(app, "--presence-penalty", sampling.presence_penalty, "OpenAI presence penalty (0: off)")
      ->capture_default_str();
  add_number(app, "--frequency-penalty", sampling.frequency_penalty, "OpenAI frequency penalty (0: off)")
      ->capture_default_str();
  app.add_option("--stop", sampling.stop, "Stop before this string (repeatable)");
  add_number(app, "--seed", seed, "Random seed: the same seed gives the same output");
  add_number(app, "--mtp", engine.mtp_drafts, "Draft this many tokens per step with the MTP module (0: off)", 0,
             kMostDrafts)
      ->capture_default_str();
  app.add_option("--cache-dtype", cache_dtype, "KV cache precision")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  auto* capacity = app.add_option_group("cache capacity");
  // The upper bounds are what the types hold; whether the cache fits the machine is checked once
  // the model (its bytes per token) is known.
  add_number(*capacity, "--cache-tokens", engine.cache_tokens, "KV cache capacity in tokens", 1,
             std::numeric_limits<std::int64_t>::max())
      ->capture_default_str();
  add_number(*capacity, "--cache-bytes", cache_bytes, "KV cache capacity in bytes (instead of --cache-tokens)", 1,
             std::numeric_limits<std::int64_t>::max());
  capacity->require_option(0, 1);
}

EngineOptions GenerationOptions::engine_options(const ModelConfig& config) const {
  EngineOptions options = engine;
  const std::int64_t bytes_per_token = LatentCache::bytes_per_token(config, options.cache_dtype);
  if (cache_bytes > 0) {
    options.cache_tokens = LatentCache::tokens_for_bytes(config, options.cache_dtype, cache_bytes);
    if (options.cache_tokens <= 0)
      fail("--cache-bytes {} holds no token: one token takes {} bytes of {} cache", cache_bytes, bytes_per_token,
           cache_dtype);
    check_cache_fits(fmt::format("--cache-bytes {}", cache_bytes), options.cache_tokens, bytes_per_token);
  } else {
    check_cache_fits(fmt::format("--cache-tokens {}", options.cache_tokens), options.cache_tokens, bytes_per_token);
  }
  return options;
}

void GenerationOptions::finalise() {
  sampling.max_tokens = static_cast<std::int32_t>(max_tokens);
  sampling.seed = seed;
  engine.cache_dtype = cache_dtype == "f32" ? DType::F32 : DType::BF16;
}

std::optional<Tokenizer> GenerationOptions::load_tokenizer() const {
  const std::string dir = tokenizer_dir();
  if (dir.empty()) return std::nullopt;
  return Tokenizer::load(dir);
}

void GenerationOptions::fit_to(const Tokenizer& tokenizer, const ModelConfig& config, SamplingParams& params) const {
  const auto tokens = static_cast<std::int64_t>(tokenizer.vocab_size());
  if (tokens > config.vocab_size)
    fail("the tokenizer{} has {} tokens but the model in '{}' has a vocabulary of {}: tokens {} and up cannot be fed "
         "to this model (is it the model's own tokenizer?)",
         tokenizer_dir().empty() ? "" : " in '" + tokenizer_dir() + "'", tokens, model, config.vocab_size,
         config.vocab_size);
  for (std::int64_t id = tokens; id < config.vocab_size; ++id) params.logit_bias[static_cast<std::int32_t>(id)] = -1e30f;
}

std::string GenerationOptions::tokenizer_dir() const {
  namespace fs = std::filesystem;
  if (!tokenizer.empty()) return tokenizer;
  return fs::exists(fs::path(model) / "tokenizer.json") ? model : std::string();
}

Model load_model(const std::string& dir, bool read_in, const kernels::Backend& backend) {
  dist::Communicator& ranks = communicator();
  if (ranks.size() > 1) {
    // Each rank maps the checkpoint and keeps its part; DSV3_PLACEMENT names a plan from dsv3
    // placement for the routed experts (else they are dealt evenly).
    ShardedLoad load{dir, {}, true};
    if (const char* plan = std::getenv("DSV3_PLACEMENT"); plan && *plan) load.placement = read_placement_plan(plan, ranks.size());
    return load_across_ranks(load, ranks, backend);
  }
  const std::int64_t before = resident_memory_bytes();
  Weights weights = Weights::load(dir);
  ProgressBar bar("loading " + dir, static_cast<std::int64_t>(weights.store.total_bytes()), ProgressBar::Unit::bytes);
  // On a terminal the weights are read in now, with progress, rather than on first use.
  if (read_in || bar.visible())
    weights.store.prefetch([&bar](std::size_t, std::size_t bytes) { bar.set(static_cast<std::int64_t>(bytes)); });
  if (output_heads_fp8()) quantize_output_heads_fp8(weights);
  prepare_decode_weights(weights, backend);
  Model model(std::move(weights), backend);
  model.resident_weight_bytes = resident_memory_bytes() - before;
  return model;
}

}  // namespace dsv3::cli
