// dsv3 bench: prefill and decode speed of a model on this machine, with and without MTP
// speculative decoding, next to the memory-bandwidth roofline measured in the same run.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <random>
#include <cstring>
#include <vector>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "core/machine.h"
#include "core/numeric.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "kernels/profiling.h"
#include "model/weights.h"
#include "model/distributed.h"
#include "model/shard.h"

namespace dsv3::cli {
namespace {

struct BenchOptions {
  std::string model;
  std::int64_t prompt_len = 512;
  std::int64_t gen_len = 128;
  std::vector<std::int64_t> batches = {1};  // --batch 1,4,16: one run each
  std::int64_t mtp = 0;
  std::int64_t passes = 3;  // decode passes per batch size; the fastest is reported
  std::string cache_dtype = "bf16";
  std::uint64_t seed = 0;
  bool json = false;
  bool profile = false;
};

// Where one phase's step time went, from the profiling backend.
struct PhaseProfile {
  std::int64_t steps = 0;
  double step_seconds = 0.0;  // wall time of the engine's steps
  std::vector<kernels::OpProfile> ops;

  // A total over the phase's steps, per step (0 steps count as 1).
  double per_step(double total) const { return total / static_cast<double>(std::max<std::int64_t>(steps, 1)); }
  // The steps' time outside every op: the engine's own work (scheduling, sampling, host loops).
  double outside_ops_seconds() const {
    double in_ops = 0.0;
    for (const kernels::OpProfile& op : ops) in_ops += op.seconds;
    return step_seconds - in_ops;
  }
};

struct Measurement {
  double prefill_seconds = 0.0;
  double first_token_seconds = 0.0;
  double decode_seconds = 0.0;     // of the fastest decode pass
  std::int64_t decode_tokens = 0;  // of the fastest decode pass
  std::vector<double> decode_rates;  // every pass's decode tokens/s, in order
  std::vector<double> acceptance;
  PhaseProfile prefill_profile, decode_profile;
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

// Across ranks, the share of a decode step's weight bytes (and so of its linear work) this rank
// holds: its part of each tensor a step reads, the routed experts counted at k/E as in
// read_per_token; the embedding (one row per token) and the MTP module (not run) left out.
double rank_share(const Weights& w) {
  const ModelConfig& c = w.config;
  const Shard whole = whole_shard(c);
  double mine = 0, all = 0;
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    const TensorView* view = w.store.find(t.name);
    if (!view || t.kind != CheckpointTensor::Kind::matrix || t.mtp_depth >= 0 ||
        t.role == CheckpointTensor::Role::embed_tokens)
      continue;
    const double read = t.mlp == CheckpointTensor::Mlp::routed_expert
                            ? static_cast<double>(c.num_experts_per_tok) / static_cast<double>(c.n_routed_experts)
                            : 1.0;
    mine += read * static_cast<double>(held_bytes(t, view->dtype, w.shard, c));
    all += read * static_cast<double>(held_bytes(t, view->dtype, whole, c));
  }
  return all > 0 ? mine / all : 1.0;
}

// One batch size's engine and prompts. Its decode passes interleave with the other batch sizes'
// (pass 1 of each, then pass 2 of each, ...), so that every size meets the host in much the same
// state, and the fastest pass of each is its figure.
class BatchRun {
 public:
  BatchRun(const Model& model, const BenchOptions& options, std::int64_t batch, std::int64_t mtp)
      : options_(options), batch_(batch) {
    const ModelConfig& c = model.config();
    EngineOptions engine_options;
    engine_options.cache_tokens = batch * (options.prompt_len + options.gen_len + mtp + 16);
    engine_options.cache_dtype = options.cache_dtype == "f32" ? DType::F32 : DType::BF16;
    check_cache_fits(fmt::format("--batch {} with --prompt-len {} and --gen-len {}", batch, options.prompt_len,
                                 options.gen_len),
                     engine_options.cache_tokens, LatentCache::bytes_per_token(c, engine_options.cache_dtype));
    engine_options.prefill_chunk = options.prompt_len;
    // Every prompt in one prefill step, as the figures have always been measured.
    engine_options.max_step_tokens = batch * (options.prompt_len + 1 + mtp);
    engine_options.mtp_drafts = mtp;
    engine_ = std::make_unique<Engine>(model, engine_options);
    std::mt19937_64 rng(options.seed);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(c.vocab_size - 1));
    const auto random_prompts = [&] {
      std::vector<std::vector<std::int32_t>> prompts(static_cast<std::size_t>(batch));
      for (auto& prompt : prompts) {
        prompt.resize(static_cast<std::size_t>(options.prompt_len));
        for (auto& id : prompt) id = token(rng);
      }
      return prompts;
    };
    // One warm-up prefill of the same shape first, as in a server that has answered a request: the
    // step's scratch (the workspace) has grown, so the timed steps do not pay its first page faults.
    SamplingParams warm_up;
    warm_up.temperature = 0.0f;
    warm_up.max_tokens = 1;
    warm_up.ignore_eos = true;
    for (auto& prompt : random_prompts()) engine_->add(std::move(prompt), warm_up);
    while (engine_->has_work()) engine_->step();
    prompts_ = random_prompts();
  }

  // The prompts added and decoded once more: the first pass prefills them (its prefill is the
  // figure), later ones find them in the prefix cache (their last block aside) and decode the same
  // amount again. With `profiler` (the backend the model computes on), the pass's op times are
  // kept with its phases.
  void pass(ProgressBar& bar, std::int64_t& produced, kernels::ProfilingBackend* profiler) {
    SamplingParams params;
    params.temperature = 0.0f;
    params.max_tokens = static_cast<std::int32_t>(options_.gen_len);
    params.ignore_eos = true;  // a fixed amount of work
    const bool first_pass = result.decode_rates.empty();
    for (const auto& prompt : prompts_) engine_->add(prompt, params);
    PhaseProfile prefill, decode;
    std::int64_t pass_produced = 0, first_tokens = 0;
    if (profiler) profiler->reset();
    const auto start = Clock::now();
    Clock::time_point decode_start;
    double prefill_seconds = 0.0, first_token_seconds = 0.0;
    while (engine_->has_work()) {
      const auto step_start = Clock::now();
      for (const TokenEvent& event : engine_->step()) {
        (void)event;
        if (pass_produced++ == 0) first_token_seconds = since(start);
      }
      PhaseProfile& phase = first_tokens < batch_ ? prefill : decode;
      phase.steps += 1;
      phase.step_seconds += since(step_start);
      if (first_tokens < batch_) {  // prefill is done once every sequence has its first token
        first_tokens = std::min(pass_produced, batch_);
        if (first_tokens == batch_) {
          prefill_seconds = since(start);
          if (profiler) {
            prefill.ops = profiler->entries();
            profiler->reset();
          }
          decode_start = Clock::now();
        }
      }
      bar.set(produced + pass_produced);
    }
    produced += pass_produced;
    if (profiler) decode.ops = profiler->entries();
    const double decode_seconds = since(decode_start);
    const std::int64_t decode_tokens = pass_produced - batch_;
    const double rate = static_cast<double>(decode_tokens) / decode_seconds;
    if (first_pass) {
      result.prefill_seconds = prefill_seconds;
      result.first_token_seconds = first_token_seconds;
      result.prefill_profile = std::move(prefill);
    }
    if (first_pass || rate > static_cast<double>(result.decode_tokens) / result.decode_seconds) {
      result.decode_seconds = decode_seconds;
      result.decode_tokens = decode_tokens;
      result.decode_profile = std::move(decode);
    }
    result.decode_rates.push_back(rate);
    result.acceptance.clear();
    for (std::size_t i = 0; i < engine_->speculation().drafted.size(); ++i)
      result.acceptance.push_back(engine_->speculation().acceptance(i));
  }

  std::int64_t batch() const { return batch_; }

  Measurement result;

 private:
  const BenchOptions& options_;
  std::int64_t batch_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::vector<std::int32_t>> prompts_;
};

// Read bandwidth, robustly on a shared host: the best of several passes over a buffer far larger
// than the last-level cache (4x it, at least 1 GiB, at most an eighth of the memory).
double read_bandwidth() {
  std::int64_t bytes = std::max<std::int64_t>(std::int64_t{1} << 30, 4 * last_level_cache_bytes());
  if (const std::int64_t memory = physical_memory_bytes(); memory > 0) bytes = std::min(bytes, memory / 8);
  return measure_read_bandwidth(bytes, 5);
}

// FLOP/s of the GEMM many-row linears run on (oneDNN through kernels::linear, over the thread pool
// as prefill runs it) at one representative shape: [rows, in] x [in, out] with a BF16 weight, best
// of several runs after a warm-up.
double gemm_rate(std::int64_t rows, std::int64_t out, std::int64_t in, bool bf16) {
  const bool was_exact = kernels::exact_arithmetic(), was_bf16 = kernels::gemm_uses_bf16();
  kernels::set_exact_arithmetic(false);
  kernels::set_gemm_bf16(bf16);
  std::vector<std::byte> storage(static_cast<std::size_t>(out * in) * 2);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (std::size_t i = 0; i < storage.size(); i += 2) {
    const std::uint16_t bits = float_to_bf16(normal(rng));
    std::memcpy(storage.data() + i, &bits, 2);
  }
  Matrix weight;
  weight.name = "bench.gemm";
  weight.dtype = DType::BF16;
  weight.rows = out;
  weight.cols = in;
  weight.data = storage.data();
  std::vector<float> x(static_cast<std::size_t>(rows * in)), y(static_cast<std::size_t>(rows * out));
  for (float& v : x) v = normal(rng);
  double best = 0.0;
  for (int pass = 0; pass < 6; ++pass) {
    const auto start = Clock::now();
    kernels::linear(x.data(), rows, weight, y.data());
    const double seconds = since(start);
    if (pass > 0) best = std::max(best, 2.0 * static_cast<double>(rows * out * in) / seconds);
  }
  kernels::set_gemm_bf16(was_bf16);
  kernels::set_exact_arithmetic(was_exact);
  return best;
}

// ", passes a / b / c" for a run of several decode passes (the fastest is its figure).
std::string passes_note(const Measurement& run) {
  if (run.decode_rates.size() < 2) return {};
  std::string note = "; passes";
  for (std::size_t i = 0; i < run.decode_rates.size(); ++i)
    note += fmt::format("{}{:.1f}", i ? " / " : " ", run.decode_rates[i]);
  return note;
}

// One phase's table: per step, each op's time and share, the rows it was given, and for ops that
// read weights the rate they streamed them at; then the time outside every op (the engine's own
// work: scheduling, sampling, host loops).
void print_profile(const char* phase, const PhaseProfile& profile, double bandwidth) {
  if (profile.steps == 0) return;
  const double steps = static_cast<double>(profile.steps), outside = profile.outside_ops_seconds();
  fmt::print("\nprofile, {}: {} steps, {:.2f} ms per step; {:.1f}% in ops, {:.2f} ms per step outside them\n", phase,
             profile.steps, 1e3 * profile.per_step(profile.step_seconds),
             100.0 * (profile.step_seconds - outside) / profile.step_seconds, 1e3 * profile.per_step(outside));
  fmt::print("  {:<40} {:>9} {:>7} {:>8} {:>9} {:>13}\n", "op", "ms/step", "share", "calls", "rows/call",
             "weights GB/s");
  for (const kernels::OpProfile& op : profile.ops) {
    const double share = op.seconds / profile.step_seconds;
    if (share < 0.001) continue;
    const std::string rate = op.weight_bytes > 0.0
                                 ? fmt::format("{:.1f} ({:.2f})", op.weight_bytes / op.seconds / 1e9,
                                               op.weight_bytes / op.seconds / bandwidth)
                                 : std::string();
    fmt::print("  {:<40} {:>9.3f} {:>6.1f}% {:>8.1f} {:>9.1f} {:>13}\n", op.op, 1e3 * profile.per_step(op.seconds),
               100.0 * share, static_cast<double>(op.calls) / steps,
               static_cast<double>(op.rows) / static_cast<double>(op.calls), rate);
  }
  fmt::print("  {:<40} {:>9.3f} {:>6.1f}%\n", "(outside the ops)", 1e3 * profile.per_step(outside),
             100.0 * outside / profile.step_seconds);
}

// The same figures as JSON: per step, the step's time, the time outside the ops, and each op's.
nlohmann::json profile_json(const PhaseProfile& profile) {
  nlohmann::json ops = nlohmann::json::array();
  for (const kernels::OpProfile& op : profile.ops)
    ops.push_back({{"op", op.op},
                   {"ms_per_step", 1e3 * profile.per_step(op.seconds)},
                   {"calls_per_step", profile.per_step(static_cast<double>(op.calls))},
                   {"rows_per_call", static_cast<double>(op.rows) / static_cast<double>(std::max<std::int64_t>(op.calls, 1))},
                   {"weight_bytes_per_step", profile.per_step(op.weight_bytes)}});
  return {{"steps", profile.steps},
          {"step_ms", 1e3 * profile.per_step(profile.step_seconds)},
          {"outside_ops_ms", 1e3 * profile.per_step(profile.outside_ops_seconds())},
          {"ops", ops}};
}

// With several batch sizes profiled: each op's time per decode step at every size, and at each
// size after the first its multiple of the first's; a step's multiple bounds the aggregate speed
// (B sequences for the step's time). Ops under 1% of every size's step are left out.
void print_profile_comparison(const std::vector<std::int64_t>& batches, const std::vector<Measurement>& runs) {
  std::vector<std::string> names;
  for (const Measurement& run : runs)
    for (const kernels::OpProfile& op : run.decode_profile.ops)
      if (op.seconds >= 0.01 * run.decode_profile.step_seconds &&
          std::find(names.begin(), names.end(), op.op) == names.end())
        names.push_back(op.op);
  const auto per_step = [&](const Measurement& run, const std::string& name) {
    for (const kernels::OpProfile& op : run.decode_profile.ops)
      if (op.op == name) return 1e3 * run.decode_profile.per_step(op.seconds);
    return 0.0;
  };
  std::string header = fmt::format("  {:<40}", "ms per decode step, batch");
  for (std::size_t i = 0; i < batches.size(); ++i)
    header += i == 0 ? fmt::format(" {:>9}", batches[i]) : fmt::format(" {:>9} {:>6}", batches[i], "x");
  fmt::print("\nprofile, decode by batch size\n{}\n", header);
  const auto row = [&](const std::string& label, auto&& value) {
    std::string line = fmt::format("  {:<40}", label);
    const double first = value(runs.front());
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const double v = value(runs[i]);
      line += i == 0 ? fmt::format(" {:>9.3f}", v)
                     : fmt::format(" {:>9.3f} {:>6}", v, first > 0 ? fmt::format("{:.2f}", v / first) : "-");
    }
    fmt::print("{}\n", line);
  };
  for (const std::string& name : names) row(name, [&](const Measurement& run) { return per_step(run, name); });
  row("(outside the ops)",
      [](const Measurement& run) { return 1e3 * run.decode_profile.per_step(run.decode_profile.outside_ops_seconds()); });
  row("(the step)", [](const Measurement& run) { return 1e3 * run.decode_profile.per_step(run.decode_profile.step_seconds); });
}

int bench(const BenchOptions& options) {
  const auto load_start = Clock::now();
  // --profile: the model computes on a backend that times every op; each batch size's passes keep
  // their own op times (not the MTP run's).
  kernels::ProfilingBackend profiler(kernels::default_backend());
  const Model model = load_model(options.model, true,  // page faults are not what is measured
                                 options.profile ? static_cast<const kernels::Backend&>(profiler)
                                                 : kernels::default_backend());
  const double load_seconds = since(load_start);
  const ModelConfig& c = model.config();
  // Measured by each rank across its load (resident memory before and after), not computed.
  dist::Communicator& ranks = communicator();
  const std::vector<std::int64_t> resident_bytes = resident_weight_bytes(model, ranks);
  std::string resident;
  for (const std::int64_t bytes : resident_bytes) resident += fmt::format(" {:.1f} MB", static_cast<double>(bytes) / 1e6);
  if (options.prompt_len + options.gen_len + options.mtp > c.max_position_embeddings)
    fail("--prompt-len + --gen-len = {} exceeds the model's {} positions", options.prompt_len + options.gen_len,
         c.max_position_embeddings);
  if (options.mtp > 0 && model.weights().mtp.empty())
    fail("--mtp {} needs an MTP module, and {} has none", options.mtp, options.model);

  const double bandwidth_before = read_bandwidth();
  // The GEMM rate at prefill's largest linear shape (the dense MLP), the prompt's rows (512 when
  // the prompt is too short for the GEMM path).
  const std::int64_t gemm_rows = std::max(options.prompt_len, kernels::min_gemm_rows());
  const double gemm_f32 = gemm_rate(gemm_rows, c.intermediate_size, c.hidden_size, false);
  const double gemm_bf16 =
      kernels::gemm_bf16_supported() ? gemm_rate(gemm_rows, c.intermediate_size, c.hidden_size, true) : 0.0;
  // Every batch size's run (and the MTP run at the first size), their passes interleaved.
  std::vector<std::unique_ptr<BatchRun>> batch_runs;
  for (const std::int64_t batch : options.batches)
    batch_runs.push_back(std::make_unique<BatchRun>(model, options, batch, 0));
  if (options.mtp > 0) batch_runs.push_back(std::make_unique<BatchRun>(model, options, options.batches.front(), options.mtp));
  std::int64_t total_tokens = 0;
  for (const auto& run : batch_runs) total_tokens += options.passes * run->batch() * options.gen_len;
  {
    ProgressBar bar(options.passes > 1 ? fmt::format("decode, {} passes", options.passes) : "decode", total_tokens);
    std::int64_t produced = 0;
    for (std::int64_t pass = 0; pass < options.passes; ++pass)
      for (std::size_t i = 0; i < batch_runs.size(); ++i)
        batch_runs[i]->pass(bar, produced, options.profile && i < options.batches.size() ? &profiler : nullptr);
  }
  std::vector<Measurement> runs;
  for (std::size_t i = 0; i < options.batches.size(); ++i) runs.push_back(std::move(batch_runs[i]->result));
  const Measurement speculative = options.mtp > 0 ? std::move(batch_runs.back()->result) : Measurement{};
  batch_runs.clear();
  const std::int64_t peak_memory = peak_memory_bytes();  // before the bandwidth probe's buffer
  const double bandwidth_after = read_bandwidth();
  const double bandwidth = std::max(bandwidth_before, bandwidth_after);
  // Across ranks each rank streams (and multiplies) only its share, at the rate it measured.
  const double share = ranks.size() > 1 ? rank_share(model.weights()) : 1.0;
  const double bytes_per_token = share * bytes_per_decoded_token(model.weights());
  // Prefill's linear work per prompt token (the output head runs on the last row only; attention
  // is not counted).
  const ParameterCount params = count_parameters(c);
  const double prefill_flop_per_token =
      share * 2.0 * static_cast<double>(params.read_per_token - c.vocab_size * c.hidden_size);
  const double gemm_in_use = kernels::exact_arithmetic() || !kernels::gemm_uses_bf16() ? gemm_f32 : gemm_bf16;

  const Measurement& plain = runs.front();
  const std::int64_t batch = options.batches.front();
  // At batch B one decode step streams the weights once for B tokens.
  const double roofline = bandwidth / bytes_per_token * static_cast<double>(batch);
  auto prefill_rate = [&](const Measurement& r, std::int64_t b) {
    return static_cast<double>(b * options.prompt_len) / r.prefill_seconds;
  };
  auto decode_rate = [&](const Measurement& r) { return static_cast<double>(r.decode_tokens) / r.decode_seconds; };
  const std::string arithmetic =
      kernels::exact_arithmetic()
          ? std::string("exact (FP32 activations throughout)")
          : kernels::few_row_bf16_dot_products()
                ? fmt::format("fast: oneDNN BF16 x BF16 -> FP32 GEMM ({}) from {} rows of BF16 weights (fewer: "
                              "AVX512-BF16 dot products on activations rounded to BF16), from {} of FP8 ones",
                              kernels::gemm_implementation(gemm_rows, c.intermediate_size, c.hidden_size),
                              kernels::min_gemm_rows_bf16_dot(), kernels::min_gemm_rows())
                : fmt::format("fast: oneDNN {} GEMM from {} rows ({})",
                              kernels::gemm_uses_bf16() ? "BF16 x BF16 -> FP32" : "FP32", kernels::min_gemm_rows(),
                              kernels::gemm_implementation(gemm_rows, c.intermediate_size, c.hidden_size));
  // The copies in the kernels' own order (prepare_decode_weights) the load made: the head's, and all.
  const PackedWeight* head_tiles = model.weights().lm_head.packed_copy();
  const std::size_t tiles_bytes = decode_copy_bytes(model.weights());
  nlohmann::json report = {
      {"machine", {{"cpu", cpu_model()}, {"features", cpu_features()}, {"threads", ThreadPool::global().size()}}},
      {"model", options.model},
      {"arithmetic", arithmetic},
      {"weights_dtype", dtype_name(model.weights().layers.back().attention.o_proj.dtype)},
      {"head_dtype", dtype_name(model.weights().lm_head.dtype)},
      {"head_tiles_bytes", head_tiles ? head_tiles->bytes : 0},
      {"tiles_bytes", tiles_bytes},
      {"prompt_len", options.prompt_len},
      {"gen_len", options.gen_len},
      {"batch", batch},
      {"load_seconds", load_seconds},
      {"ranks", ranks.size()},
      {"resident_weight_bytes_per_rank", resident_bytes},
      {"read_bandwidth_gb_s", bandwidth / 1e9},
      {"read_bandwidth_before_after_gb_s", {bandwidth_before / 1e9, bandwidth_after / 1e9}},
      {"gemm_gflop_s", {{"shape", {gemm_rows, c.hidden_size, c.intermediate_size}}, {"f32", gemm_f32 / 1e9},
                        {"bf16", gemm_bf16 / 1e9}}},
      {"weight_bytes_per_token", bytes_per_token},
      {"decode_roofline_tokens_s", roofline},
      {"prefill_tokens_s", prefill_rate(plain, batch)},
      {"prefill_vs_gemm_rate", prefill_rate(plain, batch) * prefill_flop_per_token / gemm_in_use},
      {"time_to_first_token_s", plain.first_token_seconds},
      {"decode_tokens_s", decode_rate(plain)},
      {"decode_vs_roofline", decode_rate(plain) / roofline},
      {"decode_passes_tokens_s", plain.decode_rates},
      {"peak_memory_bytes", peak_memory},
  };
  nlohmann::json batches = nlohmann::json::array();
  for (std::size_t i = 0; i < runs.size(); ++i) {
    batches.push_back({{"batch", options.batches[i]},
                       {"prefill_tokens_s", prefill_rate(runs[i], options.batches[i])},
                       {"decode_tokens_s", decode_rate(runs[i])},
                       {"decode_passes_tokens_s", runs[i].decode_rates},
                       {"decode_vs_first", decode_rate(runs[i]) / decode_rate(plain)}});
    if (options.profile) {  // the first pass's prefill, the fastest pass's decode
      batches.back()["prefill_profile"] = profile_json(runs[i].prefill_profile);
      batches.back()["decode_profile"] = profile_json(runs[i].decode_profile);
    }
  }
  report["batches"] = batches;
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
  fmt::print("model          {} ({} weights, output head {}{}{}), loaded in {:.2f} s\n", options.model,
             report["weights_dtype"].get<std::string>(), report["head_dtype"].get<std::string>(),
             output_heads_fp8() ? " by --head-fp8" : "",
             tiles_bytes == 0 ? ""
                              : fmt::format(", {} MB of decode copies in pair tiles, the head's {}",
                                            tiles_bytes / 1000000, head_tiles ? head_tiles->bytes / 1000000 : 0),
             load_seconds);
  fmt::print("resident       weights{} (measured per rank across its load{})\n", resident,
             ranks.size() > 1 ? fmt::format("; {}", ranks.description()) : "");
  fmt::print("arithmetic     {}\n", arithmetic);
  fmt::print("workload       batch {}, prompt {} tokens, generate {} tokens, greedy, {} cache; decode {}\n", batch,
             options.prompt_len, options.gen_len, options.cache_dtype,
             options.passes > 1 ? fmt::format("the fastest of {} passes (the prompts again from the prefix cache)",
                                              options.passes)
                                : std::string("one pass"));
  fmt::print("bandwidth      {:.1f} GB/s read (best pass over {:.0f} MiB; before {:.1f}, after {:.1f})\n", bandwidth / 1e9,
             static_cast<double>(std::max<std::int64_t>(std::int64_t{1} << 30, 4 * last_level_cache_bytes())) / 1048576.0,
             bandwidth_before / 1e9, bandwidth_after / 1e9);
  fmt::print("gemm rate      {:.0f} GFLOP/s FP32{} at {} x {} x {}\n", gemm_f32 / 1e9,
             gemm_bf16 > 0 ? fmt::format(", {:.0f} GFLOP/s BF16", gemm_bf16 / 1e9) : std::string(), gemm_rows,
             c.hidden_size, c.intermediate_size);
  fmt::print("roofline       {:.1f} GB/s / {:.1f} MB of weights per decode step{} = {:.1f} tokens/s\n", bandwidth / 1e9,
             bytes_per_token / 1e6,
             ranks.size() > 1 ? fmt::format(" (rank 0's share, {:.1f}%: each rank streams its own)", 100 * share) : "",
             roofline);
  fmt::print("prefill        {:.1f} tokens/s = {:.2f} of the {} GEMM rate ({:.0f} GFLOP/s of linears), time to first "
             "token {:.3f} s\n",
             prefill_rate(plain, batch), prefill_rate(plain, batch) * prefill_flop_per_token / gemm_in_use,
             gemm_in_use == gemm_f32 ? "FP32" : "BF16", prefill_rate(plain, batch) * prefill_flop_per_token / 1e9,
             plain.first_token_seconds);
  fmt::print("decode         {:.1f} tokens/s = {:.2f} of the roofline{}\n", decode_rate(plain),
             decode_rate(plain) / roofline, passes_note(plain));
  for (std::size_t i = 1; i < runs.size(); ++i)
    fmt::print("decode batch {:<2} {:.1f} tokens/s aggregate = {:.2f}x batch {}{} (prefill {:.1f} tokens/s)\n",
               options.batches[i], decode_rate(runs[i]), decode_rate(runs[i]) / decode_rate(plain), batch,
               passes_note(runs[i]), prefill_rate(runs[i], options.batches[i]));
  if (options.mtp > 0) {
    std::string acceptance;
    for (std::size_t i = 0; i < speculative.acceptance.size(); ++i)
      acceptance += fmt::format("{}{:.0f}%", i ? " / " : "", 100.0 * speculative.acceptance[i]);
    fmt::print("decode + MTP   {:.1f} tokens/s = {:.2f}x without MTP; {} drafts, acceptance by position {}\n",
               decode_rate(speculative), decode_rate(speculative) / decode_rate(plain), options.mtp, acceptance);
  }
  fmt::print("peak memory    {:.2f} GB\n", static_cast<double>(peak_memory) / 1e9);
  if (options.profile) {
    print_profile(fmt::format("prefill, batch {}", batch).c_str(), plain.prefill_profile, bandwidth);
    for (std::size_t i = 0; i < runs.size(); ++i)
      print_profile(fmt::format("decode, batch {}", options.batches[i]).c_str(), runs[i].decode_profile, bandwidth);
    if (runs.size() > 1) print_profile_comparison(options.batches, runs);
    fmt::print("(weights GB/s: the weight bytes an op read per second, and in brackets that rate over the read "
               "bandwidth; timing every op adds a little to each step)\n");
  }
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
       add_number(app, "--gen-len", options->gen_len,
                  "Tokens generated per sequence (at least 2: prefill gives the first, decode the rest)", 2, most_int)
           ->capture_default_str();
       add_number<std::vector<std::int64_t>, std::int64_t>(
           app, "--batch", options->batches, "Sequences decoded together; a list (1,4,16) runs each and compares", 1,
           most_int)
           ->delimiter(',')
           ->capture_default_str();
       add_number(app, "--passes", options->passes,
                  "Decode passes per batch size, the prompts again from the prefix cache; the fastest is reported "
                  "(a shared host's neighbours slow some)",
                  1, 100)
           ->capture_default_str();
       add_number(app, "--mtp", options->mtp, "Also run with this many MTP drafts per step, for the ratio", 0,
                  kMostDrafts)
           ->capture_default_str();
       app.add_option("--cache-dtype", options->cache_dtype, "KV cache precision")
           ->check(CLI::IsMember({"bf16", "f32"}))->capture_default_str();
       add_number(app, "--seed", options->seed, "Seed of the random prompts")->capture_default_str();
       app.add_flag("--json", options->json, "Print the figures as JSON");
       app.add_flag("--profile", options->profile,
                    "Time every op and print where prefill and decode steps go: the first batch size's prefill, "
                    "every batch size's decode, side by side");
       add_exact_flag(app);
       add_head_fp8_flag(app);
       return [options] { return bench(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
