#pragma once
// A Backend that times another: every op is forwarded to the inner backend and its wall time is
// added to a per-op entry (linears per weight, named without their layer index, so "q_a_proj" sums
// over layers). `dsv3 bench --profile` runs the model on it to show where a step's time goes.
// Ops are timed on the calling thread, which must be the only one calling (a model step calls
// them in order); a device that runs ops asynchronously must finish each op before it returns.
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/ops.h"

namespace dsv3::kernels {

struct OpProfile {
  std::string op;                // "linear self_attn.q_a_proj", "attention_latent", ...
  std::int64_t calls = 0;
  std::int64_t rows = 0;         // rows (tokens) the op was given, summed over calls
  double seconds = 0.0;
  double weight_bytes = 0.0;     // weight bytes the op read (linears and experts), summed over calls
};

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(const Backend& inner) : inner_(inner) {}

  // The entries so far, most time first; reset() starts again.
  std::vector<OpProfile> entries() const;
  double total_seconds() const;
  void reset() { entries_.clear(); }

  std::string_view name() const override { return inner_.name(); }
  void* allocate(std::size_t bytes) const override { return inner_.allocate(bytes); }
  void release(void* data) const override { inner_.release(data); }
  void read(Tensor src, std::span<float> dst) const override;
  std::size_t prepare_decode_weight(Matrix& weight) const override { return inner_.prepare_decode_weight(weight); }
  std::size_t prepare_absorb_weight(Matrix& kv_b_proj, const MlaShape& d) const override {
    return inner_.prepare_absorb_weight(kv_b_proj, d);
  }
  void embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const override;
  void linear(Tensor x, const Matrix& weight, Tensor y) const override;
  void rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const override;
  void rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
            const RopeParams& params) const override;
  void add(Tensor x, Tensor y) const override;
  void fill(Tensor x, float value) const override;
  void swiglu(Tensor gate, Tensor up, Tensor out) const override;
  void copy_rows(Tensor src, Tensor dst, std::int64_t repeat) const override;
  void gather_rows(Tensor src, std::span<const std::int64_t> rows, Tensor dst) const override;
  void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape, float scale,
                        float* out) const override;
  void cache_store(const LatentPages& pages, std::int64_t first_position, Tensor rows) const override;
  void cache_load(const LatentPages& pages, Tensor out) const override;
  void mla_absorb_query(Tensor q, const Matrix& kv_b_proj, const MlaShape& shape, Tensor q_latent,
                        Workspace& workspace) const override;
  void attention_latent(Tensor q_latent, std::span<const LatentQuery> queries, const MlaShape& shape, float scale,
                        Tensor o_latent, Workspace& workspace) const override;
  void mla_absorb_output(Tensor o_latent, const Matrix& kv_b_proj, const MlaShape& shape, Tensor out,
                         Workspace& workspace) const override;
  void route(Tensor logits, std::span<const float> bias, const RouteParams& params, std::span<std::int32_t> experts,
             std::span<float> weights) const override;
  Dispatch moe_dispatch(Tensor x, std::span<const std::int32_t> experts, std::int64_t n_experts, std::int64_t top_k,
                        Workspace& workspace) const override;
  void moe_experts(const Dispatch& dispatch, std::span<const MlpWeights> experts, Tensor out, Workspace& workspace,
                   Tensor gate, Tensor up) const override;
  void moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out, Tensor y) const override;
  void matmul(const float* a, const float* b, float* c, const MatmulShape& shape) const override;

 private:
  using Clock = std::chrono::steady_clock;
  // Adds the time since `start` to the entry `op`.
  void record(const std::string& op, Clock::time_point start, std::int64_t rows, double weight_bytes = 0.0) const;

  const Backend& inner_;
  mutable std::map<std::string, OpProfile> entries_;
  mutable std::unordered_map<const void*, std::string> linear_names_;  // by weight data
};

// "model.layers.7.mlp.shared_experts.up_proj.weight" -> "mlp.shared_experts.up_proj": a weight's
// role, the same in every layer.
std::string weight_role(const std::string& name);

}  // namespace dsv3::kernels
