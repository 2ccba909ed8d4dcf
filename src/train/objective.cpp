// The training objective of one sequence and its gradient: main next-token loss, MTP depth-1 loss
// (the fixtures' convention, embedding at position 0 zeroed) and the sequence-wise balance loss.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "model/latent_cache.h"
#include "train/blocks.h"

namespace dsv3::train {
namespace {

std::size_t count(std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); }

}  // namespace

LossReport accumulate_gradients(TrainableModel& model, std::span<const std::int64_t> ids,
                                const ObjectiveOptions& options) {
  const ModelConfig& c = model.config;
  const auto tokens = static_cast<std::int64_t>(ids.size());
  if (tokens < 2) fail("accumulate_gradients: {} tokens, need at least 2 for a next-token loss", tokens);
  const std::int64_t hidden_size = c.hidden_size, vocab = c.vocab_size;
  const double alpha = options.balance_alpha;
  const kernels::Backend& backend = kernels::default_backend();
  const Model net(model.weights(), backend);
  const Weights& w = net.weights();
  const RopeTable rope(c);
  const Backward b{c, backend, rope.params(), static_cast<float>(c.rms_norm_eps)};
  std::vector<std::int64_t> positions(ids.size());
  std::iota(positions.begin(), positions.end(), 0);
  LossReport report;

  // ---- forward: the model's own steps, recording what the backward pass needs ----
  LatentCache cache(c, {.capacity_tokens = tokens, .dtype = DType::F32}, backend);
  LatentCache::Table table;
  cache.reserve(table, tokens);
  kernels::Workspace main_workspace(backend), mtp_workspace(backend), kept(backend);
  StepRecord main_record(kept), mtp_record(kept);
  const StepSegment segment{&table, 0, ids, true};
  // hidden: [T, hidden] after model.norm; logits: [T, vocab].
  const StepOutput main = net.step(std::span(&segment, 1), cache, main_workspace, &main_record);
  const float* hidden = main.hidden.data;

  // MTP rows p = 0..T-2 exist; its loss needs rows 1..T-3, so at least 4 tokens.
  const MtpParameters* mtp = !model.mtp.empty() && tokens >= 4 ? &model.mtp.front() : nullptr;
  const std::int64_t rows = tokens - 1, mtp_targets = tokens - 3;
  StepOutput mtp_out;
  if (mtp) {
    const MtpSegment mtp_segment{&table, 0, std::span<const float>(hidden, count(rows, hidden_size)), ids.subspan(1),
                                 true};
    mtp_out = net.mtp_step(std::span(&mtp_segment, 1), cache, mtp_workspace, 0, &mtp_record);
  }

  for (std::size_t l = 0; l < model.layers.size(); ++l)
    if (model.layers[l].moe) report.balance += balance_loss(c, main_record.layers[l], tokens, alpha);
  if (mtp && mtp->layer.moe) report.balance += balance_loss(c, mtp_record.layers[0], rows, alpha);
  auto expert_load = [&](const LayerRecord* record) {
    std::vector<std::int64_t> load(record ? static_cast<std::size_t>(c.n_routed_experts) : 0, 0);
    if (record)
      for (std::int32_t e : record->experts) ++load[e];
    return load;
  };
  for (std::size_t l = 0; l < model.layers.size(); ++l)
    report.expert_load.push_back(expert_load(model.layers[l].moe ? &main_record.layers[l] : nullptr));
  for (std::size_t d = 0; d < model.mtp.size(); ++d)  // only depth 1 is trained
    report.expert_load.push_back(expert_load(d == 0 && mtp && mtp->layer.moe ? &mtp_record.layers[0] : nullptr));
  report.stored_activation_bytes = main_record.bytes() + mtp_record.bytes();

  // ---- losses and backward; norm outputs are rebuilt from the recorded residual streams ----
  std::vector<float> d_hidden(count(tokens, hidden_size), 0.0f);
  if (mtp) {
    const MtpWeights& mtp_w = w.mtp.front();
    const float* h_mtp = mtp_record.last_hidden.data;  // [rows, hidden], before shared_head.norm
    const auto scale = static_cast<float>(options.mtp_weight / static_cast<double>(mtp_targets));
    std::vector<float> d_logits(count(mtp_targets, vocab));
    // Rows 1..T-3 predict t[3..T-1].
    report.mtp = cross_entropy(mtp_out.logits.row(1), mtp_targets, vocab, ids.subspan(3), scale, d_logits.data()) /
                 static_cast<double>(mtp_targets);
    std::vector<float> mtp_hidden(count(rows, hidden_size)), d_mtp_hidden(mtp_hidden.size(), 0.0f),
        d_h_mtp(mtp_hidden.size(), 0.0f);
    b.rmsnorm(h_mtp, rows, mtp_w.shared_head_norm, mtp_hidden.data());
    linear_backward(mtp_hidden.data() + hidden_size, mtp_targets, *model.lm_head, d_logits.data(),
                    d_mtp_hidden.data() + hidden_size);
    rmsnorm_backward(h_mtp, rows, *mtp->shared_head_norm, b.eps, d_mtp_hidden.data(), d_h_mtp.data());
    layer_backward(b, mtp->layer, mtp_w.layer, rows, std::span(positions).first(static_cast<std::size_t>(rows)), alpha,
                   mtp_record.layers[0], d_h_mtp.data());

    // Row p of eh_proj's input: [enorm(embed(t[p+1])) | hnorm(hidden[p])], the embedding of row 0
    // zeroed (vLLM/SGLang's convention), rebuilt here.
    std::vector<std::int64_t> next(ids.begin() + 1, ids.end());
    next[0] = kernels::Backend::kZeroRow;
    std::vector<float> embedded(count(rows, hidden_size)), concatenated(count(rows, 2 * hidden_size));
    const kernels::Tensor both(concatenated.data(), rows, 2 * hidden_size);
    backend.embedding(mtp_w.embed_tokens, next, kernels::Tensor(embedded.data(), rows, hidden_size));
    backend.rmsnorm(kernels::Tensor(embedded.data(), rows, hidden_size), mtp_w.enorm, b.eps,
                    both.columns(0, hidden_size));
    backend.rmsnorm(kernels::Tensor(const_cast<float*>(hidden), rows, hidden_size), mtp_w.hnorm, b.eps,
                    both.columns(hidden_size, 2 * hidden_size));
    std::vector<float> d_concatenated(concatenated.size(), 0.0f);
    linear_backward(concatenated.data(), rows, *mtp->eh_proj, d_h_mtp.data(), d_concatenated.data());
    std::vector<float> d_e_normed(embedded.size()), d_h_normed(embedded.size()), d_embedded(embedded.size(), 0.0f);
    for (std::int64_t p = 0; p < rows; ++p) {
      std::copy_n(d_concatenated.data() + 2 * p * hidden_size, hidden_size, d_e_normed.data() + p * hidden_size);
      std::copy_n(d_concatenated.data() + (2 * p + 1) * hidden_size, hidden_size, d_h_normed.data() + p * hidden_size);
    }
    rmsnorm_backward(embedded.data(), rows, *mtp->enorm, b.eps, d_e_normed.data(), d_embedded.data());
    // Row 0's embedding was replaced by zeros, so it passes no gradient to the table.
    embedding_backward(*model.embed_tokens, ids.subspan(2), d_embedded.data() + hidden_size);
    rmsnorm_backward(hidden, rows, *mtp->hnorm, b.eps, d_h_normed.data(), d_hidden.data());
  }
  {
    const std::int64_t targets = tokens - 1;  // rows 0..T-2 predict t[1..T-1]
    std::vector<float> d_logits(count(targets, vocab));
    const auto scale = static_cast<float>(1.0 / static_cast<double>(targets));
    report.main = cross_entropy(main.logits.data, targets, vocab, ids.subspan(1), scale, d_logits.data()) /
                  static_cast<double>(targets);
    linear_backward(hidden, targets, *model.lm_head, d_logits.data(), d_hidden.data());
  }
  std::vector<float> d_h(d_hidden.size(), 0.0f);
  rmsnorm_backward(main_record.last_hidden.data, tokens, *model.norm, b.eps, d_hidden.data(), d_h.data());
  for (std::size_t l = model.layers.size(); l-- > 0;)
    layer_backward(b, model.layers[l], w.layers[l], tokens, positions, alpha, main_record.layers[l], d_h.data());
  embedding_backward(*model.embed_tokens, ids, d_h.data());

  report.total = report.main + options.mtp_weight * report.mtp + report.balance;
  return report;
}

ActivationMemory activation_memory(const ModelConfig& c, std::int64_t tokens) {
  const std::int64_t H = c.hidden_size, heads = c.num_attention_heads;
  const std::int64_t q_lora = c.q_lora_rank.value_or(0);
  ActivationMemory memory;
  // Floats (and int32 expert ids, also 4 bytes; int64 dispatch entries count twice) per decoder layer over n rows.
  auto layer = [&](std::int64_t layer_index, std::int64_t n) {
    const bool moe = c.is_moe_layer(layer_index);
    const std::int64_t shared = c.n_shared_experts * c.moe_intermediate_size;
    const std::int64_t routed = n * c.num_experts_per_tok;
    std::int64_t stored = 2 * n * H;                                                     // h_in, h_mid
    stored += n * (q_lora + c.kv_lora_rank + c.qk_rope_head_dim + heads * c.v_head_dim);  // c_q, kv_a, attention
    stored += moe ? n * c.n_routed_experts + 2 * routed + 2 * routed * c.moe_intermediate_size + 2 * n * shared
                  : 2 * n * c.intermediate_size;  // router logits, routes, expert gate/up | gate/up
    if (moe) stored += 2 * (c.n_routed_experts + 1 + routed);  // the dispatch: int64 offsets and slots
    std::int64_t recomputed = 2 * n * H + n * q_lora + n * c.kv_lora_rank;  // the layer's four norm outputs
    recomputed += n * heads * c.qk_head_dim() + n * heads * (c.qk_nope_head_dim + c.v_head_dim) +
                  n * c.qk_rope_head_dim;                                            // q, kv_b_proj output, k_rope
    recomputed += moe ? routed * c.moe_intermediate_size + n * shared : n * c.intermediate_size;  // SwiGLU
    memory.stored += 4 * stored;
    memory.norms_and_up_projections += 4 * recomputed;
    memory.attention_probabilities += 4 * heads * n * (n + 1) / 2;  // the causal triangle
  };
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) layer(l, tokens);
  memory.stored += 4 * tokens * H;                   // final residual stream
  memory.norms_and_up_projections += 4 * tokens * H;  // model.norm output
  if (c.num_nextn_predict_layers > 0 && tokens >= 4) {
    const std::int64_t rows = tokens - 1;
    layer(c.num_hidden_layers, rows);
    memory.stored += 4 * rows * H;                        // the MTP module's output
    memory.norms_and_up_projections += 4 * 3 * rows * H;  // enorm, hnorm, shared_head.norm outputs
  }
  return memory;
}

}  // namespace dsv3::train
