// dsv3 init: a randomly initialised model in the official checkpoint layout, for tests,
// benchmarks and training from scratch.
#include <fmt/core.h>

#include <chrono>
#include <limits>
#include <filesystem>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/model.h"

namespace dsv3::cli {
namespace {

struct InitOptions {
  std::string config, tokenizer, out, dtype = "bf16";
  std::uint64_t seed = 0;
  std::int64_t shard_size = 5'000'000'000;
  bool force = false;
};

int run(const InitOptions& options) {
  namespace fs = std::filesystem;
  const ModelConfig config = ModelConfig::load(options.config);
  const fs::path out = options.out;
  if (fs::exists(out) && !fs::is_directory(out)) fail("{}: exists and is not a directory", out.string());
  if (fs::exists(out) && !fs::is_empty(out) && !options.force)
    fail("{}: is not empty (pass --force to write into it)", out.string());
  fs::create_directories(out);
  // A stale index or shard from an earlier model would be read in place of the new files.
  for (const auto& entry : fs::directory_iterator(out))
    if (entry.path().filename().string().starts_with("model") &&
        entry.path().filename().string().find(".safetensors") != std::string::npos)
      fs::remove(entry.path());
  const auto start = std::chrono::steady_clock::now();
  {
    std::unique_ptr<ProgressBar> sized;
    write_random_checkpoint(config, out,
                            {.seed = options.seed, .fp8 = options.dtype == "fp8", .shard_bytes = options.shard_size},
                            [&](std::int64_t done, std::int64_t total) {
                              if (!sized) sized = std::make_unique<ProgressBar>("init", total, ProgressBar::Unit::bytes);
                              sized->set(done);
                            });
  }
  if (!options.tokenizer.empty()) {
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      const fs::path source = fs::path(options.tokenizer) / file;
      if (!fs::exists(source)) fail("{}: missing ({} needs it)", source.string(), "--tokenizer");
      fs::copy_file(source, out / file, fs::copy_options::overwrite_existing);
    }
  }
  const ParameterCount params = count_parameters(config);
  fmt::print(stderr, "wrote {} ({} parameters + {} MTP, {}) in {:.1f} s\n", out.string(), params.total, params.mtp,
             options.dtype, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

const bool registered = register_command(
    {"init", "Write a randomly initialised model in the official checkpoint layout",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<InitOptions>();
       app.add_option("--config", options->config, "A Hugging Face config.json of the shape")->required();
       app.add_option("--out", options->out, "Output directory")->required();
       app.add_option("--tokenizer", options->tokenizer, "Copy tokenizer.json and tokenizer_config.json from here");
       add_number(app, "--seed", options->seed, "Random seed")->capture_default_str();
       app.add_option("--dtype", options->dtype, "Weight format")->check(CLI::IsMember({"bf16", "fp8"}))->capture_default_str();
       add_number(app, "--shard-size", options->shard_size, "Bytes per shard before splitting", 1,
                  std::numeric_limits<std::int64_t>::max())
           ->capture_default_str();
       app.add_flag("--force", options->force, "Write into a non-empty output directory");
       return [options] { return run(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
