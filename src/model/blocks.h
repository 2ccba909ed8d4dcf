#pragma once
// The blocks of DeepSeek-V3, one function each (internal to model/), written against the op
// interface: every value lives in a kernels::Tensor from the step's workspace, every computation
// is an op of the backend.
#include <cstdint>
#include <span>

#include "dist/communicator.h"
#include "kernels/ops.h"
#include "model/latent_cache.h"
#include "model/model.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {


// What every block of one step shares: the config, the backend computing it, the step's scratch.
struct Context {
  const ModelConfig& config;
  const kernels::Backend& backend;
  kernels::Workspace& workspace;
  kernels::RopeParams rope;
  float eps;
  StepRecord* record = nullptr;  // training: what the backward pass needs is kept here
  LayerRecord* layer = nullptr;  // the record of the layer being computed
  RouterCounts* router_counts = nullptr;   // Model::step given counts: the routing is tallied here
  std::span<std::int64_t> expert_counts = {};  // ... the MoE layer being computed's, per expert
  const Shard* shard = nullptr;            // this rank's part of the weights
  dist::Communicator* comm = nullptr;      // across ranks (shard->ranks > 1): joins the partial outputs
  bool split() const { return shard && !shard->whole(); }
  // Sums a block's partial output over the ranks (each rank computed its heads, its MLP columns,
  // its experts); the same bits on every rank, so the ranks' residual streams stay identical.
  void all_reduce(kernels::Tensor t) const;
  // A tensor that outlives the step, in the record's storage.
  kernels::Tensor keep(std::int64_t rows, std::int64_t cols) const { return record->storage->tensor(rows, cols); }
  template <typename T>
  std::span<T> keep_array(std::int64_t count) const {
    return record->storage->array<T>(count);
  }
};

// The rows of one step: consecutive runs of new tokens, each run from one sequence whose cache
// pages already hold positions [0, start).
struct BatchRows {
  struct Run {
    const LatentCache::Table* table = nullptr;
    std::int64_t start = 0;   // position of the run's first token
    std::int64_t count = 0;   // new tokens
    std::int64_t first_row = 0;
    bool all_logits = false;  // logits for every row of the run, or only the last
  };
  std::span<Run> runs;
  std::span<std::int64_t> positions;  // [rows]
  std::int64_t rows() const { return static_cast<std::int64_t>(positions.size()); }
};

// Lays out the rows of a step in the workspace from `runs` (first_row filled in), checked
// against the cache.
BatchRows make_batch_rows(Context& context, std::span<BatchRows::Run> runs, const LatentCache& cache);

// Multi-head Latent Attention over the batch; stores each new token's latent row in `cache` at
// `layer`, then attends over the cached rows. x, out: [rows, hidden].
void mla_forward(Context& context, const AttentionWeights& w, std::int64_t layer, kernels::Tensor x,
                 const BatchRows& batch, LatentCache& cache, kernels::Tensor out);

// Dense SwiGLU MLP. x, out: [T, hidden]. With `keep_gate` and `keep_up`, the gate_proj and up_proj
// outputs are kept there (in the record's storage).
void mlp_forward(Context& context, const MlpWeights& w, kernels::Tensor x, kernels::Tensor out,
                 kernels::Tensor* keep_gate = nullptr, kernels::Tensor* keep_up = nullptr);

// Routed experts weighted by their gates, plus the shared experts. x, out: [T, hidden].
void moe_forward(Context& context, const MoeWeights& w, kernels::Tensor x, kernels::Tensor out);

// One pre-norm decoder layer, updating the residual stream h: [rows, hidden] in place.
void decoder_layer_forward(Context& context, const LayerWeights& w, std::int64_t layer, kernels::Tensor h,
                           const BatchRows& batch, LatentCache& cache);

// out[i] = table[ids[i]], for an embedding cut by vocabulary rows across ranks (each rank looks up
// the ids in its rows, the all-reduce joins them); ids of kZeroRow give zero rows.
void embed(Context& context, const Matrix& table, std::span<const std::int64_t> ids, kernels::Tensor out);

// Final norm and output head for each run's last row, or all its rows where the run asks; fills
// out.logits and out.logit_offsets (across ranks, rank 0's gathers every rank's vocabulary slice).
void output_head(Context& context, const Matrix& head_weight, std::span<const float> norm, const BatchRows& batch,
                 kernels::Tensor h, StepOutput& out);

}  // namespace dsv3
