// dsv3 forward: full-sequence logits for every `input_ids_<name>` of a safetensors file. This is
// the contract the parity checks use: logits_<name> F32 [T, vocab] and, with an MTP module,
// mtp_logits_<name> F32 [T-1, vocab]. With --prefill-chunk N the same logits come from the
// engine's cached step fed N tokens at a time (engine/chunked_forward.h), so chunked prefill past
// a cached prefix is checked against the same reference.
#include <fmt/core.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "core/error.h"
#include "engine/chunked_forward.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace dsv3::cli {
namespace {

struct ForwardOptions {
  std::string model, input, output;
  std::optional<std::int64_t> prefill_chunk;  // unset: one full-sequence forward per input
  std::string cache_dtype = "f32";
};

int run_forward(const ForwardOptions& options) {
  const std::string& input = options.input;
  if (options.prefill_chunk && *options.prefill_chunk <= 0)
    fail("--prefill-chunk must be a positive number of tokens, got {}", *options.prefill_chunk);
  const Model model = load_model(options.model);
  const auto in = SafetensorsFile::open(input);
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<std::pair<std::string, std::vector<float>>> results;
  for (const auto& [name, view] : in->tensors()) {
    if (!name.starts_with("input_ids_")) continue;
    const std::string suffix = name.substr(std::strlen("input_ids_"));
    const std::vector<std::int64_t> ids = read_token_ids(view);
    if (ids.empty()) fail("{}: tensor {} is empty", input, name);
    const auto start = std::chrono::steady_clock::now();
    const bool has_mtp = !model.weights().mtp.empty() && ids.size() >= 2;  // T-1 rows
    std::vector<float> logits, mtp;
    std::string how;
    if (options.prefill_chunk) {
      const DType cache_dtype = options.cache_dtype == "bf16" ? DType::BF16 : DType::F32;
      ChunkedForwardOutput out = forward_in_chunks(model, ids, {.chunk = *options.prefill_chunk, .cache_dtype = cache_dtype});
      logits = std::move(out.logits);
      mtp = std::move(out.mtp_logits);
      how = fmt::format(" in chunks of {} ({} cache)", *options.prefill_chunk, dtype_name(cache_dtype));
    } else {
      ForwardOutput out = model.forward(ids);
      if (has_mtp) mtp = model.mtp_logits(ids, out.hidden);
      logits = std::move(out.logits);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "forward {}: {} tokens{} in {:.3f} s ({:.0f} tokens/s)\n", suffix, ids.size(), how, seconds,
               static_cast<double>(ids.size()) / seconds);
    results.emplace_back("logits_" + suffix, std::move(logits));
    if (has_mtp) results.emplace_back("mtp_logits_" + suffix, std::move(mtp));
  }
  if (results.empty()) fail("{}: no input_ids_<name> tensors", input);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, values] : results)
    tensors.push_back(tensor_to_write(name, {static_cast<std::int64_t>(values.size()) / vocab, vocab}, values));
  write_safetensors(options.output, tensors);
  return 0;
}

const bool registered = register_command(
    {"forward", "Full-sequence logits (and MTP logits) for the input_ids_<name> tensors of a safetensors file",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<ForwardOptions>();
       app.add_option("--model", options->model, "Model directory")->required();
       add_exact_flag(app);
       add_head_fp8_flag(app);
       app.add_option("--input", options->input, "Safetensors with input_ids_<name> (I64/I32 [T])")->required();
       app.add_option("--output", options->output, "Safetensors to write logits_<name> / mtp_logits_<name>")
           ->required();
       auto* chunk = app.add_option("--prefill-chunk", options->prefill_chunk,
                                    "Feed each sequence through the engine's cached step this many tokens at a time "
                                    "(default: one full-sequence forward)");
       app.add_option("--cache-dtype", options->cache_dtype, "KV cache precision of the chunked steps")
           ->check(CLI::IsMember({"f32", "bf16"}))
           ->capture_default_str()
           ->needs(chunk);
       return [options] { return run_forward(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
