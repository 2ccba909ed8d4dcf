#include "model/shard.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "model/weights.h"

namespace dsv3 {
namespace {

using Role = CheckpointTensor::Role;
using Mlp = CheckpointTensor::Mlp;

// Rank `rank`'s part of [0, total) in whole units, as even as the units allow.
IndexRange split(std::int64_t total, std::int64_t unit, int rank, int ranks, const std::string& tensor,
                 const std::string& what) {
  const std::string why = unit > 1 ? fmt::format(" (its FP8 blocks need cuts every {} {})", unit, what) : "";
  if (total % unit != 0 || total / unit < ranks)
    fail("{}: {} {} cannot be split over {} ranks{}", tensor, total, what, ranks, why);
  const std::int64_t units = total / unit;
  return {unit * (units * rank / ranks), unit * (units * (rank + 1) / ranks)};
}

const CheckpointTensor* first_of(const std::vector<CheckpointTensor>& layout, Role role, Mlp mlp = Mlp::none) {
  const auto it = std::find_if(layout.begin(), layout.end(),
                               [&](const CheckpointTensor& t) { return t.role == role && t.mlp == mlp; });
  return it == layout.end() ? nullptr : &*it;
}

ExpertCopies one_copy_each(std::int64_t experts, int ranks) {
  ExpertCopies e;
  for (std::int64_t x = 0; x < experts; ++x) {
    e.copies.push_back({static_cast<std::int32_t>(x)});
    e.expert.push_back(static_cast<std::int32_t>(x));
    // Contiguous runs: rank r holds [E r / N, E (r + 1) / N).
    int holder = 0;
    while (x >= experts * (holder + 1) / ranks) ++holder;
    e.holder.push_back(holder);
  }
  return e;
}

ExpertCopies planned_copies(const dist::LayerPlacement& plan, std::int64_t experts, int ranks, std::int64_t layer) {
  if (static_cast<int>(plan.rank_experts.size()) != ranks)
    fail("the placement plan for layer {} is for {} ranks, this run has {}", layer, plan.rank_experts.size(), ranks);
  ExpertCopies e;
  e.copies.resize(static_cast<std::size_t>(experts));
  for (int r = 0; r < ranks; ++r)
    for (const std::int64_t x : plan.rank_experts[static_cast<std::size_t>(r)]) {
      if (x < 0 || x >= experts) fail("the placement plan for layer {} names expert {} of {}", layer, x, experts);
      e.copies[static_cast<std::size_t>(x)].push_back(static_cast<std::int32_t>(e.expert.size()));
      e.expert.push_back(static_cast<std::int32_t>(x));
      e.holder.push_back(r);
    }
  for (std::int64_t x = 0; x < experts; ++x)
    if (e.copies[static_cast<std::size_t>(x)].empty())
      fail("the placement plan for layer {} gives expert {} to no rank", layer, x);
  return e;
}

Matrix rows_of(const Matrix& m, IndexRange keep) {
  Matrix out = m;
  out.rows = keep.size();
  out.data = m.data + static_cast<std::size_t>(keep.begin * m.cols) * dtype_size(m.dtype);
  if (m.scales) {
    const std::int64_t first = keep.begin / m.block_rows, last = (keep.end + m.block_rows - 1) / m.block_rows;
    out.scales = std::make_shared<const std::vector<float>>(m.scales->begin() + first * m.scale_cols(),
                                                            m.scales->begin() + last * m.scale_cols());
  }
  return out;
}

Matrix columns_of(const Matrix& m, IndexRange keep) {
  const std::size_t element = dtype_size(m.dtype);
  const auto row_bytes = static_cast<std::size_t>(keep.size()) * element;
  auto values = std::make_shared<std::vector<std::byte>>(row_bytes * static_cast<std::size_t>(m.rows));
  for (std::int64_t r = 0; r < m.rows; ++r)
    std::memcpy(values->data() + r * row_bytes, m.data + static_cast<std::size_t>(r * m.cols + keep.begin) * element,
                row_bytes);
  Matrix out = m;
  out.cols = keep.size();
  out.data = values->data();
  out.owner = values;
  if (m.scales) {
    const std::int64_t first = keep.begin / m.block_cols, last = (keep.end + m.block_cols - 1) / m.block_cols;
    auto scales = std::make_shared<std::vector<float>>();
    const std::int64_t row_blocks = (m.rows + m.block_rows - 1) / m.block_rows;
    for (std::int64_t b = 0; b < row_blocks; ++b)
      scales->insert(scales->end(), m.scales->begin() + b * m.scale_cols() + first,
                     m.scales->begin() + b * m.scale_cols() + last);
    out.scales = std::move(scales);
  }
  return out;
}

}  // namespace

std::int64_t Shard::vocab_stride() const {
  std::int64_t widest = 0;
  for (std::size_t r = 0; r + 1 < vocab_bounds.size(); ++r) widest = std::max(widest, vocab_bounds[r + 1] - vocab_bounds[r]);
  return widest;
}

DType stored_dtype(const TensorStore* store, const CheckpointTensor& t, const ModelConfig& c) {
  if (const TensorView* view = store ? store->find(t.name) : nullptr) return view->dtype;
  return c.quantization.fp8 && t.fp8_in_official_checkpoints ? DType::F8_E4M3 : DType::BF16;
}

bool Shard::holds(std::int64_t layer, std::int64_t logical) const {
  if (layer < 0 || layer >= static_cast<std::int64_t>(experts.size())) return false;
  const ExpertCopies& e = experts[static_cast<std::size_t>(layer)];
  if (logical < 0 || logical >= static_cast<std::int64_t>(e.copies.size())) return false;
  const auto& copies = e.copies[static_cast<std::size_t>(logical)];
  return std::any_of(copies.begin(), copies.end(),
                     [&](std::int32_t c) { return e.holder[static_cast<std::size_t>(c)] == rank; });
}

Shard whole_shard(const ModelConfig& config) {
  return make_shard(config, 0, 1, [](const CheckpointTensor&) { return DType::BF16; });
}

Shard make_shard(const ModelConfig& c, int rank, int ranks, const std::function<DType(const CheckpointTensor&)>& dtype_of,
                 std::span<const dist::LayerPlacement> placement) {
  if (ranks < 1 || rank < 0 || rank >= ranks) fail("rank {} of {} ranks", rank, ranks);
  const std::vector<CheckpointTensor> layout = checkpoint_layout(c);
  const auto fp8 = [&](const CheckpointTensor* t) { return t && dtype_of(*t) == DType::F8_E4M3; };
  const std::int64_t block_rows = c.quantization.block_rows, block_cols = c.quantization.block_cols;
  Shard s;
  s.rank = rank;
  s.ranks = ranks;

  // Heads go in groups whose q_b_proj and kv_b_proj rows and o_proj columns start on FP8 blocks.
  std::int64_t group = 1;
  const CheckpointTensor* q = first_of(layout, c.q_lora_rank ? Role::q_b_proj : Role::q_proj);
  const CheckpointTensor* kv_b = first_of(layout, Role::kv_b_proj);
  const CheckpointTensor* o = first_of(layout, Role::o_proj);
  if (fp8(q)) group = std::lcm(group, block_rows / std::gcd(c.qk_head_dim(), block_rows));
  if (fp8(kv_b)) group = std::lcm(group, block_rows / std::gcd(c.qk_nope_head_dim + c.v_head_dim, block_rows));
  if (fp8(o)) group = std::lcm(group, block_cols / std::gcd(c.v_head_dim, block_cols));
  s.heads = split(c.num_attention_heads, group, rank, ranks, q ? q->name : "attention", "heads");

  const CheckpointTensor* dense = first_of(layout, Role::gate_proj, Mlp::dense);
  if (dense) s.dense = split(c.intermediate_size, fp8(dense) ? block_rows : 1, rank, ranks, dense->name, "columns");
  const CheckpointTensor* shared = first_of(layout, Role::gate_proj, Mlp::shared_experts);
  if (shared)
    s.shared = split(shared->shape[0], fp8(shared) ? block_rows : 1, rank, ranks, shared->name, "columns");
  const CheckpointTensor* embed = first_of(layout, Role::embed_tokens);
  // Every rank's vocabulary rows: this rank's logits are gathered beside the others'.
  for (int r = 0; r < ranks; ++r)
    s.vocab_bounds.push_back(split(c.vocab_size, fp8(embed) ? block_rows : 1, r, ranks, embed->name, "vocabulary rows").begin);
  s.vocab_bounds.push_back(c.vocab_size);
  s.vocab = {s.vocab_bounds[rank], s.vocab_bounds[rank + 1]};

  const std::int64_t layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  s.experts.resize(static_cast<std::size_t>(layers));
  std::size_t planned = 0;
  for (std::int64_t layer = 0; layer < layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    const bool main_model = layer < c.num_hidden_layers;
    if (main_model && !placement.empty()) {
      if (planned >= placement.size()) fail("the placement plan has {} MoE layers, the model more", placement.size());
      s.experts[static_cast<std::size_t>(layer)] = planned_copies(placement[planned++], c.n_routed_experts, ranks, layer);
    } else {
      s.experts[static_cast<std::size_t>(layer)] = one_copy_each(c.n_routed_experts, ranks);
    }
  }
  if (planned != placement.size())
    fail("the placement plan has {} MoE layers, the model {}", placement.size(), planned);
  return s;
}

TensorCut cut_of(const CheckpointTensor& t, const Shard& s, const ModelConfig& c) {
  using Kind = TensorCut::Kind;
  const auto scaled = [](IndexRange r, std::int64_t by) { return IndexRange{r.begin * by, r.end * by}; };
  switch (t.role) {
    case Role::embed_tokens:
    case Role::mtp_embed_tokens:
    case Role::lm_head:
    case Role::shared_head_head:
      return {Kind::rows, s.vocab};
    case Role::q_b_proj:
    case Role::q_proj:
      return {Kind::rows, scaled(s.heads, c.qk_head_dim())};
    case Role::kv_b_proj:
      return {Kind::rows, scaled(s.heads, c.qk_nope_head_dim + c.v_head_dim)};
    case Role::o_proj:
      return {Kind::columns, scaled(s.heads, c.v_head_dim)};
    case Role::gate_proj:
    case Role::up_proj:
    case Role::down_proj: {
      const Kind kind = t.role == Role::down_proj ? Kind::columns : Kind::rows;
      if (t.mlp == Mlp::dense) return {kind, s.dense};
      if (t.mlp == Mlp::shared_experts) return {kind, s.shared};
      return {s.holds(t.layer, t.expert) ? Kind::whole : Kind::absent, {}};
    }
    default:
      return {Kind::whole, {}};
  }
}

std::int64_t held_bytes(const CheckpointTensor& t, DType dtype, const Shard& s, const ModelConfig& c) {
  const TensorCut cut = cut_of(t, s, c);
  if (cut.kind == TensorCut::Kind::absent) return 0;
  const std::int64_t rows = t.shape[0], cols = t.shape.size() > 1 ? t.shape[1] : 1;
  std::int64_t held_rows = rows, held_cols = cols;
  if (cut.kind == TensorCut::Kind::rows) held_rows = cut.range.size();
  if (cut.kind == TensorCut::Kind::columns) held_cols = cut.range.size();
  std::int64_t bytes = held_rows * held_cols * static_cast<std::int64_t>(dtype_size(dtype));
  if (dtype == DType::F8_E4M3) {
    const std::int64_t br = c.quantization.block_rows, bc = c.quantization.block_cols;
    bytes += 4 * ((held_rows + br - 1) / br) * ((held_cols + bc - 1) / bc);
  }
  return bytes;
}

void cut_weights(Weights& w, Shard shard) {
  using Kind = TensorCut::Kind;
  const ModelConfig& c = w.config;
  for (const CheckpointTensor& t : checkpoint_layout(c)) {
    const Weights::Slot slot = w.slot(t);
    if (!slot.matrix) continue;
    auto& m = const_cast<Matrix&>(*slot.matrix);
    if (m.empty()) continue;
    const TensorCut cut = cut_of(t, shard, c);
    if (cut.kind == Kind::rows) m = rows_of(m, cut.range);
    if (cut.kind == Kind::columns) m = columns_of(m, cut.range);
    if (cut.kind == Kind::absent) m = Matrix{};
  }
  if (c.tie_word_embeddings) w.lm_head = w.embed_tokens;
  // Routed experts become the physical copies: this rank's hold the logical expert's views.
  const auto place = [&](MoeWeights& moe, std::int64_t layer) {
    const ExpertCopies& copies = shard.experts[static_cast<std::size_t>(layer)];
    std::vector<MlpWeights> physical(copies.expert.size());
    for (std::size_t p = 0; p < physical.size(); ++p)
      if (copies.holder[p] == shard.rank) physical[p] = moe.experts[static_cast<std::size_t>(copies.expert[p])];
    moe.experts = std::move(physical);
    moe.copies = copies;
  };
  for (std::size_t layer = 0; layer < w.layers.size(); ++layer)
    if (w.layers[layer].moe) place(*w.layers[layer].moe, static_cast<std::int64_t>(layer));
  for (std::size_t depth = 0; depth < w.mtp.size(); ++depth)
    if (w.mtp[depth].layer.moe) place(*w.mtp[depth].layer.moe, c.num_hidden_layers + static_cast<std::int64_t>(depth));
  w.shard = std::move(shard);
}

void release_unheld(const Weights& w) {
  for (const CheckpointTensor& t : checkpoint_layout(w.config)) {
    const TensorView* view = w.store.find(t.name);
    if (!view) continue;
    const TensorCut cut = cut_of(t, w.shard, w.config);
    if (cut.kind == TensorCut::Kind::absent || cut.kind == TensorCut::Kind::columns) {
      w.store.release(view->data, view->nbytes);
    } else if (cut.kind == TensorCut::Kind::rows) {
      const auto row_bytes = view->nbytes / static_cast<std::size_t>(t.shape[0]);
      const auto begin = static_cast<std::size_t>(cut.range.begin) * row_bytes;
      const auto end = static_cast<std::size_t>(cut.range.end) * row_bytes;
      w.store.release(view->data, begin);
      w.store.release(view->data + end, view->nbytes - end);
    }
  }
}

void read_in_held(const Weights& w, const std::function<void(std::int64_t, std::int64_t)>& progress) {
  std::vector<const Matrix*> held;
  // Routed experts by their physical copies (the layout names logical ones).
  for (const CheckpointTensor& t : checkpoint_layout(w.config))
    if (t.mlp != Mlp::routed_expert)
      if (const Matrix* m = w.slot(t).matrix; m && !m->empty() && !m->owner) held.push_back(m);
  const auto experts_of = [&held](const LayerWeights& layer) {
    if (!layer.moe) return;
    for (const MlpWeights& e : layer.moe->experts)
      for (const Matrix* m : {&e.gate_proj, &e.up_proj, &e.down_proj})
        if (!m->empty()) held.push_back(m);
  };
  for (const LayerWeights& layer : w.layers) experts_of(layer);
  for (const MtpWeights& mtp : w.mtp) experts_of(mtp.layer);
  std::sort(held.begin(), held.end());
  held.erase(std::unique(held.begin(), held.end()), held.end());
  std::int64_t total = 0, done = 0;
  for (const Matrix* m : held) total += static_cast<std::int64_t>(m->bytes());
  for (const Matrix* m : held) {
    read_pages(m->data, m->bytes());
    done += static_cast<std::int64_t>(m->bytes());
    if (progress) progress(done, total);
  }
}

}  // namespace dsv3
