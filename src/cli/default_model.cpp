#include "cli/default_model.h"

#include <fmt/core.h>

#include <cstdlib>

#include "cli/command.h"
#include "core/error.h"

namespace dsv3::cli {

namespace fs = std::filesystem;

fs::path default_model_dir() {
  if (const char* chosen = std::getenv("DSV3_MODEL"); chosen && *chosen) return chosen;
  const fs::path source = fs::path(DSV3_SOURCE_DIR) / "models" / "sotu";
  std::error_code error;
  const fs::path executable = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    const fs::path beside = executable.parent_path().parent_path() / "models" / "sotu";
    if (fs::exists(beside / "config.json")) return beside;
  }
  return source;
}

std::vector<std::string> with_default_model(const CLI::App& app, std::vector<std::string> arguments) {
  if (arguments.size() < 2) return arguments;
  const CLI::App* command = nullptr;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    if (sub->get_name() == arguments[1]) command = sub;
  if (!command || !command->get_option_no_throw("--model")) return arguments;
  for (std::size_t i = 2; i < arguments.size(); ++i) {
    const std::string& a = arguments[i];
    if (a == "--model" || a.starts_with("--model=") || a == "--help" || a == "-h") return arguments;
  }
  const fs::path model = default_model_dir();
  if (!fs::exists(model / "config.json"))
    fail("no --model given, and the default model is not at {}{}: make it with scripts/train-default-model.sh, or "
         "pass --model DIR",
         model.string(), std::getenv("DSV3_MODEL") ? " (from DSV3_MODEL)" : "");
  if (communicator().rank() == 0) fmt::print(stderr, "dsv3: no --model given; using the default model at {}\n", model.string());
  arguments.insert(arguments.begin() + 2, {"--model", model.string()});
  return arguments;
}

}  // namespace dsv3::cli
