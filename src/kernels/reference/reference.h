#pragma once
// The slow twin of every op (DESIGN.md, habit 3): each op of kernels::Backend written from its
// documented meaning as plain loops in the order the math reads, accumulating in double, with no
// SIMD, threads or BLAS. Tests check every backend and instruction-set path against it
// (tests/test_ops.cpp); the model never runs on it. Memory is host memory.
#include "kernels/ops.h"

namespace dsv3::kernels {

class ReferenceBackend final : public Backend {
 public:
  std::string_view name() const override { return "reference"; }
  void* allocate(std::size_t bytes) const override;
  void release(void* data) const override;
  void read(Tensor src, std::span<float> dst) const override;
  // The plain loops read every weight as it is stored.
  std::size_t prepare_decode_weight(Matrix&) const override { return 0; }
  std::size_t prepare_absorb_weight(Matrix&, const MlaShape&) const override { return 0; }

  void embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const override;
  void linear(Tensor x, const Matrix& weight, Tensor y) const override;
  void rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const override;
  void rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
            const RopeParams& params) const override;
  void add(Tensor x, Tensor y) const override;
  void fill(Tensor x, float value) const override;
  void swiglu(Tensor gate, Tensor up, Tensor out) const override;
  void copy_rows(Tensor src, Tensor dst, std::int64_t repeat = 1) const override;
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
                   Tensor gate = {}, Tensor up = {}) const override;
  void moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out, Tensor y) const override;

  void matmul(const float* a, const float* b, float* c, const MatmulShape& shape) const override;
};

// The one instance the tests share.
const ReferenceBackend& reference_backend();

}  // namespace dsv3::kernels
