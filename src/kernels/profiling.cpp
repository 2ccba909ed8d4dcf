#include "kernels/profiling.h"

#include <algorithm>
#include <cctype>

namespace dsv3::kernels {

std::string weight_role(const std::string& name) {
  std::string role = name;
  constexpr std::string_view layers = "model.layers.";
  if (role.starts_with(layers)) {
    std::size_t i = layers.size();
    while (i < role.size() && std::isdigit(static_cast<unsigned char>(role[i]))) ++i;
    if (i < role.size() && role[i] == '.') role = role.substr(i + 1);
  } else if (role.starts_with("model.")) {
    role = role.substr(6);
  }
  if (role.ends_with(".weight")) role.resize(role.size() - 7);
  return role.empty() ? "(unnamed)" : role;
}

void ProfilingBackend::record(const std::string& op, Clock::time_point start, std::int64_t rows,
                              double weight_bytes) const {
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  OpProfile& entry = entries_[op];
  if (entry.op.empty()) entry.op = op;
  entry.calls += 1;
  entry.rows += rows;
  entry.seconds += seconds;
  entry.weight_bytes += weight_bytes;
}

std::vector<OpProfile> ProfilingBackend::entries() const {
  std::vector<OpProfile> out;
  out.reserve(entries_.size());
  for (const auto& [op, entry] : entries_) out.push_back(entry);
  std::sort(out.begin(), out.end(), [](const OpProfile& a, const OpProfile& b) { return a.seconds > b.seconds; });
  return out;
}

double ProfilingBackend::total_seconds() const {
  double total = 0.0;
  for (const auto& [op, entry] : entries_) total += entry.seconds;
  return total;
}

void ProfilingBackend::read(Tensor src, std::span<float> dst) const {
  const auto start = Clock::now();
  inner_.read(src, dst);
  record("read", start, src.rows);
}

void ProfilingBackend::embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const {
  const auto start = Clock::now();
  inner_.embedding(table, ids, out);
  record("embedding", start, static_cast<std::int64_t>(ids.size()));
}

void ProfilingBackend::linear(Tensor x, const Matrix& weight, Tensor y) const {
  const auto start = Clock::now();
  inner_.linear(x, weight, y);
  // The entry's name, worked out once per weight rather than on every call.
  std::string& name = linear_names_[weight.data];
  if (name.empty()) name = "linear " + weight_role(weight.name);
  record(name, start, x.rows, static_cast<double>(weight.bytes()));
}

void ProfilingBackend::rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const {
  const auto start = Clock::now();
  inner_.rmsnorm(x, weight, eps, out);
  record("rmsnorm", start, x.rows);
}

void ProfilingBackend::rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
                            const RopeParams& params) const {
  const auto start = Clock::now();
  inner_.rope(x, rows_per_position, positions, params);
  record("rope", start, static_cast<std::int64_t>(positions.size()));
}

void ProfilingBackend::add(Tensor x, Tensor y) const {
  const auto start = Clock::now();
  inner_.add(x, y);
  record("add", start, x.rows);
}

void ProfilingBackend::fill(Tensor x, float value) const {
  const auto start = Clock::now();
  inner_.fill(x, value);
  record("fill", start, x.rows);
}

void ProfilingBackend::swiglu(Tensor gate, Tensor up, Tensor out) const {
  const auto start = Clock::now();
  inner_.swiglu(gate, up, out);
  record("swiglu", start, gate.rows);
}

void ProfilingBackend::copy_rows(Tensor src, Tensor dst, std::int64_t repeat) const {
  const auto start = Clock::now();
  inner_.copy_rows(src, dst, repeat);
  record("copy_rows", start, dst.rows);
}

void ProfilingBackend::gather_rows(Tensor src, std::span<const std::int64_t> rows, Tensor dst) const {
  const auto start = Clock::now();
  inner_.gather_rows(src, rows, dst);
  record("gather_rows", start, dst.rows);
}

void ProfilingBackend::attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape,
                                        float scale, float* out) const {
  const auto start = Clock::now();
  inner_.attention_causal(q, k, v, shape, scale, out);
  record("attention_causal", start, shape.tokens);
}

void ProfilingBackend::cache_store(const LatentPages& pages, std::int64_t first_position, Tensor rows) const {
  const auto start = Clock::now();
  inner_.cache_store(pages, first_position, rows);
  record("cache_store", start, rows.rows);
}

void ProfilingBackend::cache_load(const LatentPages& pages, Tensor out) const {
  const auto start = Clock::now();
  inner_.cache_load(pages, out);
  record("cache_load", start, out.rows);
}

void ProfilingBackend::mla_absorb_query(Tensor q, const Matrix& kv_b_proj, const MlaShape& shape, Tensor q_latent,
                                        Workspace& workspace) const {
  const auto start = Clock::now();
  inner_.mla_absorb_query(q, kv_b_proj, shape, q_latent, workspace);
  record("mla_absorb_query", start, q.rows, static_cast<double>(kv_b_proj.bytes()));
}

void ProfilingBackend::attention_latent(Tensor q_latent, std::span<const LatentQuery> queries, const MlaShape& shape,
                                        float scale, Tensor o_latent, Workspace& workspace) const {
  const auto start = Clock::now();
  inner_.attention_latent(q_latent, queries, shape, scale, o_latent, workspace);
  record("attention_latent", start, q_latent.rows);
}

void ProfilingBackend::mla_absorb_output(Tensor o_latent, const Matrix& kv_b_proj, const MlaShape& shape, Tensor out,
                                         Workspace& workspace) const {
  const auto start = Clock::now();
  inner_.mla_absorb_output(o_latent, kv_b_proj, shape, out, workspace);
  record("mla_absorb_output", start, o_latent.rows, static_cast<double>(kv_b_proj.bytes()));
}

void ProfilingBackend::route(Tensor logits, std::span<const float> bias, const RouteParams& params,
                             std::span<std::int32_t> experts, std::span<float> weights) const {
  const auto start = Clock::now();
  inner_.route(logits, bias, params, experts, weights);
  record("route", start, logits.rows);
}

Dispatch ProfilingBackend::moe_dispatch(Tensor x, std::span<const std::int32_t> experts, std::int64_t n_experts,
                                        std::int64_t top_k, Workspace& workspace) const {
  const auto start = Clock::now();
  Dispatch dispatch = inner_.moe_dispatch(x, experts, n_experts, top_k, workspace);
  record("moe_dispatch", start, x.rows);
  return dispatch;
}

void ProfilingBackend::moe_experts(const Dispatch& dispatch, std::span<const MlpWeights> experts, Tensor out,
                                   Workspace& workspace, Tensor gate, Tensor up) const {
  const auto start = Clock::now();
  inner_.moe_experts(dispatch, experts, out, workspace, gate, up);
  // The weights of every expert given rows are read once.
  double bytes = 0.0;
  for (std::size_t e = 0; e + 1 < dispatch.offsets.size() && e < experts.size(); ++e)
    if (dispatch.offsets[e + 1] > dispatch.offsets[e])
      bytes += static_cast<double>(experts[e].gate_proj.bytes() + experts[e].up_proj.bytes() +
                                   experts[e].down_proj.bytes());
  record("moe_experts", start, dispatch.rows.rows, bytes);
}

void ProfilingBackend::moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out,
                                   Tensor y) const {
  const auto start = Clock::now();
  inner_.moe_combine(dispatch, weights, out, y);
  record("moe_combine", start, y.rows);
}

void ProfilingBackend::matmul(const float* a, const float* b, float* c, const MatmulShape& shape) const {
  const auto start = Clock::now();
  inner_.matmul(a, b, c, shape);
  record("matmul", start, shape.m);
}

}  // namespace dsv3::kernels
