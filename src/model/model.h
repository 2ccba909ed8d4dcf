#pragma once
// The DeepSeek-V3 model: the public face of model/ (DESIGN.md): a batched, cached step for the
// engine, and full-sequence forward passes for parity checks.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "io/checkpoint_layout.h"
#include "model/latent_cache.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

struct ForwardOutput {
  std::vector<float> hidden;  // [T, hidden]: the final hidden state after model.norm
  std::vector<float> logits;  // [T, vocab]
};

// One run of new tokens of one sequence in a batched step. The sequence's cache pages must
// already be reserved for start + tokens.size() rows; positions [0, start) are cached.
struct StepSegment {
  const LatentCache::Table* table = nullptr;
  std::int64_t start = 0;
  std::span<const std::int64_t> tokens;
  bool all_logits = false;  // logits for every new token (verification, parity) or only the last
};

// An MTP run: row p (at MTP position start + i) combines the hidden state h[p] with the
// embedding of token p + 1 to predict token p + 2. The MTP layer caches at its own layer index.
struct MtpSegment {
  const LatentCache::Table* table = nullptr;
  std::int64_t start = 0;
  std::span<const float> hidden;               // [count, hidden]
  std::span<const std::int64_t> next_tokens;   // [count]
  bool all_logits = false;
};

// What a step computed, in the workspace it was given: valid until that workspace's next step.
struct StepOutput {
  // [rows, hidden]: for step(), the final hidden state after model.norm; for mtp_step(), the MTP
  // layer's output before shared_head.norm (what a further MTP step chains on).
  kernels::Tensor hidden;
  kernels::Tensor logits;                          // [logit rows, vocab]
  std::span<const std::int64_t> logit_offsets;     // segment i's logits are rows [offsets[i], offsets[i+1])
};

// What a step keeps for training's backward pass (Model::step and mtp_step given a record): for
// each decoder layer the tensors below, all in `storage`, which the step never resets. A recorded
// step attends in the expanded form, the one the backward pass differentiates.
struct LayerRecord {
  kernels::Tensor h_in, h_mid;          // [rows, hidden]: the residual stream entering the layer, and after attention
  kernels::Tensor c_q;                  // [rows, q_lora_rank]: q_a_proj's output, before its norm (none without q_lora_rank)
  kernels::Tensor kv_a;                 // [rows, kv_lora + rope]: kv_a_proj_with_mqa's output, before norm and rotation
  kernels::Tensor attention;            // [rows, heads * v]: o_proj's input
  kernels::Tensor gate, up;             // dense MLP: gate_proj's and up_proj's outputs [rows, intermediate]
  kernels::Tensor router_logits;        // MoE: [rows, experts]
  std::span<std::int32_t> experts;      // [rows * top_k]: the chosen experts ...
  std::span<float> weights;             // ... and their gate weights
  std::span<std::int64_t> offsets;      // the routes grouped by expert (kernels::Dispatch): [experts + 1]
  std::span<std::int64_t> slots;        // [rows * top_k]
  kernels::Tensor expert_gate, expert_up;  // [rows * top_k, moe_intermediate], in dispatch order
  kernels::Tensor shared_gate, shared_up;  // [rows, shared experts' intermediate]
};
struct StepRecord {
  explicit StepRecord(kernels::Workspace& storage) : storage(&storage) {}
  kernels::Workspace* storage;
  std::vector<LayerRecord> layers;  // in order (an MTP step's: its one layer)
  // [rows, hidden]: step(): before model.norm; mtp_step(): before shared_head.norm.
  kernels::Tensor last_hidden;
  std::int64_t bytes() const;  // of everything recorded
};

// How many rows the router sent to each routed expert, per MoE layer of the main model, summed over
// the steps that were given it: the statistics expert placement balances (dist/placement.h). The
// MTP module's layer is not counted (it runs only to draft). Sized once, so counting allocates nothing.
struct RouterCounts {
  explicit RouterCounts(const ModelConfig& config);
  std::vector<std::int64_t> layers;                // the decoder layer index of each MoE layer
  std::vector<std::vector<std::int64_t>> experts;  // [MoE layer][expert]: rows routed there
  std::int64_t rows = 0;                           // rows stepped; each goes to top_k experts per MoE layer
  bool fits(const ModelConfig& config) const;  // made for this config's MoE layers and experts
  // The counts of decoder layer `layer` (empty for a dense layer).
  std::span<std::int64_t> of_layer(std::int64_t layer);
};

class StepAnnouncer;

class Model {
 public:
  // With weights cut to one rank's part of several (shard.h), `comm` joins the ranks: rank 0
  // announces each step to the others, which follow it (model/distributed.h).
  explicit Model(Weights weights, const kernels::Backend& backend = kernels::default_backend(),
                 dist::Communicator* comm = nullptr);
  Model(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const { return weights_.config; }
  const Weights& weights() const { return weights_; }
  const kernels::Backend& backend() const { return backend_; }
  const Shard& shard() const { return weights_.shard; }
  // Resident memory this rank's weights took when loaded (measured; 0 when not measured).
  std::int64_t resident_weight_bytes = 0;

  // One batched forward step over runs of new tokens from several sequences (prefill chunks and
  // decode tokens mixed), writing their latents into `cache`. Scratch and the output come from
  // `workspace`, which the step resets first.
  // With `record`, also keeps what training's backward pass needs; with `counts`, adds the step's
  // routing decisions to them.
  StepOutput step(std::span<const StepSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                  StepRecord* record = nullptr, RouterCounts* counts = nullptr) const;
  // One batched step of the MTP module `depth` (0 for DeepSeek-V3's single module).
  StepOutput mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                      std::int64_t depth = 0, StepRecord* record = nullptr) const;

  // Logits for every position of one sequence (positions 0..T-1), through a temporary cache.
  ForwardOutput forward(std::span<const std::int64_t> ids) const;

  // MTP depth-1 logits [T-1, vocab]: row p predicts token p+2 from the main model's final hidden
  // state h[p] (from forward) and the embedding of token p+1 (zeroed at position 0).
  std::vector<float> mtp_logits(std::span<const std::int64_t> ids, std::span<const float> hidden) const;

 private:
  friend class Follower;
  // This rank's share of a step, announced or not.
  StepOutput compute_step(std::span<const StepSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                          StepRecord* record, RouterCounts* counts) const;
  StepOutput compute_mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, kernels::Workspace& workspace,
                              std::int64_t depth, StepRecord* record) const;

  Weights weights_;
  const kernels::Backend& backend_;
  RopeTable rope_;
  dist::Communicator* comm_ = nullptr;
  std::unique_ptr<StepAnnouncer> announcer_;  // rank 0 of several
};

}  // namespace dsv3

namespace dsv3 {

// A randomly initialised model in the official layout, as transformers initialises one: matrices
// ~ N(0, initializer_range^2), RMSNorm weights 1, router bias 0 (F32). Deterministic in `seed`
// (each tensor's values depend only on the seed and its name).
struct RandomCheckpointOptions {
  std::uint64_t seed = 0;
  bool fp8 = false;                            // E4M3 + weight_scale_inv for the FP8-eligible weights
  std::int64_t shard_bytes = 5'000'000'000;    // above this, model-0000k-of-0000n.safetensors + index
  double initializer_range = 0.02;
};
// Writes config.json and the safetensors into `out` (created if needed); `progress(done_bytes,
// total_bytes)` is called as tensors are made.
void write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& out,
                             const RandomCheckpointOptions& options,
                             const std::function<void(std::int64_t, std::int64_t)>& progress = {});

}  // namespace dsv3
