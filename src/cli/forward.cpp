// dsv3 forward: full-sequence logits for every `input_ids_<name>` of a safetensors file. This is
// the contract the parity checks use: logits_<name> F32 [T, vocab] and, with an MTP module,
// mtp_logits_<name> F32 [T-1, vocab].
#include <fmt/core.h>

#include <chrono>
#include <cstring>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace dsv3::cli {
namespace {

int run_forward(const std::string& model_dir, const std::string& input, const std::string& output) {
  const Model model = load_model(model_dir);
  const auto in = SafetensorsFile::open(input);
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<std::pair<std::string, std::vector<float>>> results;
  for (const auto& [name, view] : in->tensors()) {
    if (!name.starts_with("input_ids_")) continue;
    const std::string suffix = name.substr(std::strlen("input_ids_"));
    const std::vector<std::int64_t> ids = read_token_ids(view);
    if (ids.empty()) fail("{}: tensor {} is empty", input, name);
    const auto start = std::chrono::steady_clock::now();
    ForwardOutput out = model.forward(ids);
    const bool has_mtp = !model.weights().mtp.empty() && ids.size() >= 2;  // T-1 rows
    std::vector<float> mtp = has_mtp ? model.mtp_logits(ids, out.hidden) : std::vector<float>{};
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "forward {}: {} tokens in {:.3f} s ({:.0f} tokens/s)\n", suffix, ids.size(), seconds,
               static_cast<double>(ids.size()) / seconds);
    results.emplace_back("logits_" + suffix, std::move(out.logits));
    if (has_mtp) results.emplace_back("mtp_logits_" + suffix, std::move(mtp));
  }
  if (results.empty()) fail("{}: no input_ids_<name> tensors", input);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, values] : results)
    tensors.push_back(tensor_to_write(name, {static_cast<std::int64_t>(values.size()) / vocab, vocab}, values));
  write_safetensors(output, tensors);
  return 0;
}

const bool registered = register_command(
    {"forward", "Full-sequence logits (and MTP logits) for the input_ids_<name> tensors of a safetensors file",
     [](CLI::App& app) -> Run {
       struct Options {
         std::string model, input, output;
       };
       auto options = std::make_shared<Options>();
       app.add_option("--model", options->model, "Model directory")->required();
       app.add_option("--input", options->input, "Safetensors with input_ids_<name> (I64/I32 [T])")->required();
       app.add_option("--output", options->output, "Safetensors to write logits_<name> / mtp_logits_<name>")
           ->required();
       return [options] { return run_forward(options->model, options->input, options->output); };
     }});

}  // namespace
}  // namespace dsv3::cli
