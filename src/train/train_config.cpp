// TrainConfig from JSON: every key known, typed and range-checked once, errors naming the key.
#include <fstream>

#include "core/error.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

using json = nlohmann::json;

std::string moment_dtype_name(MomentDType dtype) { return dtype == MomentDType::f32 ? "f32" : "bf16"; }

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  std::string where(const std::string& key) const { return fmt::format("{}: \"{}\"", source_, key); }

  double number(const std::string& key, const json& value) const {
    if (!value.is_number()) fail("{} must be a number, got {}", where(key), value.dump());
    return value.get<double>();
  }
  std::int64_t integer(const std::string& key, const json& value) const {
    if (!value.is_number_integer()) fail("{} must be an integer, got {}", where(key), value.dump());
    return value.get<std::int64_t>();
  }
  bool boolean(const std::string& key, const json& value) const {
    if (!value.is_boolean()) fail("{} must be true or false, got {}", where(key), value.dump());
    return value.get<bool>();
  }
  std::string string(const std::string& key, const json& value) const {
    if (!value.is_string()) fail("{} must be a string, got {}", where(key), value.dump());
    return value.get<std::string>();
  }
  std::vector<std::string> strings(const std::string& key, const json& value) const {
    if (value.is_string()) return {value.get<std::string>()};
    if (!value.is_array()) fail("{} must be a string or an array of strings", where(key));
    std::vector<std::string> out;
    for (const json& item : value) out.push_back(string(key, item));
    return out;
  }

 private:
  std::string source_;
};

}  // namespace

TrainConfig TrainConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  TrainConfig c;
  const Reader r(source);
  for (const auto& [key, v] : j.items()) {
    if (key == "model_config") c.model_config = r.string(key, v);
    else if (key == "init_std") c.init_std = r.number(key, v);
    else if (key == "tokenizer") c.tokenizer = r.string(key, v);
    else if (key == "corpus") c.corpus = r.strings(key, v);
    else if (key == "seq_len") c.seq_len = r.integer(key, v);
    else if (key == "batch_size") c.batch_size = r.integer(key, v);
    else if (key == "accumulation") c.accumulation = r.integer(key, v);
    else if (key == "steps") c.steps = r.integer(key, v);
    else if (key == "lr") c.lr.peak = r.number(key, v);
    else if (key == "lr_floor") c.lr.floor = r.number(key, v);
    else if (key == "warmup_steps") c.lr.warmup_steps = r.integer(key, v);
    else if (key == "decay_start") c.lr.decay_start = r.integer(key, v);
    else if (key == "decay_steps") c.lr.decay_steps = r.integer(key, v);
    else if (key == "weight_decay") c.adamw.weight_decay = r.number(key, v);
    else if (key == "beta1") c.adamw.beta1 = r.number(key, v);
    else if (key == "beta2") c.adamw.beta2 = r.number(key, v);
    else if (key == "eps") c.adamw.eps = r.number(key, v);
    else if (key == "decay_norms_and_embeddings") c.adamw.decay_norms_and_embeddings = r.boolean(key, v);
    else if (key == "moment_dtype") {
      const std::string name = r.string(key, v);
      if (name != "bf16" && name != "f32") fail("{} = \"{}\": expected \"bf16\" or \"f32\"", r.where(key), name);
      c.adamw.moment_dtype = name == "f32" ? MomentDType::f32 : MomentDType::bf16;
    }
    else if (key == "clip") c.clip = r.number(key, v);
    else if (key == "mtp_weight") c.mtp_weight = r.number(key, v);
    else if (key == "balance_alpha") c.balance_alpha = r.number(key, v);
    else if (key == "gamma") c.gamma.gamma = r.number(key, v);
    else if (key == "gamma_change_step") c.gamma.change_step = r.integer(key, v);
    else if (key == "gamma_after") c.gamma.gamma_after = r.number(key, v);
    else if (key == "fp8") c.fp8 = r.boolean(key, v);
    else if (key == "seed") {
      if (!v.is_number_unsigned()) fail("{} must be a non-negative integer, got {}", r.where(key), v.dump());
      c.seed = v.get<std::uint64_t>();
    }
    else if (key == "skip_invalid_documents") c.skip_invalid_documents = r.boolean(key, v);
    else if (key == "validation_fraction") c.validation_fraction = r.number(key, v);
    else if (key == "validation_corpus") c.validation_corpus = r.strings(key, v);
    else if (key == "validation_interval") c.validation_interval = r.integer(key, v);
    else if (key == "validation_sequences") c.validation_sequences = r.integer(key, v);
    else if (key == "checkpoint_dir") c.checkpoint_dir = r.string(key, v);
    else if (key == "checkpoint_interval") c.checkpoint_interval = r.integer(key, v);
    else if (key == "export_dtype") c.export_dtype = r.string(key, v);
    else if (key == "resume") c.resume = r.string(key, v);
    else if (key == "metrics") c.metrics = r.string(key, v);
    else fail("{}: unknown key \"{}\"", source, key);
  }

  auto require = [&](bool ok, const char* key, const std::string& rule) {
    if (!ok) fail("{}: \"{}\" = {} {}", source, key, j.contains(key) ? j[key].dump() : "(default)", rule);
  };
  require(c.resume.empty() ? !c.model_config.empty() : true, "model_config", "is required (the model's config.json)");
  require(!c.tokenizer.empty(), "tokenizer", "is required (a directory with tokenizer.json)");
  require(!c.corpus.empty(), "corpus", "is required (text / JSONL files or directories)");
  require(c.init_std > 0.0, "init_std", "must be positive");
  require(c.seq_len >= 4, "seq_len", "must be at least 4 (the MTP loss needs 4 tokens)");
  require(c.batch_size >= 1, "batch_size", "must be at least 1");
  require(c.accumulation >= 1, "accumulation", "must be at least 1");
  require(c.steps >= 0, "steps", "must be >= 0");
  require(c.lr.peak > 0.0, "lr", "must be positive");
  require(c.lr.floor >= 0.0 && c.lr.floor <= c.lr.peak, "lr_floor", "must lie in [0, lr]");
  require(c.lr.warmup_steps >= 0, "warmup_steps", "must be >= 0");
  require(c.lr.decay_start >= 0, "decay_start", "must be >= 0");
  require(c.lr.decay_steps >= 0, "decay_steps", "must be >= 0");
  require(c.adamw.weight_decay >= 0.0, "weight_decay", "must be >= 0");
  require(c.adamw.beta1 >= 0.0 && c.adamw.beta1 < 1.0, "beta1", "must lie in [0, 1)");
  require(c.adamw.beta2 >= 0.0 && c.adamw.beta2 < 1.0, "beta2", "must lie in [0, 1)");
  require(c.adamw.eps > 0.0, "eps", "must be positive");
  require(c.clip >= 0.0, "clip", "must be >= 0 (0 disables clipping)");
  require(c.mtp_weight >= 0.0, "mtp_weight", "must be >= 0");
  require(c.balance_alpha >= 0.0, "balance_alpha", "must be >= 0");
  require(c.gamma.gamma >= 0.0, "gamma", "must be >= 0");
  require(c.gamma.gamma_after >= 0.0, "gamma_after", "must be >= 0");
  require(c.validation_fraction >= 0.0 && c.validation_fraction < 1.0, "validation_fraction", "must lie in [0, 1)");
  require(c.validation_corpus.empty() || c.validation_fraction == 0.0, "validation_fraction",
          "must be 0 when validation_corpus names the held-out documents");
  require(c.validation_interval >= 0, "validation_interval", "must be >= 0");
  require(c.validation_sequences >= 1, "validation_sequences", "must be at least 1");
  require(c.checkpoint_interval >= 0, "checkpoint_interval", "must be >= 0");
  require(c.export_dtype == "bf16" || c.export_dtype == "f32", "export_dtype", "must be \"bf16\" or \"f32\"");
  require(c.resume != "latest" || !c.checkpoint_dir.empty(), "resume", "\"latest\" needs a checkpoint_dir");
  return c;
}

TrainConfig TrainConfig::load(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open the training config", path.string());
  const json parsed = json::parse(in, nullptr, false);
  if (parsed.is_discarded()) fail("{}: not valid JSON", path.string());
  return from_json(parsed, path.string());
}

json TrainConfig::to_json() const {
  return {{"model_config", model_config},
          {"init_std", init_std},
          {"tokenizer", tokenizer},
          {"corpus", corpus},
          {"seq_len", seq_len},
          {"batch_size", batch_size},
          {"accumulation", accumulation},
          {"steps", steps},
          {"lr", lr.peak},
          {"lr_floor", lr.floor},
          {"warmup_steps", lr.warmup_steps},
          {"decay_start", lr.decay_start},
          {"decay_steps", lr.decay_steps},
          {"weight_decay", adamw.weight_decay},
          {"beta1", adamw.beta1},
          {"beta2", adamw.beta2},
          {"eps", adamw.eps},
          {"decay_norms_and_embeddings", adamw.decay_norms_and_embeddings},
          {"moment_dtype", moment_dtype_name(adamw.moment_dtype)},
          {"clip", clip},
          {"mtp_weight", mtp_weight},
          {"balance_alpha", balance_alpha},
          {"gamma", gamma.gamma},
          {"gamma_change_step", gamma.change_step},
          {"gamma_after", gamma.gamma_after},
          {"fp8", fp8},
          {"seed", seed},
          {"skip_invalid_documents", skip_invalid_documents},
          {"validation_fraction", validation_fraction},
          {"validation_corpus", validation_corpus},
          {"validation_interval", validation_interval},
          {"validation_sequences", validation_sequences},
          {"checkpoint_dir", checkpoint_dir},
          {"checkpoint_interval", checkpoint_interval},
          {"export_dtype", export_dtype},
          {"resume", resume},
          {"metrics", metrics}};
}

}  // namespace dsv3::train
