#include "model/weights.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <type_traits>

#include "core/env.h"
#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "io/fp8_blocks.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

class Loader {
 public:
  Loader(const ModelConfig& config, const TensorStore& store) : config_(config), store_(store) {}

  const TensorView& tensor(const std::string& name, const std::vector<std::int64_t>& expected) const {
    const TensorView& view = store_.require(name);
    if (view.shape != expected)
      fail("{} (in {}): shape {}, expected {} from config.json", name, view.file.string(), view.shape_string(),
           shape_string(expected));
    return view;
  }

  Matrix matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    const TensorView& view = tensor(name, {rows, cols});
    Matrix m;
    m.name = name;
    m.dtype = view.dtype;
    m.rows = rows;
    m.cols = cols;
    m.data = view.data;
    switch (view.dtype) {
      case DType::F32:
      case DType::BF16:
      case DType::F16:
        break;
      case DType::F8_E4M3: {
        m.block_rows = config_.quantization.block_rows;
        m.block_cols = config_.quantization.block_cols;
        const std::string scale_name = fp8_scale_tensor_name(name);
        const TensorView& scale = tensor(scale_name, {(rows + m.block_rows - 1) / m.block_rows, m.scale_cols()});
        if (scale.dtype != DType::F32)
          fail("{} (in {}): dtype {}, expected F32", scale_name, scale.file.string(), dtype_name(scale.dtype));
        auto values = std::make_shared<std::vector<float>>(static_cast<std::size_t>(scale.numel()));
        std::memcpy(values->data(), scale.data, scale.nbytes);
        m.scales = std::move(values);
        break;
      }
      default:
        fail("{} (in {}): dtype {} is not supported for a weight matrix (BF16, F16, F32 or F8_E4M3)", name,
             view.file.string(), dtype_name(view.dtype));
    }
    return m;
  }

  std::vector<float> vector(const std::string& name, std::int64_t size) const {
    const TensorView& view = tensor(name, {size});
    std::vector<float> values(static_cast<std::size_t>(size));
    for (std::int64_t i = 0; i < size; ++i) {
      const std::byte* element = view.data + i * dtype_size(view.dtype);
      std::uint16_t half;
      switch (view.dtype) {
        case DType::F32:
          std::memcpy(&values[i], element, 4);
          break;
        case DType::BF16:
          std::memcpy(&half, element, 2);
          values[i] = bf16_to_float(half);
          break;
        case DType::F16:
          std::memcpy(&half, element, 2);
          values[i] = f16_to_float(half);
          break;
        default:
          fail("{} (in {}): dtype {} is not supported for a vector (BF16, F16 or F32)", name, view.file.string(),
               dtype_name(view.dtype));
      }
    }
    return values;
  }

 private:
  const ModelConfig& config_;
  const TensorStore& store_;
};

using Role = CheckpointTensor::Role;
using Mlp = CheckpointTensor::Mlp;

// Where tensor `t` of the layout lives in `w` (Weights or const Weights): a matrix, or a vector
// (norms, router bias).
template <typename W>
auto slot_of(W& w, const CheckpointTensor& t) {
  constexpr bool is_const = std::is_const_v<W>;
  struct Slot {
    std::conditional_t<is_const, const Matrix, Matrix>* matrix = nullptr;
    std::conditional_t<is_const, const std::vector<float>, std::vector<float>>* vector = nullptr;
  } slot;
  auto need = [&t](auto* part) -> auto& {
    if (!part) fail("{}: these weights have no place for it (not loaded from its config's layout)", t.name);
    return *part;
  };
  auto* mtp = t.mtp_depth >= 0 && t.mtp_depth < static_cast<std::int64_t>(w.mtp.size()) ? &w.mtp[t.mtp_depth] : nullptr;
  auto* layer = mtp ? &mtp->layer : nullptr;
  if (t.mtp_depth < 0 && t.layer >= 0 && t.layer < static_cast<std::int64_t>(w.layers.size())) layer = &w.layers[t.layer];
  auto* moe = layer && layer->moe ? &*layer->moe : nullptr;
  std::conditional_t<is_const, const MlpWeights, MlpWeights>* mlp = nullptr;
  if (t.mlp == Mlp::dense && layer && layer->mlp) mlp = &*layer->mlp;
  if (t.mlp == Mlp::shared_experts && moe && moe->shared_experts) mlp = &*moe->shared_experts;
  if (t.mlp == Mlp::routed_expert && moe && t.expert >= 0 && t.expert < static_cast<std::int64_t>(moe->experts.size()))
    mlp = &moe->experts[t.expert];
  switch (t.role) {
    case Role::embed_tokens: slot.matrix = &w.embed_tokens; break;
    case Role::norm: slot.vector = &w.norm; break;
    case Role::lm_head: slot.matrix = &w.lm_head; break;
    case Role::input_layernorm: slot.vector = &need(layer).input_layernorm; break;
    case Role::post_attention_layernorm: slot.vector = &need(layer).post_attention_layernorm; break;
    case Role::q_a_proj: slot.matrix = &need(layer).attention.q_a_proj; break;
    case Role::q_a_layernorm: slot.vector = &need(layer).attention.q_a_layernorm; break;
    case Role::q_b_proj: slot.matrix = &need(layer).attention.q_b_proj; break;
    case Role::q_proj: slot.matrix = &need(layer).attention.q_proj; break;
    case Role::kv_a_proj_with_mqa: slot.matrix = &need(layer).attention.kv_a_proj_with_mqa; break;
    case Role::kv_a_layernorm: slot.vector = &need(layer).attention.kv_a_layernorm; break;
    case Role::kv_b_proj: slot.matrix = &need(layer).attention.kv_b_proj; break;
    case Role::o_proj: slot.matrix = &need(layer).attention.o_proj; break;
    case Role::router: slot.matrix = &need(moe).router; break;
    case Role::router_bias: slot.vector = &need(moe).e_score_correction_bias; break;
    case Role::gate_proj: slot.matrix = &need(mlp).gate_proj; break;
    case Role::up_proj: slot.matrix = &need(mlp).up_proj; break;
    case Role::down_proj: slot.matrix = &need(mlp).down_proj; break;
    case Role::enorm: slot.vector = &need(mtp).enorm; break;
    case Role::hnorm: slot.vector = &need(mtp).hnorm; break;
    case Role::eh_proj: slot.matrix = &need(mtp).eh_proj; break;
    case Role::shared_head_norm: slot.vector = &need(mtp).shared_head_norm; break;
    case Role::shared_head_head: slot.matrix = &need(mtp).shared_head_head; break;
    case Role::mtp_embed_tokens: slot.matrix = &need(mtp).embed_tokens; break;
  }
  return slot;
}

}  // namespace

Weights Weights::load(const std::filesystem::path& model_dir) {
  ModelConfig config = ModelConfig::load(model_dir);
  TensorStore store = TensorStore::open(model_dir);
  return load(std::move(config), std::move(store));
}

namespace {

// Fills every tensor of the layout: matrix_of(t) (an empty Matrix for an MTP copy of the
// embedding or head means the original, earlier in the table, serves) or vector_of(t).
template <typename MatrixOf, typename VectorOf>
void fill(Weights& w, MatrixOf&& matrix_of, VectorOf&& vector_of) {
  const std::vector<CheckpointTensor> layout = checkpoint_layout(w.config);
  for (const CheckpointTensor& t : layout) {
    make_room(w, t);
    const auto slot = slot_of(w, t);
    if (!slot.matrix) {
      *slot.vector = vector_of(t);
      continue;
    }
    Matrix m = matrix_of(t);
    if (m.empty() && !t.copy_of.empty()) {
      const auto original = std::find_if(layout.begin(), layout.end(), [&](const auto& o) { return o.name == t.copy_of; });
      m = *slot_of(w, *original).matrix;
    }
    *slot.matrix = std::move(m);
  }
  if (w.config.tie_word_embeddings) w.lm_head = w.embed_tokens;
}

}  // namespace

Weights Weights::load(ModelConfig config, TensorStore store) {
  Weights w{std::move(config), std::move(store), {}, {}, {}, {}, {}, {}};
  w.shard = whole_shard(w.config);
  const Loader load(w.config, w.store);
  // The released checkpoints store copies of the shared embedding and head in the MTP modules;
  // use them when present, the originals otherwise: in training they are the same parameters.
  fill(
      w,
      [&](const CheckpointTensor& t) {
        return !t.copy_of.empty() && !w.store.find(t.name) ? Matrix{} : load.matrix(t.name, t.shape[0], t.shape[1]);
      },
      [&](const CheckpointTensor& t) { return load.vector(t.name, t.shape[0]); });
  return w;
}

Weights Weights::assemble(ModelConfig config, const std::function<Matrix(const CheckpointTensor&)>& matrix,
                          const std::function<std::vector<float>(const CheckpointTensor&)>& vector) {
  Weights w{std::move(config), {}, {}, {}, {}, {}, {}, {}};
  w.shard = whole_shard(w.config);
  fill(w, matrix, vector);
  return w;
}

Weights::Slot Weights::slot(const CheckpointTensor& t) const {
  const auto found = slot_of(*this, t);
  return {found.matrix, found.vector};
}

namespace {

// `source` (BF16, F16) as an FP8 matrix owning its codes and scales, 128 rows at a time, on the
// pool's threads.
Matrix quantized_fp8(const Matrix& source) {
  constexpr std::int64_t kBlock = 128;
  auto codes = std::make_shared<std::vector<std::uint8_t>>(static_cast<std::size_t>(source.rows * source.cols));
  const std::int64_t bands = (source.rows + kBlock - 1) / kBlock, scale_cols = (source.cols + kBlock - 1) / kBlock;
  auto scales = std::make_shared<std::vector<float>>(static_cast<std::size_t>(bands * scale_cols));
  ThreadPool::global().parallel_for(bands, 1, [&](std::int64_t first, std::int64_t last) {
    std::vector<float> band;
    for (std::int64_t b = first; b < last; ++b) {
      const std::int64_t begin = b * kBlock, end = std::min(source.rows, begin + kBlock);
      band.resize(static_cast<std::size_t>((end - begin) * source.cols));
      for (std::int64_t i = 0; i < (end - begin) * source.cols; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, source.data + (begin * source.cols + i) * 2, sizeof bits);
        band[static_cast<std::size_t>(i)] = source.dtype == DType::BF16 ? bf16_to_float(bits) : f16_to_float(bits);
      }
      const Fp8Blocks blocks = quantize_fp8_blocks(band.data(), end - begin, source.cols, kBlock, kBlock);
      std::copy(blocks.codes.begin(), blocks.codes.end(), codes->begin() + begin * source.cols);
      std::copy(blocks.scales.begin(), blocks.scales.end(), scales->begin() + b * scale_cols);
    }
  });
  Matrix m;
  m.name = source.name;
  m.dtype = DType::F8_E4M3;
  m.rows = source.rows;
  m.cols = source.cols;
  m.data = reinterpret_cast<const std::byte*>(codes->data());
  m.scales = std::move(scales);
  m.block_rows = kBlock;
  m.block_cols = kBlock;
  m.owner = std::move(codes);
  return m;
}

std::atomic<bool>& heads_fp8_setting() {
  static std::atomic<bool> setting = env_flag("DSV3_HEAD_FP8", false);
  return setting;
}

}  // namespace

void quantize_output_heads_fp8(Weights& weights) {
  std::vector<Matrix*> heads{&weights.lm_head};
  for (MtpWeights& m : weights.mtp) heads.push_back(&m.shared_head_head);
  std::vector<std::pair<const std::byte*, Matrix>> done;  // a copy sharing the head's tensor shares its result
  for (Matrix* head : heads) {
    if (head->empty() || (head->dtype != DType::BF16 && head->dtype != DType::F16)) continue;
    const auto same = std::find_if(done.begin(), done.end(), [&](const auto& d) { return d.first == head->data; });
    if (same != done.end()) {
      *head = same->second;
      continue;
    }
    const Matrix source = *head;
    *head = quantized_fp8(source);
    done.emplace_back(source.data, *head);
    const bool embedding_too = source.data == weights.embed_tokens.data ||
                               std::any_of(weights.mtp.begin(), weights.mtp.end(),
                                           [&](const MtpWeights& m) { return m.embed_tokens.data == source.data; });
    if (!source.owner && !embedding_too) weights.store.release(source.data, source.bytes());
  }
}

bool output_heads_fp8() { return heads_fp8_setting().load(std::memory_order_relaxed); }

void set_output_heads_fp8(bool fp8) { heads_fp8_setting().store(fp8, std::memory_order_relaxed); }

namespace {

// DSV3_DECODE_TILES: 1 (the default) the head, the layers' dense linears and kv_b_proj; head the
// head alone; 0 none.
enum class DecodeTiles { none, head, all };

DecodeTiles decode_tiles_setting() {
  const char* value = std::getenv("DSV3_DECODE_TILES");
  const std::string_view text = value ? value : "";
  if (text.empty() || text == "1") return DecodeTiles::all;
  if (text == "head") return DecodeTiles::head;
  if (text == "0") return DecodeTiles::none;
  fail("DSV3_DECODE_TILES={}: expected 1, head or 0", text);
}

// The main layers' linears a decode step reads with every row of the batch: attention's projections
// but kv_b_proj (the absorbed products read it in tiles of their own), dense MLPs and shared experts.
// W: Weights or const Weights.
template <typename W, typename Body>
void for_each_dense_linear(W& weights, Body&& body) {
  for (auto& layer : weights.layers) {
    auto& a = layer.attention;
    for (auto* m : {&a.q_a_proj, &a.q_b_proj, &a.q_proj, &a.kv_a_proj_with_mqa, &a.o_proj}) body(*m);
    for (auto* mlp : {&layer.mlp, layer.moe ? &layer.moe->shared_experts : nullptr})
      if (mlp && *mlp)
        for (auto* m : {&(*mlp)->gate_proj, &(*mlp)->up_proj, &(*mlp)->down_proj}) body(*m);
  }
}

}  // namespace

std::size_t prepare_decode_weights(Weights& weights, const kernels::Backend& backend) {
  static const DecodeTiles wanted = decode_tiles_setting();
  if (wanted == DecodeTiles::none) return 0;
  std::size_t bytes = backend.prepare_decode_weight(weights.lm_head);
  if (wanted != DecodeTiles::all) return bytes;
  for_each_dense_linear(weights, [&](Matrix& m) { bytes += backend.prepare_decode_weight(m); });
  const ModelConfig& c = weights.config;
  for (LayerWeights& layer : weights.layers) {
    Matrix& kv_b = layer.attention.kv_b_proj;
    if (kv_b.empty()) continue;
    const kernels::MlaShape d{.heads = kv_b.rows / (c.qk_nope_head_dim + c.v_head_dim), .nope = c.qk_nope_head_dim,
                              .rope = c.qk_rope_head_dim, .v = c.v_head_dim, .kv_lora = c.kv_lora_rank};
    bytes += backend.prepare_absorb_weight(kv_b, d);
  }
  return bytes;
}

std::size_t decode_copy_bytes(const Weights& weights) {
  const auto bytes = [](const Matrix& m) -> std::size_t {
    const PackedWeight* packed = m.packed_copy();
    return packed ? packed->bytes : 0;
  };
  std::size_t total = bytes(weights.lm_head);
  for_each_dense_linear(weights, [&](const Matrix& m) { total += bytes(m); });
  for (const LayerWeights& layer : weights.layers)
    if (const PackedWeight* absorb = layer.attention.kv_b_proj.packed_copy(PackedOrder::absorb_tiles))
      total += absorb->bytes;
  return total;
}

}  // namespace dsv3
