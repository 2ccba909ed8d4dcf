#pragma once
// The DeepSeek-V3 model: the public face of model/ (DESIGN.md): a batched, cached step for the
// engine, and full-sequence forward passes for parity checks.
#include <cstdint>
#include <span>
#include <vector>

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

struct StepOutput {
  // [rows, hidden]: for step(), the final hidden state after model.norm; for mtp_step(), the MTP
  // layer's output before shared_head.norm (what a further MTP step chains on).
  std::vector<float> hidden;
  std::vector<float> logits;                 // [logit rows, vocab]
  std::vector<std::int64_t> logit_offsets;   // segment i's logits are rows [offsets[i], offsets[i+1])
};

class Model {
 public:
  explicit Model(Weights weights);

  const ModelConfig& config() const { return weights_.config; }
  const Weights& weights() const { return weights_; }

  // One batched forward step over runs of new tokens from several sequences (prefill chunks and
  // decode tokens mixed), writing their latents into `cache`.
  StepOutput step(std::span<const StepSegment> segments, LatentCache& cache) const;
  // One batched step of the MTP module `depth` (0 for DeepSeek-V3's single module).
  StepOutput mtp_step(std::span<const MtpSegment> segments, LatentCache& cache, std::int64_t depth = 0) const;

  // Logits for every position of one sequence (positions 0..T-1), through a temporary cache.
  ForwardOutput forward(std::span<const std::int64_t> ids) const;

  // MTP depth-1 logits [T-1, vocab]: row p predicts token p+2 from the main model's final hidden
  // state h[p] (from forward) and the embedding of token p+1 (zeroed at position 0).
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
