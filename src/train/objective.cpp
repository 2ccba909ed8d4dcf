// The training objective of one sequence and its gradient: main next-token loss, MTP depth-1 loss
// (the fixtures' convention, embedding at position 0 zeroed) and the sequence-wise balance loss.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "train/blocks.h"

namespace dsv3::train {
namespace {

std::size_t count(std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); }

// Row p of the MTP input: concat(enorm(embed(t[p+1])), hnorm(hidden[p])), rebuilt in both passes.
void mtp_input(const MtpParameters& m, float eps, const std::vector<float>& embedded, const float* hidden,
               std::int64_t rows, std::int64_t hidden_size, std::vector<float>& e_normed, std::vector<float>& h_normed,
               std::vector<float>& concatenated) {
  e_normed.resize(embedded.size());
  h_normed.resize(embedded.size());
  rmsnorm(embedded.data(), rows, *m.enorm, eps, e_normed.data());
  rmsnorm(hidden, rows, *m.hnorm, eps, h_normed.data());
  concatenated.resize(2 * embedded.size());
  for (std::int64_t p = 0; p < rows; ++p) {
    std::copy_n(e_normed.data() + p * hidden_size, hidden_size, concatenated.data() + 2 * p * hidden_size);
    std::copy_n(h_normed.data() + p * hidden_size, hidden_size, concatenated.data() + (2 * p + 1) * hidden_size);
  }
}

}  // namespace

LossReport accumulate_gradients(TrainableModel& model, std::span<const std::int64_t> ids,
                                const ObjectiveOptions& options) {
  const ModelConfig& c = model.config;
  const auto tokens = static_cast<std::int64_t>(ids.size());
  if (tokens < 2) fail("accumulate_gradients: {} tokens, need at least 2 for a next-token loss", tokens);
  const std::int64_t hidden_size = c.hidden_size, vocab = c.vocab_size;
  const auto eps = static_cast<float>(c.rms_norm_eps);
  const double alpha = options.balance_alpha;
  const RopeTable rope(c);
  std::vector<std::int64_t> positions(ids.size());
  std::iota(positions.begin(), positions.end(), 0);
  LossReport report;

  // ---- forward: keep each layer's saved state and the final residual streams ----
  std::vector<float> h(count(tokens, hidden_size));
  kernels::embedding(model.embed_tokens->matrix(), ids, h.data());
  std::vector<LayerSaved> saved(model.layers.size());
  for (std::size_t l = 0; l < model.layers.size(); ++l)
    report.balance += layer_forward(model.layers[l], c, rope, h.data(), tokens, positions, alpha, saved[l]);

  // MTP rows p = 0..T-2 exist; its loss needs rows 1..T-3, so at least 4 tokens.
  const MtpParameters* mtp = !model.mtp.empty() && tokens >= 4 ? &model.mtp.front() : nullptr;
  const std::int64_t rows = tokens - 1, mtp_targets = tokens - 3;
  std::vector<float> embedded, h_mtp;
  LayerSaved mtp_saved;
  std::vector<float> hidden(h.size()), e_normed, h_normed, concatenated;
  if (mtp) {
    rmsnorm(h.data(), tokens, *model.norm, eps, hidden.data());
    embedded.resize(count(rows, hidden_size));
    kernels::embedding(model.embed_tokens->matrix(), ids.subspan(1), embedded.data());
    std::fill_n(embedded.begin(), hidden_size, 0.0f);  // zeroed embedding at position 0 (vLLM/SGLang)
    mtp_input(*mtp, eps, embedded, hidden.data(), rows, hidden_size, e_normed, h_normed, concatenated);
    h_mtp.resize(count(rows, hidden_size));
    linear(concatenated.data(), rows, *mtp->eh_proj, h_mtp.data());
    e_normed = h_normed = concatenated = {};  // rebuilt in the backward pass, not kept
    report.balance += layer_forward(mtp->layer, c, rope, h_mtp.data(), rows,
                                    std::span(positions).first(static_cast<std::size_t>(rows)), alpha, mtp_saved);
  }
  auto expert_load = [&](const LayerSaved& s, bool moe) {
    std::vector<std::int64_t> load(moe ? static_cast<std::size_t>(c.n_routed_experts) : 0, 0);
    if (moe)
      for (std::int32_t e : s.moe.routes.experts) ++load[e];
    return load;
  };
  for (std::size_t l = 0; l < model.layers.size(); ++l)
    report.expert_load.push_back(expert_load(saved[l], model.layers[l].moe.has_value()));
  for (std::size_t d = 0; d < model.mtp.size(); ++d)  // only depth 1 is trained
    report.expert_load.push_back(expert_load(mtp_saved, d == 0 && mtp && mtp->layer.moe.has_value()));
  report.stored_activation_bytes = static_cast<std::int64_t>((h.size() + embedded.size() + h_mtp.size()) * sizeof(float));
  for (const LayerSaved& s : saved) report.stored_activation_bytes += s.bytes();
  report.stored_activation_bytes += mtp_saved.bytes();

  // ---- losses and backward; norm outputs are rebuilt from the saved residual streams ----
  rmsnorm(h.data(), tokens, *model.norm, eps, hidden.data());
  std::vector<float> d_hidden(hidden.size(), 0.0f);
  if (mtp) {
    std::vector<float> mtp_hidden(h_mtp.size()), logits(count(mtp_targets, vocab)), d_logits(logits.size());
    rmsnorm(h_mtp.data(), rows, *mtp->shared_head_norm, eps, mtp_hidden.data());
    const float* scored = mtp_hidden.data() + hidden_size;  // rows 1..T-3 predict t[3..T-1]
    linear(scored, mtp_targets, *model.lm_head, logits.data());
    const auto scale = static_cast<float>(options.mtp_weight / static_cast<double>(mtp_targets));
    report.mtp = cross_entropy(logits.data(), mtp_targets, vocab, ids.subspan(3), scale, d_logits.data()) /
                 static_cast<double>(mtp_targets);
    std::vector<float> d_mtp_hidden(mtp_hidden.size(), 0.0f), d_h_mtp(h_mtp.size(), 0.0f);
    linear_backward(scored, mtp_targets, *model.lm_head, d_logits.data(), d_mtp_hidden.data() + hidden_size);
    rmsnorm_backward(h_mtp.data(), rows, *mtp->shared_head_norm, eps, d_mtp_hidden.data(), d_h_mtp.data());
    layer_backward(mtp->layer, c, rope, rows, std::span(positions).first(static_cast<std::size_t>(rows)), alpha,
                   mtp_saved, d_h_mtp.data());
    mtp_input(*mtp, eps, embedded, hidden.data(), rows, hidden_size, e_normed, h_normed, concatenated);
    std::vector<float> d_concatenated(concatenated.size(), 0.0f);
    linear_backward(concatenated.data(), rows, *mtp->eh_proj, d_h_mtp.data(), d_concatenated.data());
    std::vector<float> d_e_normed(embedded.size()), d_h_normed(embedded.size()), d_embedded(embedded.size(), 0.0f);
    for (std::int64_t p = 0; p < rows; ++p) {
      std::copy_n(d_concatenated.data() + 2 * p * hidden_size, hidden_size, d_e_normed.data() + p * hidden_size);
      std::copy_n(d_concatenated.data() + (2 * p + 1) * hidden_size, hidden_size, d_h_normed.data() + p * hidden_size);
    }
    rmsnorm_backward(embedded.data(), rows, *mtp->enorm, eps, d_e_normed.data(), d_embedded.data());
    // Row 0's embedding was replaced by zeros, so it passes no gradient to the table.
    embedding_backward(*model.embed_tokens, ids.subspan(2), d_embedded.data() + hidden_size);
    rmsnorm_backward(hidden.data(), rows, *mtp->hnorm, eps, d_h_normed.data(), d_hidden.data());
  }
  {
    const std::int64_t targets = tokens - 1;  // rows 0..T-2 predict t[1..T-1]
    std::vector<float> logits(count(targets, vocab)), d_logits(logits.size());
    linear(hidden.data(), targets, *model.lm_head, logits.data());
    const auto scale = static_cast<float>(1.0 / static_cast<double>(targets));
    report.main = cross_entropy(logits.data(), targets, vocab, ids.subspan(1), scale, d_logits.data()) /
                  static_cast<double>(targets);
    linear_backward(hidden.data(), targets, *model.lm_head, d_logits.data(), d_hidden.data());
  }
  std::vector<float> d_h(h.size(), 0.0f);
  rmsnorm_backward(h.data(), tokens, *model.norm, eps, d_hidden.data(), d_h.data());
  for (std::size_t l = model.layers.size(); l-- > 0;)
    layer_backward(model.layers[l], c, rope, tokens, positions, alpha, saved[l], d_h.data());
  embedding_backward(*model.embed_tokens, ids, d_h.data());

  report.total = report.main + options.mtp_weight * report.mtp + report.balance;
  return report;
}

ActivationMemory activation_memory(const ModelConfig& c, std::int64_t tokens) {
  const std::int64_t H = c.hidden_size, heads = c.num_attention_heads;
  const std::int64_t q_lora = c.q_lora_rank.value_or(0);
  ActivationMemory memory;
  // Floats (and int32 expert ids, also 4 bytes) per decoder layer over n rows.
  auto layer = [&](std::int64_t layer_index, std::int64_t n) {
    const bool moe = c.is_moe_layer(layer_index);
    const std::int64_t shared = c.n_shared_experts * c.moe_intermediate_size;
    const std::int64_t routed = n * c.num_experts_per_tok;
    std::int64_t stored = 2 * n * H;                                                     // h_in, h_mid
    stored += n * (q_lora + c.kv_lora_rank + c.qk_rope_head_dim + heads * c.v_head_dim);  // c_q, kv_a, attention
    stored += moe ? n * c.n_routed_experts + 2 * routed + 2 * routed * c.moe_intermediate_size + 2 * n * shared
                  : 2 * n * c.intermediate_size;  // scores, routes, expert gate/up | gate/up
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
    memory.stored += 4 * 2 * rows * H;                  // embedded tokens, MTP residual stream
    memory.norms_and_up_projections += 4 * 3 * rows * H;  // enorm, hnorm, shared_head.norm outputs
  }
  return memory;
}

}  // namespace dsv3::train
