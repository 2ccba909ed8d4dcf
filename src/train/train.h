#pragma once
// Training DeepSeek-V3: FP32 master parameters, exact gradients of the training objective, and the
// activation memory they need. The public face of train/ (DESIGN.md).
//
// The objective for one sequence t[0..T-1]:
//   loss_main    = mean_{p=0..T-2} CE(logits[p], t[p+1])
//   loss_mtp     = mean_{p=1..T-3} CE(mtp_logits[p], t[p+2])      (row p of MTP depth 1, see fixtures)
//   loss_balance = alpha * sum over MoE layers of sum_i f_i * P_i   (the paper's sequence-wise loss)
//   total        = loss_main + mtp_weight * loss_mtp + loss_balance
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/matrix.h"
#include "core/numeric.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::train {

// One trainable tensor: FP32 values and the gradient accumulated into them.
struct Parameter {
  std::string name;
  std::vector<std::int64_t> shape;  // [rows, cols] or [size]
  std::vector<float> value;
  std::vector<float> grad;
  // Its GEMMs (forward, input gradient, weight gradient) quantise their inputs to E4M3: the FP8
  // recipe, set by TrainableModel::set_gemm_precision for the Linears of attention and MLPs.
  bool fp8_gemm = false;
  // Under the FP8 recipe, `value` rounded through E4M3 in 128x128 blocks: what its GEMMs multiply
  // by (made by TrainableModel::weights()).
  std::vector<float> gemm_value = {};

  std::int64_t rows() const { return shape[0]; }
  std::int64_t cols() const { return shape.size() > 1 ? shape[1] : 1; }
  // An F32 view for the model: of `value`, or under the FP8 recipe of `gemm_value`, with its
  // input rounded in 1x128 tiles (Matrix::fp8_input_tiles).
  Matrix matrix() const;
};

struct AttentionParameters {
  Parameter* q_a_proj = nullptr;  // q path when q_lora_rank is set ...
  Parameter* q_a_layernorm = nullptr;
  Parameter* q_b_proj = nullptr;
  Parameter* q_proj = nullptr;  // ... else one q_proj
  Parameter* kv_a_proj_with_mqa = nullptr;
  Parameter* kv_a_layernorm = nullptr;
  Parameter* kv_b_proj = nullptr;
  Parameter* o_proj = nullptr;
};

struct MlpParameters {
  Parameter* gate_proj = nullptr;
  Parameter* up_proj = nullptr;
  Parameter* down_proj = nullptr;
};

struct MoeParameters {
  Parameter* router = nullptr;                // mlp.gate.weight
  std::vector<float> e_score_correction_bias; // steers the choice only; never gets a gradient
  std::vector<MlpParameters> experts;
  std::optional<MlpParameters> shared_experts;
};

struct LayerParameters {
  Parameter* input_layernorm = nullptr;
  Parameter* post_attention_layernorm = nullptr;
  AttentionParameters attention;
  std::optional<MlpParameters> mlp;
  std::optional<MoeParameters> moe;
};

// The MTP module's own weights; its embedding and output head are the main model's (shared, as in
// DeepSeek-V3), so their gradients land in embed_tokens and lm_head.
struct MtpParameters {
  Parameter* enorm = nullptr;
  Parameter* hnorm = nullptr;
  Parameter* eh_proj = nullptr;
  LayerParameters layer;
  Parameter* shared_head_norm = nullptr;
};

class TrainableModel {
 public:
  // Every weight of the checkpoint as FP32 (BF16/F16/FP8 converted). The MTP copies of the
  // embedding and head must equal the main ones, since training shares them.
  static TrainableModel from_weights(const Weights& weights);
  // A freshly initialised model: matrices ~ N(0, std^2), norm weights 1, router bias 0.
  static TrainableModel initialise(const ModelConfig& config, std::uint64_t seed, float std = 0.02f);

  TrainableModel(TrainableModel&&) = default;
  TrainableModel& operator=(TrainableModel&&) = default;
  TrainableModel(const TrainableModel&) = delete;
  TrainableModel& operator=(const TrainableModel&) = delete;

  ModelConfig config;
  std::map<std::string, Parameter> parameters;  // by checkpoint name; owns every tensor below
  Parameter* embed_tokens = nullptr;
  std::vector<LayerParameters> layers;
  Parameter* norm = nullptr;
  Parameter* lm_head = nullptr;
  std::vector<MtpParameters> mtp;

  Parameter& parameter(const std::string& name);  // throws naming the tensor when absent
  // The parameters as the model computes with them: matrices are views of the values (under the
  // FP8 recipe, of their rounded copies, refreshed here), norms and router biases copies. Valid
  // until the next update of the values.
  Weights weights();
  void zero_gradients();

  // FP8: every Linear of attention, dense MLPs and experts (shared and routed) runs its three GEMMs
  // on E4M3-quantised inputs (fp8.cpp); the embedding, output head, router, MTP eh_proj, norms
  // and the attention core stay FP32, as in the paper's recipe. FP32: none does.
  void set_fp8_gemms(bool on);

 private:
  explicit TrainableModel(const ModelConfig& config);
};

// The FP8 recipe's rounding (core/numeric.h), under the names training has always used.
using dsv3::fp8_quantize_dequantize;
using dsv3::kFp8Tile;
using dsv3::round_to_e4m3;

struct ObjectiveOptions {
  double mtp_weight = 0.3;
  double balance_alpha = 0.0;  // 0 reproduces the fixture's loss
};

struct LossReport {
  double main = 0.0;
  double mtp = 0.0;      // unweighted; 0 when there is no MTP module or T < 4
  double balance = 0.0;  // already multiplied by alpha
  double total = 0.0;
  std::int64_t stored_activation_bytes = 0;  // kept from the forward pass for the backward pass
  // Per decoder layer (the MTP layers after the main ones): tokens routed to each expert in this
  // sequence; empty for dense layers. What auxiliary-loss-free balancing steers by.
  std::vector<std::vector<std::int64_t>> expert_load;
};

// Adds d(total)/d(parameter) for one sequence into every Parameter::grad (call zero_gradients
// first for a fresh gradient) and returns the losses.
LossReport accumulate_gradients(TrainableModel& model, std::span<const std::int64_t> ids,
                                const ObjectiveOptions& options);

// Activation memory of one sequence of `tokens` (MTP included), from the shapes alone.
struct ActivationMemory {
  std::int64_t stored = 0;                     // what accumulate_gradients keeps (recomputing norms etc.)
  std::int64_t norms_and_up_projections = 0;   // what storing the RMSNorm outputs, the MLA up-projections
                                               // (q_b_proj / kv_b_proj outputs) and SwiGLU products would add
  std::int64_t attention_probabilities = 0;    // what storing the causal softmax (not recomputed) would add
};
ActivationMemory activation_memory(const ModelConfig& config, std::int64_t tokens);


// ---- optimisation (optimizer.cpp) ----

enum class MomentDType { f32, bf16 };  // bf16: round to nearest even after every update (the paper's choice)

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  // Off: only matrices other than the embedding decay (norm weights, the router bias and the
  // embedding do not), as DeepSeek-V3 and most LLM recipes do.
  bool decay_norms_and_embeddings = false;
  MomentDType moment_dtype = MomentDType::bf16;
};

// AdamW with decoupled weight decay (PyTorch's form): p ← p (1 - lr wd) - lr m̂ / (√v̂ + eps), on the
// FP32 master values, with bias-corrected moments m̂ = m / (1 - β1ᵗ), v̂ = v / (1 - β2ᵗ).
class AdamW {
 public:
  AdamW(const TrainableModel& model, const AdamWOptions& options);
  // One update of every parameter from its grad.
  void step(TrainableModel& model, double lr);
  std::int64_t steps() const { return steps_; }
  const AdamWOptions& options() const { return options_; }
  bool decays(const Parameter& p) const;
  // The moments as stored (BF16 values widened exactly), for tests.
  float first_moment(const std::string& name, std::size_t i) const;
  float second_moment(const std::string& name, std::size_t i) const;

  // Checkpoint state: "adam_m:<name>", "adam_v:<name>" in the moment dtype; views into this object.
  std::vector<TensorToWrite> state_tensors() const;
  void load_state(const TensorStore& store, std::int64_t steps);

 private:
  struct Moments {
    std::vector<float> m32, v32;            // MomentDType::f32
    std::vector<std::uint16_t> m16, v16;    // MomentDType::bf16
  };
  AdamWOptions options_;
  std::map<std::string, Moments> moments_;
  std::int64_t steps_ = 0;
};

// Multiplies every gradient by `factor`.
void scale_gradients(TrainableModel& model, double factor);
// Scales all gradients by max_norm / norm when their global L2 norm exceeds max_norm (no-op when
// max_norm <= 0); returns the norm before clipping.
double clip_gradient_norm(TrainableModel& model, double max_norm);

// The paper's schedule: linear warmup to `peak` over warmup_steps, constant until decay_start,
// cosine decay to `floor` over decay_steps, then `floor`. Steps count from 0.
struct LearningRateSchedule {
  double peak = 3e-4;
  double floor = 3e-5;
  std::int64_t warmup_steps = 0;
  std::int64_t decay_start = 0;  // clamped to at least warmup_steps
  std::int64_t decay_steps = 0;  // 0: constant after warmup
  double at(std::int64_t step) const;
};

// The bias update speed γ: `gamma` until step `change_step`, then `gamma_after` (the paper: 0.001
// for most of training, then 0). change_step < 0 never changes.
struct GammaSchedule {
  double gamma = 0.001;
  std::int64_t change_step = -1;
  double gamma_after = 0.0;
  double at(std::int64_t step) const { return change_step >= 0 && step >= change_step ? gamma_after : gamma; }
};

// ---- auxiliary-loss-free balancing (balance.cpp) ----

struct LayerBalance {
  std::int64_t layer = 0;         // decoder layer index (MTP layers after the main ones)
  std::int64_t max_load = 0;      // tokens routed to the busiest expert in the step's batch
  double mean_load = 0.0;         // tokens × top_k / experts
  std::int64_t dropped_tokens = 0;  // always 0: DeepSeek-V3 drops no token
  double max_over_mean() const { return mean_load > 0.0 ? static_cast<double>(max_load) / mean_load : 0.0; }
};

// Adds two per-layer load tables (LossReport::expert_load), resizing `total` to fit.
void add_expert_load(std::vector<std::vector<std::int64_t>>& total, const std::vector<std::vector<std::int64_t>>& load);
// The paper's sign rule after each step: for every MoE layer, b_i += γ where expert i's load is
// below the layer's mean load, b_i -= γ where above. Returns each MoE layer's statistics.
std::vector<LayerBalance> update_router_biases(TrainableModel& model, const std::vector<std::vector<std::int64_t>>& load,
                                               double gamma);

// ---- data (data.cpp) ----

// One document of a corpus and where it came from, for error messages.
struct Document {
  std::string text;
  std::string origin;  // the file, or "file:line" for a line of a .jsonl file
};

// Documents of a corpus: a directory stands for its *.txt and *.jsonl files (sorted by name); a
// .jsonl file holds one {"text": ...} object per line, a .json file one such object; any other
// file is one plain-text document (so a byte offset in its text is one in the file).
std::vector<Document> read_documents(const std::vector<std::string>& paths);

// Fixed-length training sequences, back to back.
struct PackedSequences {
  std::int64_t seq_len = 0;
  std::vector<std::int64_t> tokens;  // count() * seq_len ids
  std::int64_t count() const { return seq_len > 0 ? static_cast<std::int64_t>(tokens.size()) / seq_len : 0; }
  std::span<const std::int64_t> operator[](std::int64_t i) const;
};

// Document packing as in the paper: each document followed by `eos`, all concatenated and cut into
// seq_len pieces (no cross-document masking); the incomplete tail is dropped.
PackedSequences pack_documents(const std::vector<std::vector<std::int32_t>>& documents, std::int32_t eos,
                               std::int64_t seq_len);

struct Corpus {
  PackedSequences train, validation;
  std::int64_t documents = 0, validation_documents = 0;  // the documents used
  std::int64_t tokens = 0;  // all documents' tokens, EOS included
  // Documents the tokenizer could not encode (invalid UTF-8), left out with skip_invalid: each
  // "origin: reason", in corpus order.
  std::vector<std::string> skipped;
};
// Tokenizes the documents, shuffles them (seeded), holds out the first
// ceil(validation_fraction × documents) as the validation split, and packs each split. A document
// the tokenizer cannot encode (invalid UTF-8) is an error naming its origin and the byte offset,
// the first such in corpus order; with `skip_invalid` it is left out and listed in Corpus::skipped.
Corpus build_corpus(const Tokenizer& tokenizer, const std::vector<Document>& documents, std::int64_t seq_len,
                    double validation_fraction, std::uint64_t seed, bool skip_invalid = false);

// The order training reads sequences in: a fresh seeded permutation every epoch.
class SequenceSampler {
 public:
  SequenceSampler(std::int64_t count, std::uint64_t seed);
  std::int64_t next();
  // Epoch, position and the generator's state at the epoch's start, enough to continue exactly.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

 private:
  void start_epoch();
  std::int64_t count_;
  std::mt19937_64 rng_;
  std::string epoch_rng_state_;
  std::vector<std::int64_t> order_;
  std::int64_t epoch_ = -1;
  std::int64_t cursor_ = 0;
};

// ---- checkpoints (checkpoint.cpp) ----

// The Hugging Face layout into `dir`: config.json and model.safetensors (matrices and norms in
// `dtype`, BF16 or F32; router biases F32; the MTP layer carrying copies of embed_tokens and
// lm_head as embed_tokens / shared_head.head). Weights::load reads it.
void export_model(const TrainableModel& model, const std::filesystem::path& dir, DType dtype = DType::BF16);

// A training checkpoint: the exported model, the tokenizer files, trainer_state.safetensors (FP32
// master weights, router biases, AdamW moments) and trainer_state.json (`state`). Written into a
// temporary sibling directory that is renamed to `dir` only when complete.
void write_checkpoint(const std::filesystem::path& dir, const TrainableModel& model, const AdamW& optimizer,
                      const nlohmann::json& state, DType dtype, const std::filesystem::path& tokenizer_dir);
// Restores master weights, biases and moments (the model must have the checkpoint's shape) and
// returns trainer_state.json.
nlohmann::json read_checkpoint(const std::filesystem::path& dir, TrainableModel& model, AdamW& optimizer);
// Finishes what interrupted checkpoint writes into `root` left behind (the leftovers of writers
// that are no longer running): a partial .tmp-* directory is removed; a checkpoint moved aside to
// .old-* while its replacement was being published is put back when the replacement is missing,
// removed otherwise. write_checkpoint and the Trainer call it before they look at `root`.
void clean_interrupted_checkpoints(const std::filesystem::path& root);
// The newest complete step-N checkpoint under `root`; nullopt when there is none.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& root);


// ---- the training loop (train_config.cpp, trainer.cpp) ----

// Every hyper-parameter of a run, read from a JSON file whose keys are the field names below
// (learning rate: lr, lr_floor, warmup_steps, decay_start, decay_steps; AdamW: weight_decay,
// beta1, beta2, eps, decay_norms_and_embeddings, moment_dtype "bf16"|"f32"; γ: gamma,
// gamma_change_step, gamma_after). Unknown keys and wrong types are errors naming the key.
// Relative paths are taken from the working directory.
struct TrainConfig {
  std::string model_config;  // a Hugging Face config.json (or a directory holding one): the shape
  double init_std = 0.02;
  std::string tokenizer;     // a directory with tokenizer.json (+ tokenizer_config.json for EOS)
  std::vector<std::string> corpus;  // text / .jsonl / .json files or directories of them
  std::int64_t seq_len = 128;
  std::int64_t batch_size = 4;    // sequences per micro-batch
  std::int64_t accumulation = 1;  // micro-batches per optimizer step
  std::int64_t steps = 1000;
  LearningRateSchedule lr;
  AdamWOptions adamw;
  double clip = 1.0;  // global gradient norm; 0 disables
  double mtp_weight = 0.3;       // the paper's λ
  double balance_alpha = 1e-4;   // the sequence-wise balance loss's α
  GammaSchedule gamma;
  bool fp8 = false;
  std::uint64_t seed = 0;
  bool skip_invalid_documents = false;    // leave out (and count) documents that are not valid UTF-8, instead of failing
  double validation_fraction = 0.05;      // of the documents
  // Held-out documents named explicitly (files or directories, as corpus); when set, they are the
  // validation split and all of `corpus` trains (validation_fraction must then be 0).
  std::vector<std::string> validation_corpus;
  std::int64_t validation_interval = 100; // steps; 0: never
  std::int64_t validation_sequences = 32; // at most this many validation sequences are scored
  std::string checkpoint_dir;             // "": no checkpoints
  std::int64_t checkpoint_interval = 0;   // steps; 0: only at the end
  std::string export_dtype = "bf16";      // the exported model's weights: "bf16" or "f32"
  std::string resume;                     // "": start fresh; "latest": newest under checkpoint_dir; or a checkpoint
  std::string metrics;                    // JSONL log; "": checkpoint_dir/metrics.jsonl, or none without checkpoint_dir

  static TrainConfig from_json(const nlohmann::json& json, const std::string& source = "train config");
  static TrainConfig load(const std::filesystem::path& path);
  nlohmann::json to_json() const;
};

struct ValidationReport {
  double loss_main = 0.0;
  double loss_mtp = 0.0;
  std::int64_t sequences = 0;
};

struct StepReport {
  std::int64_t step = 0;  // optimizer steps completed, this one included
  double lr = 0.0, gamma = 0.0;
  double loss_main = 0.0, loss_mtp = 0.0, loss_balance = 0.0, loss = 0.0;  // means over the step's sequences
  double grad_norm = 0.0;  // before clipping
  std::int64_t tokens = 0;
  double seconds = 0.0, tokens_per_second = 0.0;
  std::vector<LayerBalance> balance;
  std::optional<ValidationReport> validation;
  nlohmann::json to_json() const;  // one line of the metrics log
};

class Trainer {
 public:
  // Reads the tokenizer and corpus, then initialises the model or resumes from a checkpoint.
  explicit Trainer(const TrainConfig& config);

  // One optimizer step: batch_size × accumulation sequences, clipping, AdamW, bias update.
  StepReport step();
  ValidationReport validate();
  // Writes checkpoint_dir/step-N (or `dir`) atomically; returns where.
  std::filesystem::path save_checkpoint(std::optional<std::filesystem::path> dir = std::nullopt);
  // Steps until config.steps, validating, checkpointing and appending to the metrics log as
  // configured; on_step sees every step's report.
  void run(const std::function<void(const StepReport&)>& on_step = {});

  std::int64_t steps_done() const { return step_; }
  const TrainConfig& config() const { return config_; }
  const Corpus& corpus() const { return corpus_; }
  TrainableModel& model() { return model_; }
  const AdamW& optimizer() const { return optimizer_; }
  std::optional<std::filesystem::path> resumed_from() const { return resumed_from_; }

 private:
  TrainConfig config_;
  std::optional<std::filesystem::path> resumed_from_;
  Corpus corpus_;
  TrainableModel model_;
  AdamW optimizer_;
  SequenceSampler sampler_;
  std::int64_t step_ = 0;
};

// ---- evaluation (bits_per_byte.cpp) ----

struct BitsPerByte {
  std::int64_t documents = 0, bytes = 0;  // held-out documents and their UTF-8 bytes
  std::int64_t tokens = 0;                // held-out tokens scored (EOS excluded)
  std::int64_t baseline_tokens = 0;       // tokens the unigram frequencies were counted on
  std::int64_t context = 0;
  double model_bits = 0.0, unigram_bits = 0.0;  // summed cross-entropy over the held-out tokens
  double model_bits_per_byte() const { return model_bits / static_cast<double>(bytes); }
  double unigram_bits_per_byte() const { return unigram_bits / static_cast<double>(bytes); }
  double reduction() const { return 1.0 - model_bits / unigram_bits; }  // 0.35: 35% fewer bits than unigram
  nlohmann::json to_json() const;
};

// The model's cross-entropy on the held-out documents in bits per UTF-8 byte (each document after
// an EOS token, as training packs it; windows of `context` tokens with a stride of context / 2),
// against a unigram model of the baseline documents' tokens with add-one smoothing over the
// tokenizer's vocabulary, evaluated on the same held-out tokens.
BitsPerByte bits_per_byte(const Model& model, const Tokenizer& tokenizer, const std::vector<Document>& held_out,
                          const std::vector<Document>& baseline, std::int64_t context);

// ---- plots (plot.cpp) ----

// An SVG of a metrics log (StepReport::to_json lines): losses (train and validation, main and
// MTP) and expert-load balance (max / mean load of each MoE layer) against the step.
std::string plot_metrics_svg(const std::vector<nlohmann::json>& records);

}  // namespace dsv3::train
