#pragma once
// The DeepSeek-V3 model: the public face of model/ (DESIGN.md). Full-sequence forward for now;
// the engine's cached, batched step builds on the same blocks.
#include <cstdint>
#include <span>
#include <vector>

#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

struct ForwardOutput {
  std::vector<float> hidden;  // [T, hidden]: the final hidden state after model.norm
  std::vector<float> logits;  // [T, vocab]
};

class Model {
 public:
  explicit Model(Weights weights);

  const ModelConfig& config() const { return weights_.config; }
  const Weights& weights() const { return weights_; }

  // Logits for every position of one sequence (positions 0..T-1, causal, no cache).
  ForwardOutput forward(std::span<const std::int64_t> ids) const;

  // MTP depth-1 logits [T-1, vocab]: row p predicts token p+2 from the main model's final hidden
  // state h[p] (from forward) and the embedding of token p+1.
  std::vector<float> mtp_logits(std::span<const std::int64_t> ids, std::span<const float> hidden) const;

 private:
  Weights weights_;
  RopeTable rope_;
};

}  // namespace dsv3

namespace dsv3 {

// Parameter counts derived from the config alone (works without weights, e.g. for planning).
struct ParameterCount {
  std::int64_t total = 0;               // main model, embedding and head included, MTP excluded
  std::int64_t activated = 0;           // used per token: everything but the unchosen routed experts
  std::int64_t embedding = 0;           // embed_tokens + lm_head (one matrix when tied)
  std::int64_t read_per_token = 0;      // weights a decode step streams: activated less the embedding
                                        // table (only one of its rows is read)
  std::int64_t mtp = 0;                 // each MTP module's own weights (embedding and head are shared)
  std::int64_t routed_expert_total = 0; // all routed experts of all layers
};
ParameterCount count_parameters(const ModelConfig& config);

// Bytes of the latent KV cache per token: (kv_lora_rank + qk_rope_head_dim) per layer.
std::int64_t kv_cache_bytes_per_token(const ModelConfig& config, std::int64_t bytes_per_value);

}  // namespace dsv3
