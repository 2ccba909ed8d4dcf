// The training loop: micro-batches of packed sequences, gradient accumulation, global-norm
// clipping, AdamW on FP32 master weights, the router-bias update, validation, metrics and
// checkpoints. Everything a step reads is in the checkpoint, so a resumed run continues bit for bit.
#include <chrono>
#include <fstream>

#include "core/error.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;

std::optional<fs::path> resume_path(const TrainConfig& c) {
  // Before "latest" is looked for: a checkpoint an interrupted save had moved aside is back.
  if (!c.checkpoint_dir.empty()) clean_interrupted_checkpoints(c.checkpoint_dir);
  if (c.resume.empty()) return std::nullopt;
  if (c.resume == "latest") return latest_checkpoint(c.checkpoint_dir);  // none yet: start fresh
  if (!fs::exists(fs::path(c.resume) / "trainer_state.json"))
    fail("resume = \"{}\": not a training checkpoint (no trainer_state.json)", c.resume);
  return fs::path(c.resume);
}

Corpus load_corpus(const TrainConfig& c) {
  const Tokenizer tokenizer = Tokenizer::load(c.tokenizer);
  Corpus corpus = build_corpus(tokenizer, read_documents(c.corpus), c.seq_len, c.validation_fraction, c.seed,
                               c.skip_invalid_documents);
  if (c.validation_corpus.empty()) return corpus;
  // Named held-out documents: packed as a training split would be, then used only for validation.
  Corpus held_out = build_corpus(tokenizer, read_documents(c.validation_corpus), c.seq_len, 0.0, c.seed,
                                 c.skip_invalid_documents);
  corpus.validation = std::move(held_out.train);
  corpus.validation_documents = held_out.documents;
  corpus.documents += held_out.documents;
  corpus.tokens += held_out.tokens;
  for (std::string& skipped : held_out.skipped) corpus.skipped.push_back(std::move(skipped));
  return corpus;
}

TrainableModel make_model(const TrainConfig& c, const std::optional<fs::path>& resume) {
  ModelConfig shape;
  if (resume) {
    shape = ModelConfig::load(*resume / "config.json");
    if (!c.model_config.empty() && ModelConfig::load(c.model_config).to_json() != shape.to_json())
      fail("model_config {} differs from the shape of the checkpoint {} being resumed", c.model_config,
           resume->string());
  } else {
    shape = ModelConfig::load(c.model_config);
  }
  TrainableModel model = TrainableModel::initialise(shape, c.seed, static_cast<float>(c.init_std));
  model.set_fp8_gemms(c.fp8);
  return model;
}

std::int64_t vocabulary_check(const Corpus& corpus, const ModelConfig& config) {
  std::int64_t largest = 0;
  for (std::int64_t id : corpus.train.tokens) largest = std::max(largest, id);
  for (std::int64_t id : corpus.validation.tokens) largest = std::max(largest, id);
  if (largest >= config.vocab_size)
    fail("the tokenizer produces id {} but the model's vocab_size is {}", largest, config.vocab_size);
  return largest;
}

}  // namespace

nlohmann::json StepReport::to_json() const {
  nlohmann::json j = {{"step", step},         {"lr", lr},
                      {"gamma", gamma},       {"loss", loss},
                      {"loss_main", loss_main}, {"loss_mtp", loss_mtp},
                      {"loss_balance", loss_balance}, {"grad_norm", grad_norm},
                      {"tokens", tokens},     {"seconds", seconds},
                      {"tokens_per_second", tokens_per_second}};
  j["load"] = nlohmann::json::array();
  for (const LayerBalance& b : balance)
    j["load"].push_back({{"layer", b.layer},
                         {"max", b.max_load},
                         {"mean", b.mean_load},
                         {"max_over_mean", b.max_over_mean()},
                         {"dropped_tokens", b.dropped_tokens}});
  if (validation) {
    j["val_loss_main"] = validation->loss_main;
    j["val_loss_mtp"] = validation->loss_mtp;
  }
  return j;
}

Trainer::Trainer(const TrainConfig& config)
    : config_(config),
      resumed_from_(resume_path(config)),
      corpus_(load_corpus(config)),
      model_(make_model(config, resumed_from_)),
      optimizer_(model_, config.adamw),
      sampler_(corpus_.train.count(), config.seed + 1) {
  vocabulary_check(corpus_, model_.config);
  if (!resumed_from_) return;
  const nlohmann::json state = read_checkpoint(*resumed_from_, model_, optimizer_);
  step_ = state.at("step").get<std::int64_t>();
  sampler_.restore(state.at("data"));
}

StepReport Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  StepReport report;
  model_.zero_gradients();
  std::vector<std::vector<std::int64_t>> load;
  const ObjectiveOptions objective{.mtp_weight = config_.mtp_weight, .balance_alpha = config_.balance_alpha};
  const std::int64_t sequences = config_.batch_size * config_.accumulation;
  // The micro-batches of a step only differ in when their gradients are added: on one CPU process
  // they run one after another, and the sum is the same.
  for (std::int64_t i = 0; i < sequences; ++i) {
    const LossReport loss = accumulate_gradients(model_, corpus_.train[sampler_.next()], objective);
    report.loss_main += loss.main;
    report.loss_mtp += loss.mtp;
    report.loss_balance += loss.balance;
    report.loss += loss.total;
    add_expert_load(load, loss.expert_load);
  }
  const double inverse = 1.0 / static_cast<double>(sequences);
  report.loss_main *= inverse;
  report.loss_mtp *= inverse;
  report.loss_balance *= inverse;
  report.loss *= inverse;
  scale_gradients(model_, inverse);  // the objective is the mean over the step's sequences
  report.grad_norm = clip_gradient_norm(model_, config_.clip);
  report.lr = config_.lr.at(step_);
  optimizer_.step(model_, report.lr);
  report.gamma = config_.gamma.at(step_);
  report.balance = update_router_biases(model_, load, report.gamma);
  ++step_;
  report.step = step_;
  report.tokens = sequences * config_.seq_len;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.tokens_per_second = report.seconds > 0.0 ? static_cast<double>(report.tokens) / report.seconds : 0.0;
  return report;
}

ValidationReport Trainer::validate() {
  ValidationReport report;
  report.sequences = std::min(config_.validation_sequences, corpus_.validation.count());
  if (report.sequences == 0) return report;
  // The objective's forward pass is shared with its gradient; the gradients are discarded.
  const ObjectiveOptions objective{.mtp_weight = config_.mtp_weight, .balance_alpha = 0.0};
  for (std::int64_t i = 0; i < report.sequences; ++i) {
    const LossReport loss = accumulate_gradients(model_, corpus_.validation[i], objective);
    report.loss_main += loss.main;
    report.loss_mtp += loss.mtp;
  }
  model_.zero_gradients();
  report.loss_main /= static_cast<double>(report.sequences);
  report.loss_mtp /= static_cast<double>(report.sequences);
  return report;
}

fs::path Trainer::save_checkpoint(std::optional<fs::path> dir) {
  if (!dir) {
    if (config_.checkpoint_dir.empty()) fail("save_checkpoint: no checkpoint_dir configured");
    dir = fs::path(config_.checkpoint_dir) / fmt::format("step-{}", step_);
  }
  const nlohmann::json state = {{"step", step_}, {"data", sampler_.state()}, {"config", config_.to_json()}};
  write_checkpoint(*dir, model_, optimizer_, state, config_.export_dtype == "f32" ? DType::F32 : DType::BF16,
                   config_.tokenizer);
  return *dir;
}

void Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  std::string metrics_path = config_.metrics;
  if (metrics_path.empty() && !config_.checkpoint_dir.empty())
    metrics_path = (fs::path(config_.checkpoint_dir) / "metrics.jsonl").string();
  std::ofstream metrics;
  if (!metrics_path.empty()) {
    if (fs::path(metrics_path).has_parent_path()) fs::create_directories(fs::path(metrics_path).parent_path());
    // A resumed run continues the log; a fresh one starts it.
    metrics.open(metrics_path, resumed_from_ ? std::ios::app : std::ios::trunc);
    if (!metrics) fail("{}: cannot open the metrics log", metrics_path);
  }
  while (step_ < config_.steps) {
    StepReport report = step();
    const bool last = step_ == config_.steps;
    if (config_.validation_interval > 0 && (step_ % config_.validation_interval == 0 || last) &&
        corpus_.validation.count() > 0)
      report.validation = validate();
    if (metrics.is_open()) metrics << report.to_json().dump() << "\n" << std::flush;
    if (!config_.checkpoint_dir.empty() &&
        (last || (config_.checkpoint_interval > 0 && step_ % config_.checkpoint_interval == 0)))
      save_checkpoint();
    if (on_step) on_step(report);
  }
}

}  // namespace dsv3::train
