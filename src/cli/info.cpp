// dsv3 info: what a model is, from its config.json (and its weights when present).
#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <map>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/latent_cache.h"
#include "model/model.h"
#include "model/shard.h"

namespace dsv3::cli {
namespace {

std::string human(double value, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (value >= 1000.0 && i < 4) {
    value /= 1000.0;
    ++i;
  }
  return fmt::format("{:.2f} {}{}", value, prefixes[i], unit);
}

// Each rank's part under mpirun -np N (model/shard.h): what it holds, and of that what every rank
// holds alike (latent projections, norms, routers, the MTP's eh_proj).
void print_ranks(const ModelConfig& c, const TensorStore* store, int ranks, const std::string& placement) {
  const auto stored = [store](const CheckpointTensor& t) { return store ? store->find(t.name) : nullptr; };
  const auto dtype_of = [&](const CheckpointTensor& t) { return stored_dtype(store, t, c); };
  const std::vector<dist::LayerPlacement> plan = placement.empty() ? std::vector<dist::LayerPlacement>()
                                                                   : read_placement_plan(placement, ranks);
  const std::vector<CheckpointTensor> layout = checkpoint_layout(c);
  fmt::print("across {} ranks{}\n", ranks, plan.empty() ? "" : fmt::format(" (experts placed by {})", placement));
  for (int r = 0; r < ranks; ++r) {
    const Shard shard = make_shard(c, r, ranks, dtype_of, plan);
    std::int64_t held = 0, everywhere = 0, copies = 0;
    for (const CheckpointTensor& t : layout) {
      if (!t.copy_of.empty() && !stored(t)) continue;  // the MTP's copy of the embedding or head: the original serves
      const std::int64_t bytes = held_bytes(t, dtype_of(t), shard, c);
      held += bytes;
      if (cut_of(t, shard, c).kind == TensorCut::Kind::whole && t.mlp != CheckpointTensor::Mlp::routed_expert)
        everywhere += bytes;
    }
    for (const ExpertCopies& layer : shard.experts)
      copies += std::count(layer.holder.begin(), layer.holder.end(), r);
    fmt::print("  rank {:<3} {} held ({} of it on every rank): heads [{}, {}), vocabulary rows [{}, {}), {} expert "
               "copies in all MoE layers\n",
               r, human(static_cast<double>(held), "B"), human(static_cast<double>(everywhere), "B"), shard.heads.begin,
               shard.heads.end, shard.vocab.begin, shard.vocab.end, copies);
  }
  fmt::print("  kv cache {} per token on every rank (the latents are per token, not per head)\n",
             human(static_cast<double>(LatentCache::bytes_per_token(c, DType::BF16)), "B"));
}

int run_info(const std::filesystem::path& model, int ranks, const std::string& placement) {
  namespace fs = std::filesystem;
  const ModelConfig c = ModelConfig::load(model);
  const ParameterCount params = count_parameters(c);
  fmt::print("model              {}\n", model.string());
  fmt::print("architecture       {} ({} layers, {} dense first, hidden {}, vocab {})\n", c.model_type,
             c.num_hidden_layers, std::min(c.first_k_dense_replace, c.num_hidden_layers), c.hidden_size, c.vocab_size);
  fmt::print("attention          MLA, {} heads, q_lora_rank {}, kv_lora_rank {}, qk {}+{} (nope+rope), v {}\n",
             c.num_attention_heads, c.q_lora_rank ? std::to_string(*c.q_lora_rank) : "null (plain q_proj)",
             c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  if (c.rope_scaling.yarn)
    fmt::print("rope               theta {}, YaRN x{} from {} positions, softmax scale {:.6f}\n", c.rope_theta,
               c.rope_scaling.factor, c.rope_scaling.original_max_position_embeddings, c.softmax_scale());
  else
    fmt::print("rope               theta {}, no scaling, softmax scale {:.6f}\n", c.rope_theta, c.softmax_scale());
  if (c.n_routed_experts > 0)
    fmt::print("moe                {} routed ({} active, {} groups keep {}), {} shared, intermediate {}, scale {}\n",
               c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.n_shared_experts,
               c.moe_intermediate_size, c.routed_scaling_factor);
  fmt::print("parameters         {} total, {} activated per token ({} without embedding and head)\n",
             human(static_cast<double>(params.total), ""), human(static_cast<double>(params.activated), ""),
             human(static_cast<double>(params.activated - params.embedding), ""));
  fmt::print("read per token     {} weights streamed by one decode step (all but the embedding table)\n",
             human(static_cast<double>(params.read_per_token), ""));
  fmt::print("mtp                {}\n", c.num_nextn_predict_layers > 0
                                            ? fmt::format("{} module(s), {} own parameters", c.num_nextn_predict_layers,
                                                          human(static_cast<double>(params.mtp), ""))
                                            : std::string("absent"));
  // The engine's own figure: the latent cache holds a row for every layer, the MTP's included.
  fmt::print("kv cache           {} per token (latent {} + rope {} per layer, {} layers{}, BF16), {} per token in F32\n",
             human(static_cast<double>(LatentCache::bytes_per_token(c, DType::BF16)), "B"), c.kv_lora_rank,
             c.qk_rope_head_dim, c.num_hidden_layers,
             c.num_nextn_predict_layers > 0 ? fmt::format(" + {} MTP", c.num_nextn_predict_layers) : std::string(),
             human(static_cast<double>(LatentCache::bytes_per_token(c, DType::F32)), "B"));
  if (c.quantization.fp8)
    fmt::print("quantization       fp8 e4m3, {}x{} block scales\n", c.quantization.block_rows,
               c.quantization.block_cols);

  if (fs::is_directory(model) &&
      (fs::exists(model / "model.safetensors") || fs::exists(model / "model.safetensors.index.json"))) {
    const TensorStore store = TensorStore::open(model);
    std::map<std::string, std::pair<std::int64_t, std::size_t>> by_dtype;  // dtype -> (tensors, bytes)
    for (const auto& name : store.names()) {
      const TensorView& view = store.require(name);
      auto& entry = by_dtype[std::string(dtype_name(view.dtype))];
      entry.first += 1;
      entry.second += view.nbytes;
    }
    fmt::print("weights            {} tensors, {}\n", store.names().size(), human(static_cast<double>(store.total_bytes()), "B"));
    for (const auto& [dtype, entry] : by_dtype)
      fmt::print("  {:<16} {} tensors, {}\n", dtype, entry.first, human(static_cast<double>(entry.second), "B"));
    if (ranks > 1) print_ranks(c, &store, ranks, placement);
  } else {
    fmt::print("weights            none (config only)\n");
    if (ranks > 1) print_ranks(c, nullptr, ranks, placement);
  }
  // What `dsv3 eval --out DIR/eval.json` measured, for a model folder that keeps it.
  if (const fs::path eval = model / "eval.json"; fs::is_directory(model) && fs::exists(eval)) {
    std::ifstream in(eval);
    const nlohmann::json e = nlohmann::json::parse(in, nullptr, false);
    if (e.is_discarded() || !e.contains("model_bits_per_byte") || !e.contains("unigram_bits_per_byte") ||
        !e.contains("held_out_bytes") || !e["model_bits_per_byte"].is_number() || !e["unigram_bits_per_byte"].is_number())
      fail("{}: not an eval.json of dsv3 eval (model_bits_per_byte, unigram_bits_per_byte, held_out_bytes)",
           eval.string());
    const double model_bpb = e["model_bits_per_byte"].get<double>(), unigram_bpb = e["unigram_bits_per_byte"].get<double>();
    fmt::print("held-out           {:.4f} bits per byte; unigram baseline {:.4f}, {:.1f}% below it ({} bytes never "
               "trained on)\n",
               model_bpb, unigram_bpb, 100.0 * (1.0 - model_bpb / unigram_bpb), e["held_out_bytes"].dump());
  }
  return 0;
}

const bool registered = register_command({"info", "Describe a model: shape, parameters, dtypes, KV-cache size",
                                          [](CLI::App& app) -> Run {
                                            auto model = std::make_shared<std::string>();
                                            auto ranks = std::make_shared<int>(1);
                                            auto placement = std::make_shared<std::string>();
                                            app.add_option("--model", *model, "Model directory (or a config.json)")
                                                ->required();
                                            add_number(app, "--ranks", *ranks,
                                                       "Also show each rank's part under mpirun -np N", 1, 1 << 16);
                                            app.add_option("--placement", *placement,
                                                           "With --ranks: experts placed by this dsv3 placement plan");
                                            return [=] { return run_info(*model, *ranks, *placement); };
                                          }});

}  // namespace
}  // namespace dsv3::cli
