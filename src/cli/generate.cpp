// dsv3 generate: continue a prompt, streaming text as it is produced.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "cli/generation_options.h"
#include "core/error.h"
#include "serve/expert_stats.h"

namespace dsv3::cli {
namespace {

struct GenerateOptions {
  GenerationOptions generation;
  std::string prompt;
  std::string prompt_ids;
  bool print_ids = false;
  bool ignore_eos = false;
  std::string expert_stats;  // where the router's per-layer expert counts go, as `dsv3 placement --stats` reads them
};

int run(GenerateOptions& options) {
  GenerationOptions& g = options.generation;
  g.finalise();
  g.sampling.ignore_eos = options.ignore_eos;
  const std::optional<Tokenizer> tokenizer = g.load_tokenizer();
  std::vector<std::int32_t> prompt;
  if (!options.prompt_ids.empty()) {
    prompt = parse_token_ids("--prompt-ids", options.prompt_ids);
  } else {
    if (!tokenizer) fail("--prompt needs a tokenizer: pass --tokenizer DIR (the model folder has no tokenizer.json)");
    prompt = tokenizer->encode(options.prompt, tokenizer->add_bos_token());
  }
  const auto load_start = std::chrono::steady_clock::now();
  const Model model = load_model(g.model);
  if (tokenizer) g.fit_to(*tokenizer, model.config(), g.sampling);
  std::ofstream stats_file;
  if (!options.expert_stats.empty()) {
    stats_file.open(options.expert_stats);  // opened now, so that a bad path fails before generating
    if (!stats_file) fail("--expert-stats {}: cannot open for writing", options.expert_stats);
  }
  EngineOptions engine_options = g.engine_options(model.config());
  engine_options.expert_stats = !options.expert_stats.empty();
  Engine engine(model, engine_options);
  const SequenceId id = engine.add(prompt, g.sampling);
  const auto start = std::chrono::steady_clock::now();

  std::optional<Tokenizer::StreamDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, true);
  StopChecker stops(g.sampling);
  std::vector<std::int32_t> generated;
  double first_token_seconds = 0.0;
  bool done = false;
  while (!done && engine.has_work()) {
    for (const TokenEvent& event : engine.step()) {
      if (generated.empty())
        first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      generated.push_back(event.sampled.token);
      const std::string piece = decoder ? decoder->push(event.sampled.token) : std::string();
      const StopUpdate update = stops.add(event.sampled.token, piece);
      if (decoder) std::cout << update.text << std::flush;
      if (update.finished || event.finished) {
        done = true;
        break;
      }
    }
  }
  if (!done) engine.finish(id);
  if (decoder) std::cout << stops.finish() << decoder->finish();
  if (options.print_ids) {
    if (decoder) std::cout << '\n';
    std::cout << fmt::format("{}", fmt::join(generated, ",")) << '\n';
  } else if (decoder) {
    std::cout << '\n';
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double decode_seconds = total - first_token_seconds;
  std::string summary = fmt::format(
      "{} prompt tokens, {} generated; load {:.2f} s, time to first token {:.3f} s, decode {:.1f} tokens/s",
      prompt.size(), generated.size(), std::chrono::duration<double>(start - load_start).count(), first_token_seconds,
      generated.size() > 1 ? static_cast<double>(generated.size() - 1) / decode_seconds : 0.0);
  const auto& speculation = engine.speculation();
  for (std::size_t i = 0; i < speculation.drafted.size(); ++i)
    summary += fmt::format("; MTP draft {} accepted {:.0f}%", i + 1, 100.0 * speculation.acceptance(i));
  if (const RouterCounts* counts = engine.router_counts()) {
    stats_file << serve::expert_stats_json(*counts, model.config(), g.model) << '\n';
    stats_file.flush();
    if (!stats_file) fail("--expert-stats {}: cannot write", options.expert_stats);
    summary += fmt::format("; expert statistics of {} routed tokens in {}", counts->rows, options.expert_stats);
  }
  std::cout.flush();  // the text before the summary, also when both go to one pipe
  std::fprintf(stderr, "%s\n", summary.c_str());
  return 0;
}

const bool registered = register_command(
    {"generate", "Continue a prompt with a model, streaming the text",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<GenerateOptions>();
       options->generation.add_to(app, 0.0f);
       auto* prompt = app.add_option_group("prompt", "What to continue");
       prompt->add_option("--prompt", options->prompt, "Prompt text (encoded with the tokenizer, BOS as it asks)");
       prompt->add_option("--prompt-ids", options->prompt_ids, "Prompt token ids, comma-separated");
       prompt->require_option(1);
       app.add_flag("--print-ids", options->print_ids, "Print the generated ids, comma-separated, on a last line");
       app.add_flag("--ignore-eos", options->ignore_eos,
                    "Go on past the model's end-of-sequence token up to --max-tokens (a fixed amount of work, for "
                    "timing and tests)");
       app.add_option("--expert-stats", options->expert_stats,
                      "Write the rows the router sent to each expert of each MoE layer (prompt and generated "
                      "tokens) here as JSON, the input of dsv3 placement --stats");
       return [options] { return run(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
