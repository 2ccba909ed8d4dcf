#pragma once
// The generation engine: sequences, their latent KV cache pages and sampling state, advanced
// together by one batched model step at a time (prefill chunks and decode tokens mixed), with
// optional lossless MTP speculative decoding. This is the unit a server's continuous batching
// drives; the CLI drives it for one sequence or a fixed batch.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/block_manager.h"
#include "engine/rng.h"
#include "engine/sampler.h"
#include "engine/stop.h"
#include "model/latent_cache.h"
#include "model/model.h"

namespace dsv3 {

struct EngineOptions {
  std::int64_t cache_tokens = 8192;   // KV cache capacity, shared by all sequences
  DType cache_dtype = DType::BF16;    // BF16 or F32 latents
  std::int64_t block_tokens = 16;     // cache page size
  std::int64_t prefill_chunk = 512;   // most prompt tokens a sequence feeds per step
  std::int64_t max_step_tokens = 512; // most tokens a step feeds: decoding sequences first, then prefill chunks
  std::int64_t mtp_drafts = 0;        // k tokens drafted per step by the MTP module (0: off)
  bool prefix_cache = true;           // share and keep full cache blocks by their tokens (block_manager.h)
  bool expert_stats = false;          // count the main model's routing per MoE layer (router_counts())
};

// Acceptance of MTP drafts by draft position (0 = the first draft of a step).
struct SpeculationStats {
  std::vector<std::int64_t> drafted;
  std::vector<std::int64_t> accepted;
  double acceptance(std::size_t position) const {
    return drafted.at(position) ? static_cast<double>(accepted[position]) / static_cast<double>(drafted[position]) : 0.0;
  }
};

using SequenceId = std::int64_t;

// A token produced for a sequence. `finished` is set on its last token (stop token id,
// end-of-sequence, or max_tokens); a stop token is reported, flagged, for the caller to hide.
struct TokenEvent {
  SequenceId sequence = 0;
  SampledToken sampled;
  bool finished = false;
  FinishReason reason = FinishReason::none;
  // The sequence's MTP drafts so far, tried and accepted (0 without MTP), for per-request figures.
  std::int64_t drafted = 0, accepted = 0;
};

class Engine {
 public:
  Engine(const Model& model, EngineOptions options);
  ~Engine();

  // Queues a prompt; throws on an empty or over-long prompt, out-of-vocabulary ids, or bad params.
  SequenceId add(std::vector<std::int32_t> prompt, const SamplingParams& params);
  // Prompt tokens the sequence took from the prefix cache at add() (it prefills only the rest).
  std::int64_t cached_prompt_tokens(SequenceId id) const;
  // Ends a sequence early (a stop string seen by the caller, a cancelled request) and frees its
  // pages. Sequences that finish by themselves (their last event has `finished`) are freed at the
  // end of the step that finished them.
  void finish(SequenceId id);

  bool has_work() const;
  // One batched step: every decoding sequence, then prefill chunks within the step's token budget
  // (max_step_tokens); the tokens it produced, valid until the next call. When the cache cannot
  // hold the step, the newest sequences are preempted: their pages go back and they are computed
  // again (prefix cache permitting, only in part) when there is room, keeping what they produced
  // and their sampler state, so a greedy result does not change. Throws CacheFullError only when
  // one sequence alone does not fit (nothing is changed then).
  // Once warm (the same batch decoding for a few steps) a step allocates nothing: its scratch,
  // the workspace, the events and the sequences' buffers (reserved at admission) are reused.
  std::span<const TokenEvent> step();

  const SpeculationStats& speculation() const { return speculation_; }
  std::int64_t preemptions() const { return preemptions_; }
  // Preempted sequences waiting to be computed again.
  std::int64_t waiting() const;
  // Cache tokens left once every running sequence has the pages its prompt (or its current length)
  // and next step need: what a new sequence can count on without preempting another.
  std::int64_t room_tokens() const;
  const LatentCache& cache() const { return cache_; }
  // Cache tokens a new sequence can still get: free blocks and evictable cached ones.
  std::int64_t free_tokens() const { return blocks_.available_tokens(); }
  PrefixCacheStats prefix_cache() const { return blocks_.stats(); }
  const EngineOptions& options() const { return options_; }
  // With expert_stats: the rows routed to each expert of each MoE layer by every main-model step so
  // far (prefill, decode, and MTP drafts verified whether accepted or not: all rows the experts
  // computed), else null.
  const RouterCounts* router_counts() const { return router_counts_ ? &*router_counts_ : nullptr; }

 private:
  struct Sequence;
  void draft();
  // Appends `token`, drawn from the raw `logits` row, to the sequence and reports it.
  void emit(Sequence& sequence, std::span<const float> logits, std::int32_t token);
  // Fills prefilling_ and decoding_ (with each prefill's chunk) for the next step; returns the
  // cache tokens the step needs beyond what the sequences hold.
  std::int64_t plan();
  void preempt(Sequence& sequence);
  std::int64_t running() const;  // sequences neither finished nor preempted
  void resume(Sequence& sequence);
  // Publishes the sequence's full blocks whose rows (and MTP rows, when drafting) are written.
  void publish(Sequence& sequence);

  const Model& model_;
  EngineOptions options_;
  LatentCache cache_;
  BlockManager blocks_;
  kernels::Workspace workspace_;  // the model's scratch, reused by every step
  std::map<SequenceId, std::unique_ptr<Sequence>> sequences_;
  SequenceId next_id_ = 1;
  SpeculationStats speculation_;
  std::int64_t preemptions_ = 0;
  std::optional<RouterCounts> router_counts_;

  // Per-step scratch, cleared (not freed) by every step, so a step of a batch no larger than an
  // earlier one allocates nothing.
  std::vector<Sequence*> prefilling_, decoding_;
  std::vector<std::int64_t> step_tokens_;  // every segment's new tokens, back to back
  std::vector<StepSegment> segments_;
  std::vector<MtpSegment> mtp_segments_;
  std::vector<float> chained_;                // [decoding, hidden]: the MTP output a further draft chains on
  std::vector<std::int32_t> draft_tokens_;    // [decoding, k]
  std::vector<float> draft_distributions_;    // [decoding, k, vocab]: q, what each draft was drawn from
  std::vector<float> targets_;                // [k + 1, vocab]: p at each verified position
  std::vector<float> distribution_;           // [vocab]: the row a token is drawn from
  std::vector<std::int32_t> argmax_tokens_;   // [decoding]: plain arg-max rows' tokens, over the pool; else -1
  std::vector<float> residual_;               // [vocab]: speculative sampling's residual
  Verification verification_;
  std::vector<TokenEvent> events_;  // [0, event_count_) is this step's; later slots keep their capacity
  std::size_t event_count_ = 0;
  std::int32_t most_logprobs_ = 0;   // the most top logprobs any sequence asks for
  std::int32_t slot_logprobs_ = 0;   // what every slot of events_ has room for
};

}  // namespace dsv3
