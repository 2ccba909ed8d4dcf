#pragma once
// How the model is cut over N ranks (DESIGN.md, dist/), as DeepSeek's reference code cuts it:
// attention by heads (q_b_proj / kv_b_proj rows, o_proj columns), dense and shared-expert MLPs by
// their intermediate dimension (gate/up rows, down columns), routed experts whole, by rank, and the
// embedding and output head by vocabulary rows. The latent projections, norms, router and eh_proj
// are per token, not per head: every rank keeps them whole, and every rank caches the same latents.
// Each rank's partial attention and MLP outputs are summed by an all-reduce; its slice of the
// logits is gathered to rank 0.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "dist/placement.h"
#include "io/checkpoint_layout.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace dsv3 {

struct Weights;

struct IndexRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
  bool contains(std::int64_t i) const { return i >= begin && i < end; }
};

// Which physical expert copies exist in one MoE layer and which rank holds each. Without a
// placement plan there is one copy per expert; with one (dist::place_experts), the heaviest
// experts have several, and a replicated expert's rows are dealt to its copies by token.
struct ExpertCopies {
  std::vector<std::vector<std::int32_t>> copies;  // [logical expert] -> its physical copies
  std::vector<std::int32_t> expert;               // [physical copy] -> logical expert
  std::vector<int> holder;                        // [physical copy] -> rank
  // The copy serving token `token`'s route to `logical`.
  std::int32_t copy_for(std::int32_t logical, std::int64_t token) const {
    const auto& c = copies[static_cast<std::size_t>(logical)];
    return c[static_cast<std::size_t>(token % static_cast<std::int64_t>(c.size()))];
  }
};

struct Shard {
  int rank = 0;
  int ranks = 1;
  IndexRange heads;         // attention heads
  IndexRange dense;         // the dense MLPs' intermediate columns
  IndexRange shared;        // the shared experts' intermediate columns
  IndexRange vocab;         // embedding and output-head rows
  std::vector<std::int64_t> vocab_bounds;  // rank r's vocabulary rows are [bounds[r], bounds[r + 1])
  // Per decoder layer (the MTP modules' layers included, at their indices): the MoE layers'
  // expert copies; empty for dense layers.
  std::vector<ExpertCopies> experts;

  bool whole() const { return ranks == 1; }
  // The widest rank's vocabulary slice: gathered logits are padded to it.
  std::int64_t vocab_stride() const;
  // Whether this rank holds a copy of `logical` in decoder layer `layer`.
  bool holds(std::int64_t layer, std::int64_t logical) const;
};

// How `tensor` is stored in `store`; for a tensor the store lacks (a config alone), as DeepSeek's
// checkpoints store it: FP8 where `config` is quantised and the official checkpoints use it.
DType stored_dtype(const TensorStore* store, const CheckpointTensor& tensor, const ModelConfig& config);

// The single-process shard: everything, one copy per expert.
Shard whole_shard(const ModelConfig& config);

// Rank `rank` of `ranks`'s part, for weights stored as `dtype_of(tensor)` says (FP8 tensors are
// cut only on their 128-row/column scale blocks: a cut that cannot keep to them is an error naming
// the tensor and N). `placement`, when given, holds one plan per MoE layer of the main model, in
// layer order (dsv3 placement); the MTP modules' experts are dealt evenly.
Shard make_shard(const ModelConfig& config, int rank, int ranks, const std::function<DType(const CheckpointTensor&)>& dtype_of,
                 std::span<const dist::LayerPlacement> placement = {});

// How one tensor of the layout is cut for a shard.
struct TensorCut {
  enum class Kind { whole, rows, columns, absent } kind = Kind::whole;
  IndexRange range;  // the rows or columns kept
};
TensorCut cut_of(const CheckpointTensor& tensor, const Shard& shard, const ModelConfig& config);

// The bytes of `tensor` (stored as `dtype`, FP8 with its float32 block scales) a rank of `shard` holds.
std::int64_t held_bytes(const CheckpointTensor& tensor, DType dtype, const Shard& shard, const ModelConfig& config);

// Cuts full weights (views of the mapped checkpoint) down to the shard: row cuts stay views, so
// the rest of the matrix is never read; column cuts are copied out (release_unheld gives back the source);
// routed experts become the shard's physical copies, those of other ranks empty.
void cut_weights(Weights& weights, Shard shard);

// Drops from this process's memory the mapped pages of what the shard does not hold (touching a
// held page maps its neighbours too when the page cache has them, e.g. from another rank on the
// same host), so that a rank's resident memory is its part.
void release_unheld(const Weights& weights);

// Reads the held weights in now (each page once), rather than on first use.
void read_in_held(const Weights& weights, const std::function<void(std::int64_t done, std::int64_t total)>& progress = {});

}  // namespace dsv3
