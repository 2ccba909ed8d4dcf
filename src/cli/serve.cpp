// dsv3 serve: the OpenAI/DeepSeek-compatible HTTP server (src/serve) over a model folder.
#include <algorithm>
#include <filesystem>
#include <limits>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "serve/server.h"

namespace dsv3::cli {
namespace {

struct ServeCommandOptions {
  GenerationOptions generation;
  serve::ServeOptions serve;
};

int run(ServeCommandOptions& options) {
  GenerationOptions& g = options.generation;
  g.finalise();
  const std::optional<Tokenizer> tokenizer = g.load_tokenizer();
  if (!tokenizer)
    fail("serve needs a tokenizer: the model folder '{}' has no tokenizer.json, pass --tokenizer DIR", g.model);
  const Model model = load_model(g.model);
  SamplingParams padding;
  g.fit_to(*tokenizer, model.config(), padding);
  serve::ServeOptions& s = options.serve;
  s.logit_bias = padding.logit_bias;
  for (const std::int64_t id : model.config().eos_token_ids) s.end_of_sequence_ids.push_back(static_cast<std::int32_t>(id));
  if (!tokenizer->eos_token().empty())
    if (const auto eos = tokenizer->token_to_id(tokenizer->eos_token())) s.end_of_sequence_ids.push_back(*eos);
  std::sort(s.end_of_sequence_ids.begin(), s.end_of_sequence_ids.end());
  s.end_of_sequence_ids.erase(std::unique(s.end_of_sequence_ids.begin(), s.end_of_sequence_ids.end()),
                              s.end_of_sequence_ids.end());
  if (s.served_model_name.empty())
    s.served_model_name = std::filesystem::path(g.model).lexically_normal().filename().string();
  if (s.served_model_name.empty()) s.served_model_name = "dsv3";
  return serve::serve(model, *tokenizer, g.engine_options(model.config()), s);
}

const bool registered = register_command(
    {"serve", "Serve a model over HTTP with the OpenAI/DeepSeek API",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<ServeCommandOptions>();
       GenerationOptions& g = options->generation;
       serve::ServeOptions& s = options->serve;
       app.add_option("--model", g.model, "Model directory (config.json + safetensors)")->required();
       app.add_option("--tokenizer", g.tokenizer, "Tokenizer directory (default: the model directory)");
       app.add_option("--host", s.host, "Address to listen on")->capture_default_str();
       add_number(app, "--port", s.port, "Port to listen on", 1, 65535)->capture_default_str();
       app.add_option("--api-key", s.api_key, "Require 'Authorization: Bearer KEY' on every route but /health");
       app.add_option("--served-model-name", s.served_model_name, "The model's name in the API (default: the folder's)");
       add_number(app, "--max-batch", s.max_batch, "Most sequences stepped together", 1, 4096)->capture_default_str();
       add_number(app, "--max-queue", s.max_queue, "Most requests waiting to join the batch (more get 429)", 1,
                  1000000)
           ->capture_default_str();
       add_number(app, "--grace-period", s.grace_seconds,
                  "Seconds in-flight requests may take to finish after SIGINT/SIGTERM", 0.0, 86400.0)
           ->capture_default_str();
       add_number(app, "--mtp", g.engine.mtp_drafts, "Draft this many tokens per step with the MTP module (0: off)", 0,
                  kMostDrafts)
           ->capture_default_str();
       add_number(app, "--max-step-tokens", g.engine.max_step_tokens,
                  "Most tokens one engine step feeds: decoding sequences first, then prompt chunks", 1, 1 << 20)
           ->capture_default_str();
       app.add_option_function<std::string>(
              "--prefix-cache",
              [&g](const std::string& value) { g.engine.prefix_cache = value == "on"; },
              "Keep full KV cache blocks and reuse them for prompts that start with the same tokens (default: on)")
           ->check(CLI::IsMember({"on", "off"}));
       g.engine.expert_stats = true;  // a few increments per routed row: on unless asked otherwise
       app.add_option_function<std::string>(
              "--expert-stats",
              [&g](const std::string& value) { g.engine.expert_stats = value == "on"; },
              "Count the rows the router sends to each expert, answered at GET /expert-stats (default: on)")
           ->check(CLI::IsMember({"on", "off"}));
       app.add_option("--cache-dtype", g.cache_dtype, "KV cache precision")
           ->check(CLI::IsMember({"bf16", "f32"}))
           ->capture_default_str();
       auto* capacity = app.add_option_group("cache capacity");
       add_number(*capacity, "--kv-cache-tokens", g.engine.cache_tokens, "KV cache capacity in tokens", 1,
                  std::numeric_limits<std::int64_t>::max())
           ->capture_default_str();
       add_number(*capacity, "--kv-cache-bytes", g.cache_bytes, "KV cache capacity in bytes (instead of tokens)", 1,
                  std::numeric_limits<std::int64_t>::max());
       capacity->require_option(0, 1);
       return [options] { return run(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
