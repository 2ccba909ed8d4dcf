// dsv3 bench: prefill and decode speed of a model on this machine, with and without MTP
// speculative decoding, next to the memory-bandwidth roofline measured in the same run.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <random>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "core/machine.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

namespace dsv3::cli {
namespace {

struct BenchOptions {
  std::string model;
  std::int64_t prompt_len = 512;
  std::int64_t gen_len = 128;
  std::int64_t batch = 1;
  std::int64_t mtp = 0;
  std::string cache_dtype = "bf16";
  std::uint64_t seed = 0;
  bool json = false;
};

struct Measurement {
  double prefill_seconds = 0.0;
  double first_token_seconds = 0.0;
  double decode_seconds = 0.0;
  std::int64_t decode_tokens = 0;
  std::vector<double> acceptance;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Weight bytes one decode step streams: the linear weights of everything a token activates, and
// the output head; one embedding row is negligible.
double bytes_per_decoded_token(const Weights& w) {
  const ModelConfig& c = w.config;
  const ParameterCount params = count_parameters(c);
  const double head = static_cast<double>(c.vocab_size * c.hidden_size);
  const double linear_bytes = static_cast<double>(dtype_size(w.layers.back().attention.o_proj.dtype));
  return (static_cast<double>(params.read_per_token) - head) * linear_bytes +
         head * static_cast<double>(dtype_size(w.lm_head.dtype));
}

Measurement run_once(const Model& model, const BenchOptions& options, std::int64_t mtp, const char* label) {
  const ModelConfig& c = model.config();
  EngineOptions engine_options;
  engine_options.cache_tokens = options.batch * (options.prompt_len + options.gen_len + mtp + 16);
  engine_options.cache_dtype = options.cache_dtype == "f32" ? DType::F32 : DType::BF16;
  check_cache_fits(fmt::format("--batch {} with --prompt-len {} and --gen-len {}", options.batch, options.prompt_len,
                               options.gen_len),
                   engine_options.cache_tokens, LatentCache::bytes_per_token(c, engine_options.cache_dtype));
  engine_options.prefill_chunk = options.prompt_len;
  engine_options.mtp_drafts = mtp;
  Engine engine(model, engine_options);
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(c.vocab_size - 1));
  for (std::int64_t b = 0; b < options.batch; ++b) {
    std::vector<std::int32_t> prompt(static_cast<std::size_t>(options.prompt_len));
    for (auto& id : prompt) id = token(rng);
    SamplingParams params;
    params.temperature = 0.0f;
    params.max_tokens = static_cast<std::int32_t>(options.gen_len);
    params.ignore_eos = true;  // a fixed amount of work
    engine.add(std::move(prompt), params);
  }
  Measurement run;
  const std::int64_t total = options.batch * options.gen_len;
  ProgressBar bar(label, total);
  std::int64_t produced = 0, first_tokens = 0;
  const auto start = Clock::now();
  Clock::time_point decode_start;
  while (engine.has_work()) {
    for (const TokenEvent& event : engine.step()) {
      (void)event;
      if (produced++ == 0) run.first_token_seconds = since(start);
    }
    if (first_tokens < options.batch) {  // prefill is done once every sequence has its first token
      first_tokens = std::min(produced, options.batch);
      if (first_tokens == options.batch) {
        run.prefill_seconds = since(start);
        decode_start = Clock::now();
      }
    }
    bar.set(produced);
  }
  run.decode_seconds = since(decode_start);
  run.decode_tokens = produced - options.batch;
  for (std::size_t i = 0; i < engine.speculation().drafted.size(); ++i)
    run.acceptance.push_back(engine.speculation().acceptance(i));
  return run;
}

int bench(const BenchOptions& options) {
  const auto load_start = Clock::now();
  const Model model = load_model(options.model, true);  // page faults are not what is measured
  const double load_seconds = since(load_start);
  const ModelConfig& c = model.config();
  if (options.prompt_len + options.gen_len + options.mtp > c.max_position_embeddings)
    fail("--prompt-len + --gen-len = {} exceeds the model's {} positions", options.prompt_len + options.gen_len,
         c.max_position_embeddings);
  if (options.mtp > 0 && model.weights().mtp.empty())
    fail("--mtp {} needs an MTP module, and {} has none", options.mtp, options.model);

  const Measurement plain = run_once(model, options, 0, "decode");
  const Measurement speculative =
      options.mtp > 0 ? run_once(model, options, options.mtp, "decode with MTP") : Measurement{};
  const std::int64_t peak_memory = peak_memory_bytes();  // before the bandwidth probe's buffer
  const double bandwidth = measure_read_bandwidth(std::int64_t{512} << 20);
  const double bytes_per_token = bytes_per_decoded_token(model.weights());
  // At batch B one decode step streams the weights once for B tokens.
  const double roofline = bandwidth / bytes_per_token * static_cast<double>(options.batch);

  auto prefill_rate = [&](const Measurement& r) { return static_cast<double>(options.batch * options.prompt_len) / r.prefill_seconds; };
  auto decode_rate = [&](const Measurement& r) { return static_cast<double>(r.decode_tokens) / r.decode_seconds; };
  const std::string arithmetic =
      kernels::exact_arithmetic()
          ? std::string("exact (FP32 activations throughout)")
          : fmt::format("fast: oneDNN {} GEMM from {} rows ({} at {} x {} x {})",
                        kernels::gemm_uses_bf16() ? "BF16 x BF16 -> FP32" : "FP32", kernels::min_gemm_rows(),
                        kernels::gemm_implementation(options.prompt_len, c.intermediate_size, c.hidden_size),
                        options.prompt_len, c.hidden_size, c.intermediate_size);
  nlohmann::json report = {
      {"machine", {{"cpu", cpu_model()}, {"features", cpu_features()}, {"threads", ThreadPool::global().size()}}},
      {"model", options.model},
      {"arithmetic", arithmetic},
      {"weights_dtype", dtype_name(model.weights().layers.back().attention.o_proj.dtype)},
      {"prompt_len", options.prompt_len},
      {"gen_len", options.gen_len},
      {"batch", options.batch},
      {"load_seconds", load_seconds},
      {"read_bandwidth_gb_s", bandwidth / 1e9},
      {"weight_bytes_per_token", bytes_per_token},
      {"decode_roofline_tokens_s", roofline},
      {"prefill_tokens_s", prefill_rate(plain)},
      {"time_to_first_token_s", plain.first_token_seconds},
      {"decode_tokens_s", decode_rate(plain)},
      {"decode_vs_roofline", decode_rate(plain) / roofline},
      {"peak_memory_bytes", peak_memory},
  };
  if (options.mtp > 0) {
    report["mtp"] = {{"drafts", options.mtp},
                     {"decode_tokens_s", decode_rate(speculative)},
                     {"decode_speedup", decode_rate(speculative) / decode_rate(plain)},
                     {"acceptance_by_position", speculative.acceptance}};
  }
  if (options.json) {
    std::cout << report.dump(2) << '\n';
    return 0;
  }
  fmt::print("machine        {} ({}), {} threads\n", cpu_model(), cpu_features(), ThreadPool::global().size());
  fmt::print("model          {} ({} weights), loaded in {:.2f} s\n", options.model,
             report["weights_dtype"].get<std::string>(), load_seconds);
  fmt::print("arithmetic     {}\n", arithmetic);
  fmt::print("workload       batch {}, prompt {} tokens, generate {} tokens, greedy, {} cache\n", options.batch,
             options.prompt_len, options.gen_len, options.cache_dtype);
  fmt::print("roofline       {:.1f} GB/s read bandwidth / {:.1f} MB of weights per decode step = {:.1f} tokens/s\n",
             bandwidth / 1e9, bytes_per_token / 1e6, roofline);
  fmt::print("prefill        {:.1f} tokens/s, time to first token {:.3f} s\n", prefill_rate(plain),
             plain.first_token_seconds);
  fmt::print("decode         {:.1f} tokens/s = {:.2f} of the roofline\n", decode_rate(plain), decode_rate(plain) / roofline);
  if (options.mtp > 0) {
    std::string acceptance;
    for (std::size_t i = 0; i < speculative.acceptance.size(); ++i)
      acceptance += fmt::format("{}{:.0f}%", i ? " / " : "", 100.0 * speculative.acceptance[i]);
    fmt::print("decode + MTP   {:.1f} tokens/s = {:.2f}x without MTP; {} drafts, acceptance by position {}\n",
               decode_rate(speculative), decode_rate(speculative) / decode_rate(plain), options.mtp, acceptance);
  }
  fmt::print("peak memory    {:.2f} GB\n", static_cast<double>(peak_memory) / 1e9);
  return 0;
}

const bool registered = register_command(
    {"bench", "Measure prefill and decode speed (with and without MTP) against the bandwidth roofline",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<BenchOptions>();
       app.add_option("--model", options->model, "Model directory")->required();
       constexpr std::int64_t most_int = std::numeric_limits<std::int32_t>::max();
       add_number(app, "--prompt-len", options->prompt_len, "Prompt tokens per sequence", 1, most_int)
           ->capture_default_str();
       add_number(app, "--gen-len", options->gen_len, "Tokens generated per sequence", 1, most_int)
           ->capture_default_str();
       add_number(app, "--batch", options->batch, "Sequences decoded together", 1, most_int)->capture_default_str();
       add_number(app, "--mtp", options->mtp, "Also run with this many MTP drafts per step, for the ratio", 0,
                  kMostDrafts)
           ->capture_default_str();
       app.add_option("--cache-dtype", options->cache_dtype, "KV cache precision")
           ->check(CLI::IsMember({"bf16", "f32"}))->capture_default_str();
       add_number(app, "--seed", options->seed, "Seed of the random prompts")->capture_default_str();
       app.add_flag("--json", options->json, "Print the figures as JSON");
       add_exact_flag(app);
       return [options] { return bench(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
