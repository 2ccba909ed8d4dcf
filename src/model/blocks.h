#pragma once
// The blocks of DeepSeek-V3, one function each, over the rows of one sequence (internal to model/).
#include <cstdint>
#include <span>
#include <vector>

#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

// Multi-head Latent Attention, expanded form (kv_b_proj applied to every cached latent).
// x, out: [T, hidden]; positions: [T].
void mla_forward(const AttentionWeights& w, const ModelConfig& config, const RopeTable& rope, const float* x,
                 std::int64_t tokens, std::span<const std::int64_t> positions, float* out);

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

// One pre-norm decoder layer, updating the residual stream h: [T, hidden] in place.
void decoder_layer_forward(const LayerWeights& w, const ModelConfig& config, const RopeTable& rope, float* h,
                           std::int64_t tokens, std::span<const std::int64_t> positions);

}  // namespace dsv3
