// Checkpoints: the model in the official Hugging Face layout (what `Weights::load` and other tools
// read), plus what only training needs to continue exactly: FP32 master weights (the exported BF16
// weights are lossy), router biases, AdamW moments, and the step / data / RNG state.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>

#include "core/error.h"
#include "core/numeric.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;

// Router biases by checkpoint name (e_score_correction_bias is not a Parameter: it gets no
// gradient); `Model` is TrainableModel or const TrainableModel.
template <typename Model>
auto router_biases(Model& model) {
  using Bias = decltype(&model.layers[0].moe->e_score_correction_bias);
  std::vector<std::pair<std::string, Bias>> biases;
  for (const CheckpointTensor& t : checkpoint_layout(model.config)) {
    if (t.kind != CheckpointTensor::Kind::router_bias) continue;
    auto& layer = t.mtp_depth >= 0 ? model.mtp[t.mtp_depth].layer : model.layers[t.layer];
    biases.emplace_back(t.name, &layer.moe->e_score_correction_bias);
  }
  return biases;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) fail("{}: write failed", path.string());
}

// Flushes a file or directory to the disk, so the rename that publishes a checkpoint never
// points at data still in the page cache.
void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open to sync", path.string());
  const int result = ::fsync(fd);
  ::close(fd);
  if (result != 0) fail("{}: fsync failed", path.string());
}

// The writer's process id of a ".tmp-<name>-<pid>" or ".old-<name>-<pid>" entry, with its
// prefix and <name>; nullopt for any other name.
struct Leftover {
  std::string kind;  // ".tmp-" or ".old-"
  std::string name;
  pid_t pid = 0;
};
std::optional<Leftover> parse_leftover(const std::string& filename) {
  for (const char* kind : {".tmp-", ".old-"}) {
    if (!filename.starts_with(kind)) continue;
    const std::size_t dash = filename.rfind('-');
    if (dash <= 5 || dash + 1 == filename.size()) return std::nullopt;
    const std::string digits = filename.substr(dash + 1);
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return Leftover{kind, filename.substr(5, dash - 5), static_cast<pid_t>(std::stol(digits))};
  }
  return std::nullopt;
}

// Whether the writer may still be at work: this process (another thread may be saving), or a
// process that still exists.
bool writer_running(pid_t pid) { return pid == ::getpid() || ::kill(pid, 0) == 0 || errno == EPERM; }

void read_f32(const TensorStore& store, const std::string& name, std::vector<float>& target) {
  const TensorView& view = store.require(name);
  if (view.dtype != DType::F32 || view.nbytes != target.size() * sizeof(float))
    fail("{}: {} {} in {}, expected F32 with {} values", name, dtype_name(view.dtype), view.shape_string(),
         view.file.string(), target.size());
  std::memcpy(target.data(), view.data, view.nbytes);
}

}  // namespace

void export_model(const TrainableModel& model, const fs::path& dir, DType dtype) {
  if (dtype != DType::BF16 && dtype != DType::F32)
    fail("export_model: dtype {} is not supported (BF16 or F32)", dtype_name(dtype));
  fs::create_directories(dir);
  ModelConfig config = model.config;
  config.quantization = {};  // the weights written are not FP8
  config.torch_dtype = dtype == DType::BF16 ? "bfloat16" : "float32";
  write_text(dir / "config.json", config.to_json().dump(2) + "\n");

  std::deque<std::vector<std::uint16_t>> converted;  // owns the BF16 copies while writing
  std::vector<TensorToWrite> tensors;
  auto add = [&](const std::string& name, const Parameter& p) {
    if (dtype == DType::F32) {
      tensors.push_back(tensor_to_write(name, p.shape, p.value));
      return;
    }
    std::vector<std::uint16_t>& bits = converted.emplace_back(p.value.size());
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16(p.value[i]);
    tensors.push_back({name, DType::BF16, p.shape, std::as_bytes(std::span(bits))});
  };
  // Every tensor of the layout but the router biases (below); the MTP modules' copies of the
  // shared embedding and head are written again, as the released checkpoints carry them.
  for (const CheckpointTensor& t : checkpoint_layout(model.config)) {
    if (t.kind == CheckpointTensor::Kind::router_bias) continue;
    const auto p = model.parameters.find(t.copy_of.empty() ? t.name : t.copy_of);
    if (p == model.parameters.end()) fail("export_model: the model has no parameter {}", t.name);
    add(t.name, p->second);
  }
  for (const auto& [name, bias] : router_biases(model))
    tensors.push_back(tensor_to_write(name, {static_cast<std::int64_t>(bias->size())}, *bias));
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
}

void clean_interrupted_checkpoints(const fs::path& root) {
  if (!fs::is_directory(root)) return;
  std::vector<std::pair<fs::path, Leftover>> leftovers;
  for (const auto& entry : fs::directory_iterator(root)) {
    const auto leftover = parse_leftover(entry.path().filename().string());
    if (leftover && entry.is_directory() && !writer_running(leftover->pid)) leftovers.emplace_back(entry.path(), *leftover);
  }
  for (const auto& [path, leftover] : leftovers) {
    if (leftover.kind == ".old-" && !fs::exists(root / leftover.name)) {
      // Interrupted between moving the old checkpoint aside and publishing the new one.
      fs::rename(path, root / leftover.name);
    } else {
      fs::remove_all(path);
    }
  }
}

void write_checkpoint(const fs::path& dir, const TrainableModel& model, const AdamW& optimizer,
                      const nlohmann::json& state, DType dtype, const fs::path& tokenizer_dir) {
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  fs::create_directories(parent);
  clean_interrupted_checkpoints(parent);
  const fs::path temporary = parent / fmt::format(".tmp-{}-{}", dir.filename().string(), ::getpid());
  fs::remove_all(temporary);
  try {
    fs::create_directories(temporary);
    export_model(model, temporary, dtype);
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"})
      if (!tokenizer_dir.empty() && fs::exists(tokenizer_dir / file)) fs::copy_file(tokenizer_dir / file, temporary / file);

    std::vector<TensorToWrite> tensors;
    for (const auto& [name, p] : model.parameters) tensors.push_back(tensor_to_write("master:" + name, p.shape, p.value));
    for (const auto& [name, bias] : router_biases(model))
      tensors.push_back(tensor_to_write("master:" + name, {static_cast<std::int64_t>(bias->size())}, *bias));
    for (TensorToWrite& t : optimizer.state_tensors()) tensors.push_back(std::move(t));
    write_safetensors(temporary / "trainer_state.safetensors", tensors);
    nlohmann::json full = state;
    full["optimizer_steps"] = optimizer.steps();
    write_text(temporary / "trainer_state.json", full.dump(2) + "\n");
    for (const auto& entry : fs::directory_iterator(temporary)) sync_path(entry.path());
    sync_path(temporary);

    // Publish: a directory cannot be renamed over a non-empty one, so an older checkpoint of the
    // same name is moved aside first and removed only once the new one is in place.
    const fs::path old = parent / fmt::format(".old-{}-{}", dir.filename().string(), ::getpid());
    const bool replacing = fs::exists(dir);
    if (replacing) fs::rename(dir, old);
    fs::rename(temporary, dir);
    sync_path(parent);
    if (replacing) fs::remove_all(old);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(temporary, ignored);
    throw;
  }
}

nlohmann::json read_checkpoint(const fs::path& dir, TrainableModel& model, AdamW& optimizer) {
  const fs::path json_path = dir / "trainer_state.json";
  std::ifstream in(json_path);
  if (!in) fail("{}: no trainer state (not a training checkpoint?)", json_path.string());
  const auto state = nlohmann::json::parse(in, nullptr, false);
  if (state.is_discarded() || !state.is_object()) fail("{}: not a JSON object", json_path.string());
  const TensorStore store = TensorStore::open(dir / "trainer_state.safetensors");
  for (auto& [name, p] : model.parameters) read_f32(store, "master:" + name, p.value);
  for (auto& [name, bias] : router_biases(model)) read_f32(store, "master:" + name, *bias);
  if (!state.contains("optimizer_steps")) fail("{}: no optimizer_steps", json_path.string());
  optimizer.load_state(store, state["optimizer_steps"].get<std::int64_t>());
  return state;
}

std::optional<fs::path> latest_checkpoint(const fs::path& root) {
  std::optional<fs::path> latest;
  std::int64_t best = -1;
  if (!fs::is_directory(root)) return latest;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !name.starts_with("step-") || name.size() == 5) continue;
    if (name.find_first_not_of("0123456789", 5) != std::string::npos) continue;
    const std::int64_t step = std::stoll(name.substr(5));
    if (step > best && fs::exists(entry.path() / "trainer_state.json")) {
      best = step;
      latest = entry.path();
    }
  }
  return latest;
}

}  // namespace dsv3::train
