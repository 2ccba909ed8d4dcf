#pragma once
// The model a command runs when it is given no --model: dsv3's own default model, models/sotu
// (trained by scripts/train-default-model.sh from models/sotu/recipe).
#include <CLI/CLI.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace dsv3::cli {

// $DSV3_MODEL when set; else the first of <executable>/../models/sotu (build/dsv3 in a checkout)
// and the source tree's models/sotu that holds a config.json; else the source tree's path.
std::filesystem::path default_model_dir();

// The arguments with `--model DIR` added when they run a subcommand of `app` that takes --model and
// name none (help requests excepted), saying so on stderr. Throws an Error naming the script that
// makes the default model when it is absent.
std::vector<std::string> with_default_model(const CLI::App& app, std::vector<std::string> arguments);

}  // namespace dsv3::cli
