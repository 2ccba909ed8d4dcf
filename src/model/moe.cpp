// DeepSeekMoE: shared experts on every token, plus the top-k routed experts by sigmoid affinity,
// the choice steered by a per-expert bias (auxiliary-loss-free balancing) within the best groups.
#include "model/blocks.h"

namespace dsv3 {

using kernels::Tensor;

void mlp_forward(Context& ctx, const MlpWeights& w, Tensor x, Tensor out) {
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const std::int64_t intermediate = w.gate_proj.rows;
  Tensor gate = ctx.workspace.tensor(x.rows, intermediate), up = ctx.workspace.tensor(x.rows, intermediate);
  ops.linear(x, w.gate_proj, gate);
  ops.linear(x, w.up_proj, up);
  ops.swiglu(gate, up, gate);
  ops.linear(gate, w.down_proj, out);
}

void moe_forward(Context& ctx, const MoeWeights& w, Tensor x, Tensor out) {
  const ModelConfig& c = ctx.config;
  const kernels::Backend& ops = ctx.backend;
  kernels::Workspace::Scope scope(ctx.workspace);
  const std::int64_t tokens = x.rows, top_k = c.num_experts_per_tok;

  Tensor logits = ctx.workspace.tensor(tokens, c.n_routed_experts);  // [T, experts]
  ops.linear(x, w.router, logits);
  std::span<std::int32_t> experts = ctx.workspace.array<std::int32_t>(tokens * top_k);  // topk_idx
  std::span<float> weights = ctx.workspace.array<float>(tokens * top_k);                // topk_weight
  ops.route(logits, w.e_score_correction_bias,
            {.n_group = c.n_group, .topk_group = c.topk_group, .top_k = top_k, .norm_topk_prob = c.norm_topk_prob,
             .routed_scaling_factor = c.routed_scaling_factor},
            experts, weights);

  if (w.shared_experts) {
    mlp_forward(ctx, *w.shared_experts, x, out);
  } else {
    ops.fill(out, 0.0f);
  }
  const kernels::Dispatch dispatch = ops.moe_dispatch(x, experts, c.n_routed_experts, top_k, ctx.workspace);
  Tensor expert_out = ctx.workspace.tensor(tokens * top_k, c.hidden_size);  // [T * top_k, hidden], by expert
  ops.moe_experts(dispatch, w.experts, expert_out, ctx.workspace);
  ops.moe_combine(dispatch, weights, expert_out, out);
}

}  // namespace dsv3
