// The checkpoint layout of a config, and random checkpoints in it (dsv3 init).
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "kernels/cpu/quantize.h"
#include "model/model.h"

namespace dsv3 {
namespace {

using Kind = CheckpointTensor::Kind;

void add_layer(const ModelConfig& c, std::int64_t index, std::vector<CheckpointTensor>& out) {
  const std::string p = "model.layers." + std::to_string(index);
  const std::int64_t h = c.hidden_size, heads = c.num_attention_heads;
  auto matrix = [&out](std::string name, std::int64_t rows, std::int64_t cols, bool fp8 = true) {
    out.push_back({std::move(name), {rows, cols}, Kind::matrix, fp8, ""});
  };
  auto norm = [&out](std::string name, std::int64_t size) { out.push_back({std::move(name), {size}, Kind::norm, false, ""}); };
  norm(p + ".input_layernorm.weight", h);
  norm(p + ".post_attention_layernorm.weight", h);
  const std::string a = p + ".self_attn";
  if (c.q_lora_rank) {
    matrix(a + ".q_a_proj.weight", *c.q_lora_rank, h);
    norm(a + ".q_a_layernorm.weight", *c.q_lora_rank);
    matrix(a + ".q_b_proj.weight", heads * c.qk_head_dim(), *c.q_lora_rank);
  } else {
    matrix(a + ".q_proj.weight", heads * c.qk_head_dim(), h);
  }
  matrix(a + ".kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, h);
  norm(a + ".kv_a_layernorm.weight", c.kv_lora_rank);
  matrix(a + ".kv_b_proj.weight", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  matrix(a + ".o_proj.weight", h, heads * c.v_head_dim);
  auto mlp = [&](const std::string& prefix, std::int64_t intermediate) {
    matrix(prefix + ".gate_proj.weight", intermediate, h);
    matrix(prefix + ".up_proj.weight", intermediate, h);
    matrix(prefix + ".down_proj.weight", h, intermediate);
  };
  if (c.is_moe_layer(index)) {
    matrix(p + ".mlp.gate.weight", c.n_routed_experts, h, false);
    out.push_back({p + ".mlp.gate.e_score_correction_bias", {c.n_routed_experts}, Kind::router_bias, false, ""});
    for (std::int64_t e = 0; e < c.n_routed_experts; ++e) mlp(p + ".mlp.experts." + std::to_string(e), c.moe_intermediate_size);
    if (c.n_shared_experts > 0) mlp(p + ".mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts);
  } else {
    mlp(p + ".mlp", c.intermediate_size);
  }
}

// SplitMix64: a counter-based generator, so element i of a tensor depends only on (seed, name, i)
// and threads can fill any part of it.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t name_hash(const std::string& name) {
  std::uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char ch : name) hash = (hash ^ ch) * 0x100000001b3ull;
  return hash;
}

// Normal(0, std) values for elements [begin, end) of the tensor keyed by `key` (Box-Muller).
void fill_normal(std::uint64_t key, double std, std::int64_t begin, std::int64_t end, float* out) {
  for (std::int64_t i = begin; i < end; ++i) {
    const std::uint64_t pair = static_cast<std::uint64_t>(i) / 2;
    const std::uint64_t a = mix(key ^ mix(2 * pair)), b = mix(key ^ mix(2 * pair + 1));
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1p-53;  // (0, 1]
    const double u2 = static_cast<double>(b >> 11) * 0x1p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1)) * std;
    const double angle = 2.0 * std::numbers::pi * u2;
    out[i - begin] = static_cast<float>(i % 2 == 0 ? radius * std::cos(angle) : radius * std::sin(angle));
  }
}

struct MadeTensor {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;
};

std::vector<MadeTensor> make_tensor(const CheckpointTensor& t, const RandomCheckpointOptions& options) {
  std::int64_t count = 1;
  for (auto d : t.shape) count *= d;
  std::vector<float> values(static_cast<std::size_t>(count));
  if (t.kind == Kind::norm) {
    std::fill(values.begin(), values.end(), 1.0f);
  } else if (t.kind == Kind::matrix) {
    const std::uint64_t key = mix(options.seed) ^ name_hash(t.copy_of.empty() ? t.name : t.copy_of);
    ThreadPool::global().parallel_for(count, 1 << 16, [&](std::int64_t begin, std::int64_t end) {
      fill_normal(key, options.initializer_range, begin, end, values.data() + begin);
    });
  }
  auto as_bytes = [](const auto& data) {
    const auto* first = reinterpret_cast<const std::byte*>(data.data());
    return std::vector<std::byte>(first, first + data.size() * sizeof(data[0]));
  };
  if (t.kind == Kind::router_bias) return {{t.name, DType::F32, t.shape, as_bytes(values)}};
  if (options.fp8 && t.fp8_in_official_checkpoints) {
    const auto blocks = kernels::quantize_fp8_blocks(values.data(), t.shape[0], t.shape[1]);
    return {{t.name, DType::F8_E4M3, t.shape, as_bytes(blocks.codes)},
            {t.name + "_scale_inv", DType::F32, {blocks.scale_rows, blocks.scale_cols}, as_bytes(blocks.scales)}};
  }
  std::vector<std::uint16_t> bf16(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) bf16[i] = float_to_bf16(values[i]);
  return {{t.name, DType::BF16, t.shape, as_bytes(bf16)}};
}

}  // namespace

std::vector<CheckpointTensor> checkpoint_layout(const ModelConfig& c) {
  std::vector<CheckpointTensor> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::matrix, false, ""});
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) add_layer(c, i, out);
  out.push_back({"model.norm.weight", {c.hidden_size}, Kind::norm, false, ""});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, Kind::matrix, false, ""});
  for (std::int64_t d = 0; d < c.num_nextn_predict_layers; ++d) {
    const std::int64_t index = c.num_hidden_layers + d;
    const std::string p = "model.layers." + std::to_string(index);
    out.push_back({p + ".enorm.weight", {c.hidden_size}, Kind::norm, false, ""});
    out.push_back({p + ".hnorm.weight", {c.hidden_size}, Kind::norm, false, ""});
    out.push_back({p + ".eh_proj.weight", {c.hidden_size, 2 * c.hidden_size}, Kind::matrix, false, ""});
    add_layer(c, index, out);
    out.push_back({p + ".shared_head.norm.weight", {c.hidden_size}, Kind::norm, false, ""});
    out.push_back({p + ".shared_head.head.weight", {c.vocab_size, c.hidden_size}, Kind::matrix, false,
                   c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"});
    out.push_back({p + ".embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::matrix, false,
                   "model.embed_tokens.weight"});
  }
  return out;
}

void write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& out,
                             const RandomCheckpointOptions& options,
                             const std::function<void(std::int64_t, std::int64_t)>& progress) {
  std::filesystem::create_directories(out);
  ModelConfig c = config;
  if (options.fp8) c.quantization = {.fp8 = true, .block_rows = 128, .block_cols = 128};
  const auto layout = checkpoint_layout(c);
  std::int64_t total = 0;
  for (const auto& t : layout) {
    std::int64_t count = 1;
    for (auto d : t.shape) count *= d;
    total += count * (t.kind == Kind::router_bias ? 4 : (options.fp8 && t.fp8_in_official_checkpoints ? 1 : 2));
  }
  // Shards are filled in layout order up to shard_bytes; one shard is a plain model.safetensors.
  std::vector<std::vector<std::size_t>> shards(1);
  std::int64_t shard_fill = 0;
  for (std::size_t i = 0; i < layout.size(); ++i) {
    std::int64_t count = 1;
    for (auto d : layout[i].shape) count *= d;
    if (shard_fill > 0 && shard_fill + count * 2 > options.shard_bytes) {
      shards.emplace_back();
      shard_fill = 0;
    }
    shards.back().push_back(i);
    shard_fill += count * 2;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  std::int64_t done = 0, written_bytes = 0;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, shards.size());
    std::vector<MadeTensor> made;
    for (std::size_t i : shards[s]) {
      for (auto& tensor : make_tensor(layout[i], options)) {
        done += static_cast<std::int64_t>(tensor.bytes.size());
        made.push_back(std::move(tensor));
      }
      if (progress) progress(std::min(done, total), total);
    }
    std::vector<TensorToWrite> tensors;
    for (const auto& m : made) {
      tensors.push_back({m.name, m.dtype, m.shape, m.bytes});
      weight_map[m.name] = file;
      written_bytes += static_cast<std::int64_t>(m.bytes.size());
    }
    write_safetensors(out / file, tensors, {{"format", "pt"}});
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", written_bytes}}}, {"weight_map", weight_map}};
    std::ofstream(out / "model.safetensors.index.json") << index.dump(2) << '\n';
  }
  nlohmann::json config_json = c.to_json();
  config_json["initializer_range"] = options.initializer_range;
  std::ofstream config_file(out / "config.json");
  config_file << config_json.dump(2) << '\n';
  if (!config_file) fail("{}: cannot write config.json", out.string());
}

}  // namespace dsv3
