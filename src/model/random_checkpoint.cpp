// Random checkpoints in the official layout (dsv3 init), tensor by tensor of checkpoint_layout.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "io/fp8_blocks.h"
#include "model/model.h"

namespace dsv3 {
namespace {

using Kind = CheckpointTensor::Kind;

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
  const std::int64_t count = t.numel();
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
    const auto blocks = quantize_fp8_blocks(values.data(), t.shape[0], t.shape[1]);
    return {{t.name, DType::F8_E4M3, t.shape, as_bytes(blocks.codes)},
            {fp8_scale_tensor_name(t.name), DType::F32, {blocks.scale_rows, blocks.scale_cols}, as_bytes(blocks.scales)}};
  }
  std::vector<std::uint16_t> bf16(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) bf16[i] = float_to_bf16(values[i]);
  return {{t.name, DType::BF16, t.shape, as_bytes(bf16)}};
}

}  // namespace

void write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& out,
                             const RandomCheckpointOptions& options,
                             const std::function<void(std::int64_t, std::int64_t)>& progress) {
  std::filesystem::create_directories(out);
  ModelConfig c = config;
  if (options.fp8) c.quantization = {.fp8 = true, .block_rows = 128, .block_cols = 128};
  const auto layout = checkpoint_layout(c);
  std::int64_t total = 0;
  for (const auto& t : layout) {
    total += t.numel() * (t.kind == Kind::router_bias ? 4 : (options.fp8 && t.fp8_in_official_checkpoints ? 1 : 2));
  }
  // Shards are filled in layout order up to shard_bytes; one shard is a plain model.safetensors.
  std::vector<std::vector<std::size_t>> shards(1);
  std::int64_t shard_fill = 0;
  for (std::size_t i = 0; i < layout.size(); ++i) {
    const std::int64_t count = layout[i].numel();
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
