#include "model/weights.h"

#include <cstring>

#include "core/error.h"
#include "core/numeric.h"

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
        const std::string scale_name = scale_tensor_name(name);
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

  MlpWeights mlp(const std::string& prefix, std::int64_t intermediate) const {
    const std::int64_t hidden = config_.hidden_size;
    return {matrix(prefix + ".gate_proj.weight", intermediate, hidden),
            matrix(prefix + ".up_proj.weight", intermediate, hidden),
            matrix(prefix + ".down_proj.weight", hidden, intermediate)};
  }

  LayerWeights layer(std::int64_t index) const {
    const ModelConfig& c = config_;
    const std::string prefix = "model.layers." + std::to_string(index);
    LayerWeights layer;
    layer.input_layernorm = vector(prefix + ".input_layernorm.weight", c.hidden_size);
    layer.post_attention_layernorm = vector(prefix + ".post_attention_layernorm.weight", c.hidden_size);

    AttentionWeights& a = layer.attention;
    const std::string attn = prefix + ".self_attn";
    const std::int64_t q_out = c.num_attention_heads * c.qk_head_dim();
    if (c.q_lora_rank) {
      a.q_a_proj = matrix(attn + ".q_a_proj.weight", *c.q_lora_rank, c.hidden_size);
      a.q_a_layernorm = vector(attn + ".q_a_layernorm.weight", *c.q_lora_rank);
      a.q_b_proj = matrix(attn + ".q_b_proj.weight", q_out, *c.q_lora_rank);
    } else {
      a.q_proj = matrix(attn + ".q_proj.weight", q_out, c.hidden_size);
    }
    a.kv_a_proj_with_mqa =
        matrix(attn + ".kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size);
    a.kv_a_layernorm = vector(attn + ".kv_a_layernorm.weight", c.kv_lora_rank);
    a.kv_b_proj = matrix(attn + ".kv_b_proj.weight", c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim),
                         c.kv_lora_rank);
    a.o_proj = matrix(attn + ".o_proj.weight", c.hidden_size, c.num_attention_heads * c.v_head_dim);

    if (c.is_moe_layer(index)) {
      MoeWeights moe;
      moe.router = matrix(prefix + ".mlp.gate.weight", c.n_routed_experts, c.hidden_size);
      moe.e_score_correction_bias = vector(prefix + ".mlp.gate.e_score_correction_bias", c.n_routed_experts);
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
        moe.experts.push_back(mlp(prefix + ".mlp.experts." + std::to_string(e), c.moe_intermediate_size));
      if (c.n_shared_experts > 0)
        moe.shared_experts = mlp(prefix + ".mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts);
      layer.moe = std::move(moe);
    } else {
      layer.mlp = mlp(prefix + ".mlp", c.intermediate_size);
    }
    return layer;
  }

  static std::string scale_tensor_name(const std::string& weight_name) {
    return weight_name + "_scale_inv";  // "...proj.weight" -> "...proj.weight_scale_inv"
  }

 private:
  const ModelConfig& config_;
  const TensorStore& store_;
};

}  // namespace

Weights Weights::load(const std::filesystem::path& model_dir) {
  ModelConfig config = ModelConfig::load(model_dir);
  TensorStore store = TensorStore::open(model_dir);
  return load(std::move(config), std::move(store));
}

Weights Weights::load(ModelConfig config, TensorStore store) {
  Weights w{std::move(config), std::move(store), {}, {}, {}, {}, {}};
  const ModelConfig& c = w.config;
  const Loader load(c, w.store);
  w.embed_tokens = load.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size);
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) w.layers.push_back(load.layer(i));
  w.norm = load.vector("model.norm.weight", c.hidden_size);
  w.lm_head = c.tie_word_embeddings && !w.store.find("lm_head.weight")
                  ? w.embed_tokens
                  : load.matrix("lm_head.weight", c.vocab_size, c.hidden_size);
  for (std::int64_t depth = 0; depth < c.num_nextn_predict_layers; ++depth) {
    const std::int64_t index = c.num_hidden_layers + depth;
    const std::string prefix = "model.layers." + std::to_string(index);
    MtpWeights mtp;
    mtp.enorm = load.vector(prefix + ".enorm.weight", c.hidden_size);
    mtp.hnorm = load.vector(prefix + ".hnorm.weight", c.hidden_size);
    mtp.eh_proj = load.matrix(prefix + ".eh_proj.weight", c.hidden_size, 2 * c.hidden_size);
    mtp.layer = load.layer(index);
    mtp.shared_head_norm = load.vector(prefix + ".shared_head.norm.weight", c.hidden_size);
    // The released checkpoints store copies of the shared embedding and head; use them when
    // present, the main model's otherwise (they are the same parameters in training).
    mtp.shared_head_head = w.store.find(prefix + ".shared_head.head.weight")
                               ? load.matrix(prefix + ".shared_head.head.weight", c.vocab_size, c.hidden_size)
                               : w.lm_head;
    mtp.embed_tokens = w.store.find(prefix + ".embed_tokens.weight")
                           ? load.matrix(prefix + ".embed_tokens.weight", c.vocab_size, c.hidden_size)
                           : w.embed_tokens;
    w.mtp.push_back(std::move(mtp));
  }
  return w;
}

}  // namespace dsv3
