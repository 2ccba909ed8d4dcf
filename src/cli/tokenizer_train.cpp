// dsv3 tokenizer train: trains a DeepSeek-V3-style byte-level BPE tokenizer on text files.
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "tokenizer/bpe_trainer.h"

namespace dsv3::cli {
namespace {

struct TrainArguments {
  std::vector<std::string> corpus;
  std::size_t vocab_size = 0;
  std::string out;
  std::string chat_template_from;
};

// The chat template to carry over: a tokenizer_config.json's `chat_template`, or a Jinja file.
std::string read_chat_template(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--chat-template-from '{}': cannot open", path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!path.ends_with(".json")) return text;
  const nlohmann::json config = nlohmann::json::parse(text, nullptr, false);
  if (config.is_discarded()) fail("--chat-template-from '{}': not valid JSON", path);
  if (!config.contains("chat_template") || !config["chat_template"].is_string())
    fail("--chat-template-from '{}': has no string 'chat_template'", path);
  return config["chat_template"].get<std::string>();
}

int run_train(const TrainArguments& arguments) {
  BpeTrainerOptions options;
  options.vocab_size = arguments.vocab_size;
  if (!arguments.chat_template_from.empty()) options.chat_template = read_chat_template(arguments.chat_template_from);
  // A progress line only for a person watching; logs and pipes stay clean.
  const bool show_progress = isatty(STDERR_FILENO) != 0;
  if (show_progress) {
    options.on_progress = [](std::size_t done, std::size_t total) {
      fmt::print(stderr, "\rtraining BPE: {} / {} merges", done, total);
      std::fflush(stderr);
    };
  }
  const auto start = std::chrono::steady_clock::now();
  const TrainedBpe model = train_bpe(arguments.corpus, options);
  if (show_progress) fmt::print(stderr, "\n");
  write_tokenizer_files(model, arguments.out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (model.corpus_exhausted)
    fmt::print(stderr,
               "dsv3: warning: the corpus ran out of pairs to merge: the vocabulary has {} tokens, not the {} "
               "asked for\n",
               model.size(), arguments.vocab_size);
  fmt::print("wrote {0}/tokenizer.json and {0}/tokenizer_config.json: {1} tokens ({2} merges) from {3} bytes, "
             "{4} words ({5} distinct) in {6:.1f} s\n",
             arguments.out, model.size(), model.merges.size(), model.corpus_bytes, model.corpus_words,
             model.distinct_words, seconds);
  return 0;
}

Run setup(CLI::App& app) {
  auto arguments = std::make_shared<TrainArguments>();
  app.require_subcommand(1);
  CLI::App* train = app.add_subcommand(
      "train", "Train a byte-level BPE tokenizer with DeepSeek-V3's pre-tokenizer and special tokens");
  train->add_option("--corpus", arguments->corpus, "UTF-8 text files to train on")->required()->expected(1, -1);
  add_number(*train, "--vocab-size", arguments->vocab_size,
             "Total vocabulary size, special tokens and the 256 byte symbols included", 1,
             std::numeric_limits<std::int32_t>::max())
      ->required();
  train->add_option("--out", arguments->out, "Directory to write tokenizer.json and tokenizer_config.json to")
      ->required();
  train->add_option("--chat-template-from", arguments->chat_template_from,
                    "Copy the chat template of this tokenizer_config.json (or .jinja file) into the output");
  return [arguments, train]() { return train->parsed() ? run_train(*arguments) : 1; };
}

const bool registered =
    register_command({"tokenizer", "Tokenizer tools: `dsv3 tokenizer train` trains a BPE tokenizer", setup});

}  // namespace
}  // namespace dsv3::cli
