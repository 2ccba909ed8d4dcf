#pragma once
// The blocks of DeepSeek-V3, one function each (internal to model/).
#include <cstdint>
#include <span>
#include <vector>

#include "model/latent_cache.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

// The rows of one step: consecutive runs of new tokens, each run from one sequence whose cache
// pages already hold positions [0, start).
struct BatchRows {
  struct Run {
    const LatentCache::Table* table = nullptr;
    std::int64_t start = 0;   // position of the run's first token
    std::int64_t count = 0;   // new tokens
    std::int64_t first_row = 0;
  };
  std::vector<Run> runs;
  std::vector<std::int64_t> positions;  // [rows]
  std::int64_t rows() const { return static_cast<std::int64_t>(positions.size()); }
};

// Multi-head Latent Attention over the batch; stores each new token's latent row in `cache` at
// `layer`, then attends over the cached rows. x, out: [rows, hidden].
void mla_forward(const AttentionWeights& w, const ModelConfig& config, const RopeTable& rope, std::int64_t layer,
                 const float* x, const BatchRows& batch, LatentCache& cache, float* out);

// Dense SwiGLU MLP. x: [T, hidden], out: [T, hidden].
void mlp_forward(const MlpWeights& w, const float* x, std::int64_t tokens, float* out);

// DeepSeekMoE routing for each token: the chosen experts and their gate weights.
struct Routes {
  std::vector<std::int32_t> experts;  // [T, top_k]
  std::vector<float> weights;         // [T, top_k]
};
Routes route(const MoeWeights& w, const ModelConfig& config, const float* x, std::int64_t tokens);

// Routed experts weighted by their gates, plus the shared experts. x, out: [T, hidden].
void moe_forward(const MoeWeights& w, const ModelConfig& config, const float* x, std::int64_t tokens, float* out);

// One pre-norm decoder layer, updating the residual stream h: [rows, hidden] in place.
void decoder_layer_forward(const LayerWeights& w, const ModelConfig& config, const RopeTable& rope,
                           std::int64_t layer, float* h, const BatchRows& batch, LatentCache& cache);

// Lays out the rows of a step from runs of (table, start, count), checked against the cache.
BatchRows make_batch_rows(const std::vector<BatchRows::Run>& runs, const LatentCache& cache);

// Final norm and output head for each run's last row, or all its rows where all_logits[run] is set;
// fills out.logits and out.logit_offsets.
struct StepOutput;
void output_head(const Matrix& head_weight, const std::vector<float>& norm, float eps, const BatchRows& batch,
                 const std::vector<bool>& all_logits, const float* h, std::int64_t hidden, StepOutput& out);

}  // namespace dsv3
