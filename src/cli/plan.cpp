// dsv3 plan: on paper, how a model would run over N ranks (DESIGN.md, dist/): per-rank memory and
// decode tokens/s from the bytes each rank streams per step and the all-reduce traffic, split the
// way DeepSeek's reference inference splits it. Decode on a CPU is bound by memory bandwidth, so
// a step takes (bytes streamed) / bandwidth + (communication); nothing here is measured.
//   Split N ways: attention heads (q_b_proj / q_proj, kv_b_proj, o_proj), dense and shared MLPs
//     (by intermediate columns), the vocabulary (embedding and head).
//   Replicated: the latent projections (q_a_proj, kv_a_proj_with_mqa), norms, routers, eh_proj.
//   Routed experts: E/N per rank.
//   Decode copies: a CPU with AVX512-BF16 (fast mode) adds, at load, a copy in its kernels' own
//     order of each BF16 matrix a decode step reads with every row (the head, attention's
//     projections, dense and shared MLPs; kv_b_proj in absorb tiles; kernels/cpu/ops.h), split
//     as the matrices are. FP8 matrices get none.
//   Communication per step: an all-reduce of the batch's hidden rows (F32) after the embedding and
//     after each layer's attention and MoE, as ring all-reduces (2 (N-1)/N bytes/link + 2 (N-1)
//     latency), and an all-gather of the logits (F32, (N-1)/N bytes/link + (N-1) latency).
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "io/checkpoint_layout.h"
#include "io/model_config.h"
#include "kernels/cpu/ops.h"
#include "model/latent_cache.h"

namespace dsv3::cli {
namespace {

using Role = CheckpointTensor::Role;
using Mlp = CheckpointTensor::Mlp;

struct PlanOptions {
  std::string config;
  std::string ranks = "1";
  double bandwidth_gb_s = 0;
  double link_gb_s = 0;
  double latency_us = 0;
  std::string batches = "1,32";
  std::string dtype;  // fp8 | bf16; default: the config's
  std::int64_t context = 0;
  bool json = false;
};

std::vector<std::int64_t> parse_list(const std::string& option, const std::string& text, std::int64_t low,
                                     std::int64_t high) {
  std::vector<std::int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const NumberCheck<std::int64_t> check = check_number<std::int64_t>(item, low, high);
    if (!check.value) fail("{}: {}", option, check.reason);
    out.push_back(*check.value);
  }
  if (out.empty()) fail("{}: expected a comma-separated list of integers", option);
  return out;
}

// Bytes of a tensor as stored: FP8 matrices one byte an element plus an F32 scale per block, the
// rest BF16.
double stored_bytes(const CheckpointTensor& t, bool fp8, const ModelConfig& c) {
  const auto n = static_cast<double>(t.numel());
  if (!fp8 || !t.fp8_in_official_checkpoints || t.shape.size() != 2) return 2.0 * n;
  const std::int64_t rows_blocks = (t.shape[0] + c.quantization.block_rows - 1) / c.quantization.block_rows;
  const std::int64_t cols_blocks = (t.shape[1] + c.quantization.block_cols - 1) / c.quantization.block_cols;
  return n + 4.0 * static_cast<double>(rows_blocks * cols_blocks);
}

bool split_by_rank(const CheckpointTensor& t) {
  switch (t.role) {
    case Role::q_b_proj:
    case Role::q_proj:
    case Role::kv_b_proj:
    case Role::o_proj:
    case Role::embed_tokens:
    case Role::lm_head:
    case Role::shared_head_head:
    case Role::mtp_embed_tokens:
      return true;
    default:
      return t.mlp == Mlp::dense || t.mlp == Mlp::shared_experts;
  }
}

struct Totals {
  double split = 0;          // main model, split N ways, streamed every step
  double replicated = 0;     // main model, every rank, streamed every step
  double routed = 0;         // main model's routed experts, all of them
  double embedding = 0;      // the input embedding table (one row read per token): resident only
  double mtp = 0;            // MTP modules' own weights (split like the rest): resident only
  double mtp_replicated = 0;
  double mtp_routed = 0;
  double copies = 0;             // the decode copies of split matrices (see the top)
  double copies_replicated = 0;  // of replicated ones (q_a_proj, kv_a_proj_with_mqa)
};

// The bytes of a main-model tensor's decode copy (0: it gets none) when stored as `fp8` says.
double copy_bytes_on_paper(const CheckpointTensor& t, bool fp8, const ModelConfig& c) {
  if (t.mtp_depth >= 0 || t.shape.size() != 2 || (fp8 && t.fp8_in_official_checkpoints)) return 0;
  const std::int64_t rows = t.shape[0], cols = t.shape[1];
  switch (t.role) {
    case Role::embed_tokens:  // the head too when tied
      return c.tie_word_embeddings ? static_cast<double>(kernels::pair_tile_copy_bytes(rows, cols)) : 0;
    case Role::lm_head:
    case Role::q_a_proj:
    case Role::q_b_proj:
    case Role::q_proj:
    case Role::kv_a_proj_with_mqa:
    case Role::o_proj:
      return static_cast<double>(kernels::pair_tile_copy_bytes(rows, cols));
    case Role::kv_b_proj:
      return static_cast<double>(kernels::absorb_tile_copy_bytes(rows, cols, c.qk_nope_head_dim, c.v_head_dim));
    case Role::gate_proj:
    case Role::up_proj:
    case Role::down_proj:
      return t.mlp == Mlp::dense || t.mlp == Mlp::shared_experts
                 ? static_cast<double>(kernels::pair_tile_copy_bytes(rows, cols))
                 : 0;
    default:
      return 0;
  }
}

Totals weigh(const ModelConfig& c, bool fp8) {
  Totals totals;
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    if (!t.copy_of.empty()) continue;  // the same weights as the original
    const double bytes = stored_bytes(t, fp8, c);
    const bool routed = t.mlp == Mlp::routed_expert;
    const bool split = split_by_rank(t);
    (split ? totals.copies : totals.copies_replicated) += copy_bytes_on_paper(t, fp8, c);
    if (t.mtp_depth >= 0) {
      (routed ? totals.mtp_routed : split ? totals.mtp : totals.mtp_replicated) += bytes;
    } else if (t.role == Role::embed_tokens && !c.tie_word_embeddings) {
      totals.embedding += bytes;
    } else {
      (routed ? totals.routed : split ? totals.split : totals.replicated) += bytes;
    }
  }
  return totals;
}

double ring_all_reduce_s(double bytes, int n, const PlanOptions& o) {
  if (n == 1) return 0;
  return 2.0 * (n - 1) / n * bytes / (o.link_gb_s * 1e9) + 2.0 * (n - 1) * o.latency_us * 1e-6;
}
double ring_all_gather_s(double bytes, int n, const PlanOptions& o) {
  if (n == 1) return 0;
  return static_cast<double>(n - 1) / n * bytes / (o.link_gb_s * 1e9) + (n - 1) * o.latency_us * 1e-6;
}

int run_plan(const PlanOptions& o) {
  const ModelConfig c = ModelConfig::load(o.config);
  const bool fp8 = o.dtype.empty() ? c.quantization.fp8 : o.dtype == "fp8";
  const std::vector<std::int64_t> ranks_list = parse_list("--ranks", o.ranks, 1, 1 << 16);
  const std::vector<std::int64_t> batches = parse_list("--batch", o.batches, 1, 1 << 20);
  const Totals totals = weigh(c, fp8);
  const double kv_per_token = static_cast<double>(LatentCache::bytes_per_token(c, DType::BF16));
  const std::int64_t experts = c.n_routed_experts;

  nlohmann::json out = {{"config", o.config},
                        {"dtype", fp8 ? "fp8" : "bf16"},
                        {"bandwidth_gb_s", o.bandwidth_gb_s},
                        {"link_gb_s", o.link_gb_s},
                        {"latency_us", o.latency_us},
                        {"context", o.context},
                        {"kv_cache_bytes_per_token", kv_per_token},
                        {"ranks", nlohmann::json::array()}};
  for (const std::int64_t n64 : ranks_list) {
    const int n = static_cast<int>(n64);
    if (c.num_attention_heads % n != 0)
      fail("--ranks {}: the {} attention heads do not split evenly over {} ranks", n, c.num_attention_heads, n);
    if (experts > 0 && experts % n != 0)
      fail("--ranks {}: the {} routed experts do not split evenly over {} ranks", n, experts, n);
    const double resident = totals.split / n + totals.replicated + totals.routed / n + totals.embedding / n +
                            totals.mtp / n + totals.mtp_replicated + totals.mtp_routed / n;
    const double copies = totals.copies / n + totals.copies_replicated;
    nlohmann::json rank = {{"ranks", n},
                           {"resident_weight_bytes", resident},
                           {"decode_copy_bytes", copies},
                           {"batches", nlohmann::json::array()}};
    for (const std::int64_t batch : batches) {
      const auto b = static_cast<double>(batch);
      // The chance an expert is chosen by at least one of b tokens, each picking k of E.
      const double touched =
          experts > 0 ? 1.0 - std::pow(1.0 - static_cast<double>(c.num_experts_per_tok) / experts, b) : 0.0;
      // Every rank holds and reads the whole latent cache of its sequences (its heads need all of it).
      const double kv_read = b * static_cast<double>(o.context) * kv_per_token;
      const double streamed = totals.split / n + totals.replicated + totals.routed / n * touched + kv_read;
      const double hidden_bytes = b * static_cast<double>(c.hidden_size) * 4.0;
      const double all_reduces = 1 + 2.0 * static_cast<double>(c.num_hidden_layers);
      const double communication = all_reduces * ring_all_reduce_s(hidden_bytes, n, o) +
                                   ring_all_gather_s(b * static_cast<double>(c.vocab_size) * 4.0, n, o);
      const double stream_s = streamed / (o.bandwidth_gb_s * 1e9);
      const double step_s = stream_s + communication;
      rank["batches"].push_back({{"batch", batch},
                                 {"streamed_bytes_per_step", streamed},
                                 {"stream_seconds", stream_s},
                                 {"communication_seconds", communication},
                                 {"tokens_per_second", b / step_s}});
    }
    out["ranks"].push_back(rank);
  }

  if (o.json) {
    fmt::print("{}\n", out.dump(1));
    return 0;
  }
  fmt::print("{}: {} weights, memory {} GB/s per rank, link {} GB/s, latency {} us, context {} tokens\n",
             o.config, fp8 ? "FP8" : "BF16", o.bandwidth_gb_s, o.link_gb_s, o.latency_us, o.context);
  fmt::print("KV cache {:.1f} KB per token (BF16 latent, held whole by every rank)\n", kv_per_token / 1e3);
  fmt::print("{:>5} {:>14} {:>13} {:>6} {:>16} {:>12} {:>12} {:>12}\n", "ranks", "weights/rank", "copies/rank",
             "batch", "streamed/step", "stream", "comm", "tokens/s");
  for (const auto& rank : out["ranks"])
    for (const auto& batch : rank["batches"])
      fmt::print("{:>5} {:>11.1f} GB {:>10.2f} GB {:>6} {:>13.2f} GB {:>9.2f} ms {:>9.3f} ms {:>12.2f}\n",
                 rank["ranks"].get<int>(), rank["resident_weight_bytes"].get<double>() / 1e9,
                 rank["decode_copy_bytes"].get<double>() / 1e9, batch["batch"].get<std::int64_t>(),
                 batch["streamed_bytes_per_step"].get<double>() / 1e9, batch["stream_seconds"].get<double>() * 1e3,
                 batch["communication_seconds"].get<double>() * 1e3, batch["tokens_per_second"].get<double>());
  fmt::print("tokens/s counts every sequence of the batch; weights/rank includes the MTP module, which the steps "
             "do not run;\ncopies/rank: what a CPU with AVX512-BF16 adds at load, the BF16 matrices every decode row "
             "reads in its kernels' order (DSV3_DECODE_TILES=head keeps the head's alone, 0 none)\n");
  return 0;
}

const bool registered = register_command(
    {"plan", "Predict per-rank memory and decode tokens/s over N ranks (on paper)", [](CLI::App& app) -> Run {
       auto o = std::make_shared<PlanOptions>();
       app.add_option("--config", o->config, "Model directory or config.json")->required();
       app.add_option("--ranks", o->ranks, "Ranks, or a comma-separated list of rank counts")->required();
       add_number(app, "--bandwidth", o->bandwidth_gb_s, "Memory bandwidth of each rank, GB/s", 1e-3, 1e6)
           ->required();
       add_number(app, "--link", o->link_gb_s, "Link bandwidth between ranks, GB/s", 1e-3, 1e6)->required();
       add_number(app, "--latency", o->latency_us, "Link latency, microseconds", 0.0, 1e6)->required();
       app.add_option("--batch", o->batches, "Batch sizes (sequences decoding together), comma-separated")
           ->capture_default_str();
       app.add_option("--dtype", o->dtype, "Weight storage (default: the config's)")
           ->check(CLI::IsMember({"fp8", "bf16"}));
       add_number(app, "--context", o->context, "Tokens of context each sequence attends over", std::int64_t{0},
                  std::int64_t{1} << 24)
           ->capture_default_str();
       app.add_flag("--json", o->json, "Print the figures as JSON");
       return [o] { return run_plan(*o); };
     }});

}  // namespace
}  // namespace dsv3::cli
