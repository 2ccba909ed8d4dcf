// DeepSeekMoE: shared experts on every token, plus the top-k routed experts by sigmoid affinity,
// the choice steered by a per-expert bias (auxiliary-loss-free balancing) within the best groups.
#include <algorithm>

#include "model/blocks.h"

namespace dsv3 {

using kernels::Tensor;

void mlp_forward(Context& ctx, const MlpWeights& w, Tensor x, Tensor out, Tensor* keep_gate, Tensor* keep_up) {
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const std::int64_t intermediate = w.gate_proj.rows;
  const bool keep = keep_gate && keep_up;
  Tensor gate = keep ? (*keep_gate = ctx.keep(x.rows, intermediate)) : ctx.workspace.tensor(x.rows, intermediate);
  Tensor up = keep ? (*keep_up = ctx.keep(x.rows, intermediate)) : ctx.workspace.tensor(x.rows, intermediate);
  ops.linear(x, w.gate_proj, gate);
  ops.linear(x, w.up_proj, up);
  Tensor act = keep ? ctx.workspace.tensor(x.rows, intermediate) : gate;
  ops.swiglu(gate, up, act);
  ops.linear(act, w.down_proj, out);
}

void moe_forward(Context& ctx, const MoeWeights& w, Tensor x, Tensor out) {
  const ModelConfig& c = ctx.config;
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const std::int64_t tokens = x.rows, top_k = c.num_experts_per_tok;
  LayerRecord* record = ctx.layer;

  // [T, experts]
  Tensor logits = record ? (record->router_logits = ctx.keep(tokens, c.n_routed_experts))
                         : ctx.workspace.tensor(tokens, c.n_routed_experts);
  ops.linear(x, w.router, logits);
  // topk_idx and topk_weight
  std::span<std::int32_t> experts = record ? (record->experts = ctx.keep_array<std::int32_t>(tokens * top_k))
                                           : ctx.workspace.array<std::int32_t>(tokens * top_k);
  std::span<float> weights = record ? (record->weights = ctx.keep_array<float>(tokens * top_k))
                                    : ctx.workspace.array<float>(tokens * top_k);
  ops.route(logits, w.e_score_correction_bias,
            {.n_group = c.n_group, .topk_group = c.topk_group, .top_k = top_k, .norm_topk_prob = c.norm_topk_prob,
             .routed_scaling_factor = c.routed_scaling_factor},
            experts, weights);
  if (!ctx.expert_counts.empty())
    for (const std::int32_t expert : experts) ++ctx.expert_counts[static_cast<std::size_t>(expert)];

  if (w.shared_experts) {
    mlp_forward(ctx, *w.shared_experts, x, out, record ? &record->shared_gate : nullptr,
                record ? &record->shared_up : nullptr);
  } else {
    ops.fill(out, 0.0f);
  }
  // Across ranks the routes go to physical expert copies (shard.h), those of other ranks skipped.
  std::span<const std::int32_t> copies = experts;
  std::int64_t n_copies = c.n_routed_experts;
  if (!w.copies.copies.empty()) {
    std::span<std::int32_t> physical = ctx.workspace.array<std::int32_t>(tokens * top_k);
    for (std::int64_t i = 0; i < tokens * top_k; ++i) physical[i] = w.copies.copy_for(experts[i], i / top_k);
    copies = physical;
    n_copies = static_cast<std::int64_t>(w.copies.expert.size());
  }
  const kernels::Dispatch dispatch = ops.moe_dispatch(x, copies, n_copies, top_k, ctx.workspace);
  Tensor expert_out = ctx.workspace.tensor(tokens * top_k, c.hidden_size);  // [T * top_k, hidden], by expert
  if (record) {
    record->offsets = ctx.keep_array<std::int64_t>(static_cast<std::int64_t>(dispatch.offsets.size()));
    record->slots = ctx.keep_array<std::int64_t>(static_cast<std::int64_t>(dispatch.slots.size()));
    std::copy(dispatch.offsets.begin(), dispatch.offsets.end(), record->offsets.begin());
    std::copy(dispatch.slots.begin(), dispatch.slots.end(), record->slots.begin());
    const std::int64_t intermediate = c.moe_intermediate_size;
    record->expert_gate = ctx.keep(tokens * top_k, intermediate);
    record->expert_up = ctx.keep(tokens * top_k, intermediate);
  }
  ops.moe_experts(dispatch, w.experts, expert_out, ctx.workspace, record ? record->expert_gate : Tensor{},
                  record ? record->expert_up : Tensor{});
  ops.moe_combine(dispatch, weights, expert_out, out);
}

}  // namespace dsv3
