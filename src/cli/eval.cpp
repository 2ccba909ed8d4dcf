// dsv3 eval: held-out bits per byte of a model against a unigram baseline (train::bits_per_byte).
#include <fmt/core.h>

#include <fstream>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "core/error.h"
#include "train/train.h"

namespace dsv3::cli {
namespace {

struct EvalOptions {
  std::string model, tokenizer, out;
  std::vector<std::string> corpus, baseline_corpus;
  std::int64_t context = 256;
};

int run_eval(const EvalOptions& options) {
  namespace fs = std::filesystem;
  const std::string tokenizer_dir = options.tokenizer.empty() ? options.model : options.tokenizer;
  if (!fs::exists(fs::path(tokenizer_dir) / "tokenizer.json"))
    fail("{} has no tokenizer.json: pass --tokenizer DIR", tokenizer_dir);
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_dir);
  const Model model = load_model(options.model);
  const train::BitsPerByte r = train::bits_per_byte(model, tokenizer, train::read_documents(options.corpus),
                                                    train::read_documents(options.baseline_corpus), options.context);
  fmt::print("held-out           {} documents, {} bytes, {} tokens ({:.2f} bytes per token)\n", r.documents, r.bytes,
             r.tokens, static_cast<double>(r.bytes) / static_cast<double>(r.tokens));
  fmt::print("model              {:.4f} bits per byte (context {} tokens)\n", r.model_bits_per_byte(), r.context);
  fmt::print("unigram baseline   {:.4f} bits per byte (add-one smoothed counts of {} baseline tokens)\n",
             r.unigram_bits_per_byte(), r.baseline_tokens);
  fmt::print("reduction          {:.1f}% fewer bits than the unigram baseline\n", 100.0 * r.reduction());
  if (!options.out.empty()) {
    std::ofstream out(options.out);
    if (!out) fail("--out {}: cannot write", options.out);
    out << r.to_json().dump(2) << "\n";
    if (!out) fail("--out {}: write failed", options.out);
  }
  return 0;
}

const bool registered = register_command(
    {"eval", "Held-out bits per byte of a model, and of a unigram baseline counted on other text",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<EvalOptions>();
       app.add_option("--model", options->model, "Model directory")->required();
       app.add_option("--tokenizer", options->tokenizer, "Tokenizer directory (default: the model directory)");
       app.add_option("--corpus", options->corpus, "Held-out text: files or directories (as dsv3 train reads them)")
           ->required()
           ->expected(1, -1);
       app.add_option("--baseline-corpus", options->baseline_corpus,
                      "The text the unigram baseline counts tokens on (the training text)")
           ->required()
           ->expected(1, -1);
       app.add_option("--context", options->context, "Tokens per window (windows advance by half of it)")
           ->capture_default_str();
       app.add_option("--out", options->out, "Also write the figures as JSON here (the default model keeps eval.json)");
       add_exact_flag(app);
       add_head_fp8_flag(app);
       return [options] { return run_eval(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
