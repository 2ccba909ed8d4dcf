#include "engine/engine.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dsv3 {
namespace {

// Seeds every prefix-cache chain: blocks are only shared within one model and cache layout.
std::uint64_t model_key(const ModelConfig& c, const EngineOptions& options) {
  const std::vector<std::int32_t> shape = {
      static_cast<std::int32_t>(c.vocab_size),        static_cast<std::int32_t>(c.hidden_size),
      static_cast<std::int32_t>(c.num_hidden_layers), static_cast<std::int32_t>(c.num_nextn_predict_layers),
      static_cast<std::int32_t>(c.kv_lora_rank),      static_cast<std::int32_t>(c.qk_rope_head_dim),
      static_cast<std::int32_t>(options.cache_dtype), static_cast<std::int32_t>(options.block_tokens),
      options.mtp_drafts > 0 ? 1 : 0};
  return chain_hash(0x64737633ull, shape);
}

}  // namespace

struct Engine::Sequence {
  SequenceId id = 0;
  SamplingParams params;
  Rng rng{0};
  std::vector<std::int32_t> prompt, output;  // output has room for the longest it can grow
  PenaltyCounts penalties;                   // kept only when the params use them (penalized)
  bool penalized = false;
  LatentCache::Table table;
  BlockManager::Chain chain;
  std::int64_t cached_prompt = 0;  // prompt tokens matched in the prefix cache at admission
  std::int64_t main_cached = 0;   // positions whose latents the main layers have cached
  std::int64_t mtp_cached = 0;    // MTP rows cached (row p: h[p] with token p + 1)
  std::vector<float> mtp_hidden;  // main final hidden states at positions [mtp_cached, main_cached)
  std::int64_t drafted = 0, accepted = 0;  // MTP drafts verified and accepted, reported with each event
  bool finished = false;
  bool preempted = false;  // its pages were taken back; it waits to be computed again
  std::int64_t chunk = 0;  // prompt tokens it prefills in the step being planned

  // Positions whose rows must be cached before it decodes: the prompt, or after a preemption
  // everything but the last token produced (which the next decode step feeds).
  std::int64_t prefill_target() const {
    return output.empty() ? static_cast<std::int64_t>(prompt.size()) : length() - 1;
  }

  std::int64_t length() const { return static_cast<std::int64_t>(prompt.size() + output.size()); }
  std::int32_t token(std::int64_t position) const {
    const auto p = static_cast<std::size_t>(position);
    return p < prompt.size() ? prompt[p] : output[p - prompt.size()];
  }
  // Speculative drafts enter the penalties' history while they are tried, then leave it.
  void try_token(std::int32_t t) {
    if (penalized) penalties.add(t);
  }
  void untry_tokens(std::span<const std::int32_t> tokens) {
    if (penalized)
      for (const std::int32_t t : tokens) penalties.remove(t);
  }
};

Engine::Engine(const Model& model, EngineOptions options)
    : model_(model),
      options_(options),
      cache_(model.config(),
             {.capacity_tokens = options.cache_tokens, .dtype = options.cache_dtype, .block_tokens = options.block_tokens},
             model.backend()),
      blocks_(cache_, model_key(model.config(), options), options.prefix_cache, options.mtp_drafts > 0),
      workspace_(model.backend()) {
  if (options_.prefill_chunk <= 0) fail("prefill chunk must be positive");
  if (options_.max_step_tokens <= 0) fail("the step token budget (--max-step-tokens) must be positive");
  if (options_.mtp_drafts < 0) fail("--mtp must be 0 or more draft tokens");
  if (options_.mtp_drafts > 0 && model.weights().mtp.empty())
    fail("MTP speculative decoding needs an MTP module, and this model has none (num_nextn_predict_layers = 0)");
  if (options_.expert_stats) router_counts_.emplace(model.config());
  speculation_.drafted.assign(static_cast<std::size_t>(options_.mtp_drafts), 0);
  speculation_.accepted.assign(static_cast<std::size_t>(options_.mtp_drafts), 0);
  const auto vocab = static_cast<std::size_t>(model.config().vocab_size);
  distribution_.resize(vocab);
  if (options_.mtp_drafts > 0) {
    targets_.resize(static_cast<std::size_t>(options_.mtp_drafts + 1) * vocab);
    residual_.resize(vocab);
    verification_.tokens.reserve(static_cast<std::size_t>(options_.mtp_drafts + 1));
  }
}

Engine::~Engine() = default;

SequenceId Engine::add(std::vector<std::int32_t> prompt, const SamplingParams& params) {
  const ModelConfig& c = model_.config();
  params.validate(c.vocab_size);
  if (prompt.empty()) fail("the prompt is empty");
  for (std::size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= c.vocab_size)
      fail("prompt token {} at position {} is outside the vocabulary [0, {})", prompt[i], i, c.vocab_size);
  const std::int64_t limit = c.max_position_embeddings;
  const std::int64_t wanted = static_cast<std::int64_t>(prompt.size()) + params.max_tokens.value_or(1);
  if (wanted > limit)
    fail("the prompt has {} tokens and up to {} more are asked for, beyond the model's {} positions",
         prompt.size(), params.max_tokens.value_or(1), limit);
  auto sequence = std::make_unique<Sequence>();
  sequence->id = next_id_++;
  sequence->params = params;
  sequence->rng = Rng::from_seed_or_entropy(params.seed);
  // Room for the longest the sequence can grow (its max_tokens, the model's positions and the
  // cache all bound it), so that decoding never grows its buffers: output, page table, penalty
  // counts (with the drafts tried on top), the MTP hidden rows of one verification.
  const auto prompt_tokens = static_cast<std::int64_t>(prompt.size());
  const std::int64_t k = options_.mtp_drafts;
  const std::int64_t longest = std::min(
      params.max_tokens ? prompt_tokens + *params.max_tokens : limit, std::max(prompt_tokens, cache_.capacity_tokens()));
  sequence->output.reserve(static_cast<std::size_t>(std::max<std::int64_t>(longest - prompt_tokens, 0)));
  sequence->table.blocks.reserve(static_cast<std::size_t>(
      std::min((longest + k + cache_.block_tokens() - 1) / cache_.block_tokens(),
               cache_.capacity_tokens() / cache_.block_tokens())));
  sequence->penalized = uses_history(params);
  if (sequence->penalized) {
    const std::int64_t distinct = std::min(c.vocab_size, longest + k);
    sequence->penalties = PenaltyCounts({prompt, {}}, static_cast<std::size_t>(distinct));
  }
  if (k > 0) sequence->mtp_hidden.reserve(static_cast<std::size_t>((k + 1) * c.hidden_size));
  most_logprobs_ = std::max(most_logprobs_, params.logprobs);
  // Matched blocks hold the main and the MTP rows of their positions, never written again.
  sequence->cached_prompt = blocks_.match(prompt, sequence->table, sequence->chain);
  sequence->main_cached = sequence->mtp_cached = sequence->cached_prompt;
  sequence->prompt = std::move(prompt);
  const SequenceId id = sequence->id;
  sequences_.emplace(id, std::move(sequence));
  return id;
}

std::int64_t Engine::cached_prompt_tokens(SequenceId id) const {
  const auto it = sequences_.find(id);
  return it == sequences_.end() ? 0 : it->second->cached_prompt;
}

void Engine::finish(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  blocks_.release(it->second->table, it->second->chain);
  sequences_.erase(it);
}

bool Engine::has_work() const {
  return std::any_of(sequences_.begin(), sequences_.end(), [](const auto& entry) { return !entry.second->finished; });
}

void Engine::emit(Sequence& sequence, std::span<const float> logits, std::int32_t token) {
  if (sequence.finished) return;
  const ModelConfig& c = model_.config();
  sequence.output.push_back(token);
  if (sequence.penalized) sequence.penalties.add(token);
  TokenEvent& event = events_.at(event_count_++);  // a slot step() made room for
  event.sequence = sequence.id;
  event.drafted = sequence.drafted;
  event.accepted = sequence.accepted;
  event.sampled.token = token;
  event.sampled.logprob = sequence.params.token_logprob || sequence.params.logprobs > 0
                              ? token_logprob(logits, token)
                              : std::numeric_limits<float>::quiet_NaN();  // not asked for
  if (sequence.params.logprobs > 0) {
    top_logprobs(logits, sequence.params.logprobs, event.sampled.top_logprobs);
  } else {
    event.sampled.top_logprobs.clear();
  }
  event.reason = FinishReason::none;
  const auto& stops = sequence.params.stop_token_ids;
  const bool is_eos = std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), token) != c.eos_token_ids.end();
  const bool is_stop = std::find(stops.begin(), stops.end(), token) != stops.end() ||
                       (is_eos && !sequence.params.ignore_eos);
  if (is_stop) {
    event.reason = FinishReason::stop_token;
  } else if (sequence.params.max_tokens && static_cast<std::int64_t>(sequence.output.size()) >= *sequence.params.max_tokens) {
    event.reason = FinishReason::max_tokens;
  } else if (sequence.length() >= c.max_position_embeddings) {
    event.reason = FinishReason::max_tokens;
  }
  event.finished = event.reason != FinishReason::none;
  sequence.finished = event.finished;
}

void Engine::publish(Sequence& sequence) {
  const std::int64_t complete =
      options_.mtp_drafts > 0 ? std::min(sequence.main_cached, sequence.mtp_cached) : sequence.main_cached;
  blocks_.publish(sequence.table, sequence.chain, complete, sequence.prompt, sequence.output);
}

// MTP drafting for every decoding sequence: first the rows the MTP module has not yet seen (main
// hidden states of the last accepted tokens), whose last row drafts token N; then k - 1 more rows
// that chain on the module's own output to draft tokens N + 1 ...
void Engine::draft() {
  const std::int64_t vocab = model_.config().vocab_size, hidden = model_.config().hidden_size;
  const std::int64_t k = options_.mtp_drafts;
  const std::size_t n = decoding_.size();
  draft_tokens_.resize(n * static_cast<std::size_t>(k));
  draft_distributions_.resize(n * static_cast<std::size_t>(k * vocab));
  chained_.resize(n * static_cast<std::size_t>(hidden));
  // Row p of a sequence's first MTP run pairs h[p] with token p + 1.
  std::size_t rows = 0;
  for (const Sequence* seq : decoding_) rows += static_cast<std::size_t>(seq->main_cached - seq->mtp_cached);
  step_tokens_.resize(std::max(rows, n));
  mtp_segments_.clear();
  for (std::size_t s = 0, row = 0; s < n; ++s) {
    Sequence& seq = *decoding_[s];
    const std::size_t first = row;
    for (std::int64_t p = seq.mtp_cached; p < seq.main_cached; ++p) step_tokens_[row++] = seq.token(p + 1);
    mtp_segments_.push_back({&seq.table, seq.mtp_cached, seq.mtp_hidden,
                             std::span<const std::int64_t>(step_tokens_.data() + first, row - first), false});
  }
  StepOutput out = model_.mtp_step(mtp_segments_, cache_, workspace_);
  for (std::int64_t i = 0;; ++i) {
    std::int64_t row_end = 0;
    for (std::size_t s = 0; s < n; ++s) {
      Sequence& seq = *decoding_[s];
      const std::span<const float> logits(out.logits.data + out.logit_offsets[s] * vocab, static_cast<std::size_t>(vocab));
      // q given the output and this step's drafts so far (tried in the penalties' history).
      const std::span<float> q(draft_distributions_.data() + (s * k + i) * vocab, static_cast<std::size_t>(vocab));
      target_distribution(logits, seq.penalties, seq.params, q);
      const std::int32_t token = draw(q, seq.rng);
      draft_tokens_[s * k + i] = token;
      seq.try_token(token);
      row_end += static_cast<std::int64_t>(mtp_segments_[s].next_tokens.size());
      std::copy_n(out.hidden.data + (row_end - 1) * hidden, hidden, chained_.data() + s * hidden);
      if (i == 0) {
        seq.mtp_cached = seq.main_cached;
        seq.mtp_hidden.clear();
      }
    }
    if (i + 1 == k) break;
    // Row p = N - 2 + i + 1 approximates the unknown main hidden state h[p] by the MTP output of
    // row p - 1; these rows are overwritten once the main model has verified the drafts.
    mtp_segments_.clear();
    for (std::size_t s = 0; s < n; ++s) {
      step_tokens_[s] = draft_tokens_[s * k + i];
      mtp_segments_.push_back({&decoding_[s]->table, decoding_[s]->main_cached + i,
                               std::span<const float>(chained_.data() + s * hidden, static_cast<std::size_t>(hidden)),
                               std::span<const std::int64_t>(step_tokens_.data() + s, 1), false});
    }
    out = model_.mtp_step(mtp_segments_, cache_, workspace_);
  }
  for (std::size_t s = 0; s < n; ++s)
    decoding_[s]->untry_tokens(std::span<const std::int32_t>(draft_tokens_.data() + s * k, static_cast<std::size_t>(k)));
}

std::int64_t Engine::plan() {
  const std::int64_t k = options_.mtp_drafts, block = cache_.block_tokens();
  const auto blocks_for = [block](std::int64_t tokens) { return (tokens + block - 1) / block; };
  prefilling_.clear();
  decoding_.clear();
  for (auto& [id, seq] : sequences_)
    if (!seq->finished && !seq->preempted && seq->main_cached >= seq->prefill_target()) decoding_.push_back(seq.get());
  // Decoding first; prefill chunks, oldest sequence first, share what is left of the budget.
  std::int64_t budget = options_.max_step_tokens - static_cast<std::int64_t>(decoding_.size()) * (1 + k);
  std::int64_t needed = 0;
  for (auto& [id, seq] : sequences_) {
    if (seq->finished || seq->preempted || seq->main_cached >= seq->prefill_target()) continue;
    seq->chunk = std::min({seq->prefill_target() - seq->main_cached, options_.prefill_chunk, budget});
    if (seq->chunk <= 0) continue;
    budget -= seq->chunk;
    prefilling_.push_back(seq.get());
    needed += std::max<std::int64_t>(
        blocks_for(seq->main_cached + seq->chunk) - static_cast<std::int64_t>(seq->table.blocks.size()), 0);
  }
  for (const Sequence* seq : decoding_)
    needed +=
        std::max<std::int64_t>(blocks_for(seq->length() + k) - static_cast<std::int64_t>(seq->table.blocks.size()), 0);
  return needed * block;
}

void Engine::preempt(Sequence& sequence) {
  blocks_.release(sequence.table, sequence.chain);
  sequence.main_cached = sequence.mtp_cached = 0;
  sequence.mtp_hidden.clear();
  sequence.preempted = true;
  ++preemptions_;
}

void Engine::resume(Sequence& sequence) {
  // Its blocks published before the preemption may still be cached.
  std::vector<std::int32_t> tokens(sequence.prompt);
  tokens.insert(tokens.end(), sequence.output.begin(), sequence.output.end());
  sequence.main_cached = sequence.mtp_cached = blocks_.match(tokens, sequence.table, sequence.chain);
  sequence.preempted = false;
}

std::int64_t Engine::running() const {
  return std::count_if(sequences_.begin(), sequences_.end(),
                       [](const auto& entry) { return !entry.second->finished && !entry.second->preempted; });
}

std::int64_t Engine::waiting() const {
  return std::count_if(sequences_.begin(), sequences_.end(),
                       [](const auto& entry) { return !entry.second->finished && entry.second->preempted; });
}

std::int64_t Engine::room_tokens() const {
  const std::int64_t block = cache_.block_tokens();
  std::int64_t wanted = 0;
  for (const auto& [id, seq] : sequences_) {
    if (seq->finished || seq->preempted) continue;
    const std::int64_t target = std::max(seq->prefill_target(), seq->length()) + options_.mtp_drafts + 1;
    wanted += std::max<std::int64_t>(
        (target + block - 1) / block - static_cast<std::int64_t>(seq->table.blocks.size()), 0);
  }
  return std::max<std::int64_t>(blocks_.available_tokens() - wanted * block, 0);
}

std::span<const TokenEvent> Engine::step() {
  const std::int64_t vocab = model_.config().vocab_size, hidden = model_.config().hidden_size;
  const bool speculate = options_.mtp_drafts > 0;
  const std::int64_t k = options_.mtp_drafts;
  const auto row_of = [vocab](const float* logits) { return std::span<const float>(logits, static_cast<std::size_t>(vocab)); };
  event_count_ = 0;
  std::int64_t needed = plan();
  // Preempted sequences come back, oldest first, once the cache holds them beside the running ones
  // (all of them grown to their current length); alone, the oldest comes back whatever it needs.
  for (auto& [id, seq] : sequences_) {
    if (seq->finished || !seq->preempted) continue;
    const std::int64_t block = cache_.block_tokens();
    const std::int64_t want = (seq->length() + k + block) / block * block;
    if (running() > 0 && needed + want > blocks_.available_tokens()) break;
    resume(*seq);
    needed = plan();
  }
  // When the running sequences need more pages than there are, the newest give theirs back and
  // wait to be computed again; pages are taken only once the whole step fits.
  while (needed > blocks_.available_tokens()) {
    if (running() <= 1)
      throw CacheFullError(fmt::format(
          "KV cache exhausted: one sequence needs {} more tokens of cache, but only {} of {} tokens are free "
          "(raise the cache capacity)",
          needed, blocks_.available_tokens(), cache_.capacity_tokens()));
    for (auto it = sequences_.rbegin(); it != sequences_.rend(); ++it)
      if (!it->second->finished && !it->second->preempted) {
        preempt(*it->second);
        break;
      }
    needed = plan();
  }
  for (Sequence* seq : prefilling_) blocks_.reserve(seq->table, seq->main_cached + seq->chunk);
  for (Sequence* seq : decoding_) blocks_.reserve(seq->table, seq->length() + k);

  // A slot for every token the step can emit, each with room for the most top logprobs asked for.
  const std::size_t most_events = prefilling_.size() + decoding_.size() * static_cast<std::size_t>(1 + k);
  if (events_.size() < most_events || slot_logprobs_ < most_logprobs_) {
    events_.resize(std::max(events_.size(), most_events));
    for (TokenEvent& event : events_) event.sampled.top_logprobs.reserve(static_cast<std::size_t>(most_logprobs_));
    slot_logprobs_ = most_logprobs_;
  }

  if (speculate && !decoding_.empty()) draft();

  // One main-model step: prefill chunks, then each decoding sequence's pending token and drafts.
  std::size_t total = decoding_.size() * static_cast<std::size_t>(1 + k);
  for (const Sequence* seq : prefilling_) total += static_cast<std::size_t>(seq->chunk);
  step_tokens_.resize(total);
  segments_.clear();
  std::size_t next = 0;
  for (Sequence* seq : prefilling_) {
    const auto count = static_cast<std::size_t>(seq->chunk);
    for (std::size_t i = 0; i < count; ++i)
      step_tokens_[next + i] = seq->token(seq->main_cached + static_cast<std::int64_t>(i));
    segments_.push_back({&seq->table, seq->main_cached, std::span<const std::int64_t>(step_tokens_.data() + next, count), false});
    next += count;
  }
  for (std::size_t s = 0; s < decoding_.size(); ++s) {
    Sequence* seq = decoding_[s];
    step_tokens_[next] = seq->token(seq->length() - 1);
    for (std::int64_t i = 0; i < k; ++i) step_tokens_[next + 1 + i] = draft_tokens_[s * k + i];
    segments_.push_back({&seq->table, seq->main_cached,
                         std::span<const std::int64_t>(step_tokens_.data() + next, static_cast<std::size_t>(1 + k)),
                         speculate});
    next += static_cast<std::size_t>(1 + k);
  }
  if (segments_.empty()) return {};
  const StepOutput out = model_.step(segments_, cache_, workspace_, nullptr, router_counts_ ? &*router_counts_ : nullptr);

  // Without drafts, the decode rows that take the plain arg-max (sample_token reads their logits
  // alone) get it over the pool, then are emitted in order below; the other rows are sampled there,
  // on this thread. One core took ~74 us a row for the arg-max over bench-1b's 129,280 logits.
  const std::size_t decode_begin = prefilling_.size();
  if (!speculate) {  // a single row runs inline
    argmax_tokens_.assign(decoding_.size(), -1);
    ThreadPool::global().parallel_for(static_cast<std::int64_t>(decoding_.size()), 1, [&](std::int64_t first, std::int64_t last) {
      for (auto d = static_cast<std::size_t>(first); d < static_cast<std::size_t>(last); ++d) {
        Sequence& seq = *decoding_[d];
        if (!plain_argmax(seq.params)) continue;
        const std::span<const float> logits = row_of(out.logits.data + out.logit_offsets[decode_begin + d] * vocab);
        argmax_tokens_[d] = sample_token(logits, seq.penalties, seq.params, seq.rng, distribution_);  // reads neither
      }
    });
  }
  std::int64_t row = 0;  // first hidden row of the current segment
  for (std::size_t s = 0; s < segments_.size(); ++s) {
    const auto count = static_cast<std::int64_t>(segments_[s].tokens.size());
    const float* logits = out.logits.data + out.logit_offsets[s] * vocab;
    const float* hidden_rows = out.hidden.data + row * hidden;
    row += count;
    if (s < prefilling_.size()) {
      Sequence& seq = *prefilling_[s];
      seq.main_cached += count;
      if (speculate) seq.mtp_hidden.insert(seq.mtp_hidden.end(), hidden_rows, hidden_rows + count * hidden);
      // A sequence computed again after a preemption already has its next token.
      if (seq.main_cached == seq.prefill_target() && seq.output.empty())
        emit(seq, row_of(logits), sample_token(row_of(logits), seq.penalties, seq.params, seq.rng, distribution_));
      continue;
    }
    const std::size_t d = s - prefilling_.size();
    Sequence& seq = *decoding_[d];
    if (!speculate) {
      seq.main_cached += 1;
      emit(seq, row_of(logits),
           argmax_tokens_[d] >= 0 ? argmax_tokens_[d]
                                  : sample_token(row_of(logits), seq.penalties, seq.params, seq.rng, distribution_));
      continue;
    }
    // Verify: row i is the target distribution after the pending token and drafts [0, i).
    const std::span<const std::int32_t> drafts(draft_tokens_.data() + d * k, static_cast<std::size_t>(k));
    for (std::int64_t i = 0; i <= k; ++i) {
      target_distribution(row_of(logits + i * vocab), seq.penalties, seq.params,
                          {targets_.data() + i * vocab, static_cast<std::size_t>(vocab)});
      if (i < k) seq.try_token(drafts[i]);
    }
    seq.untry_tokens(drafts);
    verify_drafts(targets_,
                  std::span<const float>(draft_distributions_.data() + d * k * vocab, static_cast<std::size_t>(k * vocab)),
                  drafts, vocab, seq.rng, residual_, verification_);
    for (std::int64_t i = 0; i < k; ++i) {
      speculation_.drafted[i] += 1;
      if (i < verification_.accepted_drafts) speculation_.accepted[i] += 1;
    }
    const std::int64_t accepted = verification_.accepted_drafts;
    seq.drafted += k;
    seq.accepted += accepted;
    seq.mtp_hidden.assign(hidden_rows, hidden_rows + (accepted + 1) * hidden);  // positions N-1 .. N-1+accepted
    seq.main_cached += accepted + 1;
    for (std::size_t i = 0; i < verification_.tokens.size(); ++i)
      emit(seq, row_of(logits + i * vocab), verification_.tokens[i]);
  }
  // Return pages nobody needs any more: rejected drafts' rows past the next step's start, and
  // everything of the sequences that ended (their events carry all that is left of them).
  for (Sequence* seq : decoding_) blocks_.truncate(seq->table, seq->length());
  for (Sequence* seq : prefilling_) publish(*seq);
  for (Sequence* seq : decoding_) publish(*seq);
  std::erase_if(sequences_, [this](auto& entry) {
    if (!entry.second->finished) return false;
    blocks_.release(entry.second->table, entry.second->chain);
    return true;
  });
  return std::span<const TokenEvent>(events_.data(), event_count_);
}

}  // namespace dsv3
