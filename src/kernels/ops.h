#pragma once
// The op interface: the seam between model/ (what DeepSeek-V3 computes) and the devices that
// compute it (DESIGN.md, "the op interface"). model/ and train/ include this header only; a device
// implements every op of Backend, and kernels/reference holds a slow twin of each that the op
// harness (tests/test_ops.cpp) checks every backend and instruction-set path against.
//
// Activations are float32 Tensors in memory the device owns; weights are Matrix views in their
// storage dtype (BF16, F16, F32, FP8 E4M3 with 128x128 scales), widened on the fly, never stored
// wide. Small integer metadata (token ids, positions, routes, row lists) stays in host memory:
// it is what a device backend uploads with each call. Scratch comes from a Workspace, so that a
// warmed-up step allocates nothing.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/matrix.h"

namespace dsv3::kernels {

// A view of a [rows, cols] float32 matrix in device memory, rows `stride` floats apart.
struct Tensor {
  float* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t stride = 0;

  Tensor() = default;
  Tensor(float* data, std::int64_t rows, std::int64_t cols) : data(data), rows(rows), cols(cols), stride(cols) {}
  Tensor(float* data, std::int64_t rows, std::int64_t cols, std::int64_t stride)
      : data(data), rows(rows), cols(cols), stride(stride) {}

  float* row(std::int64_t r) const { return data + r * stride; }
  bool contiguous() const { return stride == cols || rows <= 1; }
  std::int64_t size() const { return rows * cols; }
  // Rows [begin, end), all columns.
  Tensor row_range(std::int64_t begin, std::int64_t end) const;
  // Columns [begin, end) of every row (a strided view).
  Tensor columns(std::int64_t begin, std::int64_t end) const;
  // The same contiguous values as [rows, cols] (e.g. [T, heads * d] as [T * heads, d]).
  Tensor reshape(std::int64_t rows, std::int64_t cols) const;
};

class Backend;

// Scratch memory for one step, planned rather than discovered: memory is handed out in order and
// returned all at once by reset(). Whatever a step needs beyond the current capacity is allocated
// once, and the next reset() folds it into one block of the high-water size, so from the second
// step of a given shape on a step allocates nothing. Tensors live in device memory; arrays
// (ids, positions, routes) in host memory.
class Workspace {
 public:
  explicit Workspace(const Backend& backend);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  Tensor tensor(std::int64_t rows, std::int64_t cols);
  template <typename T>
  std::span<T> array(std::int64_t count) {
    static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>);
    return {static_cast<T*>(host_.take(static_cast<std::size_t>(count) * sizeof(T), alignof(T))),
            static_cast<std::size_t>(count)};
  }
  // Everything handed out since the last reset becomes free again.
  void reset();
  // Memory taken while a Scope lives is free again when it ends (a layer's temporaries), so a
  // step needs the largest layer's scratch, not the sum over layers.
  class Scope {
   public:
    explicit Scope(Workspace& workspace);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Workspace& workspace_;
    std::size_t device_mark_, host_mark_;
  };
  // Makes room for `device_bytes` and `host_bytes` without further allocation.
  void reserve(std::int64_t device_bytes, std::int64_t host_bytes);
  std::int64_t device_capacity() const { return device_.capacity(); }
  std::int64_t host_capacity() const { return host_.capacity(); }
  const Backend& backend() const { return backend_; }

 private:
  // A bump allocator over blocks from `allocate`/`release`.
  class Arena {
   public:
    Arena(const Backend* device) : device_(device) {}
    ~Arena();
    void* take(std::size_t bytes, std::size_t alignment);
    void reset();
    std::size_t mark() const { return current_; }
    void rollback(std::size_t mark);
    void reserve(std::size_t bytes);
    std::int64_t capacity() const;

   private:
    struct Block {
      std::byte* data = nullptr;
      std::size_t size = 0;
      std::size_t start = 0;  // current_ when the block was started
    };
    std::byte* allocate(std::size_t bytes) const;
    void release(std::byte* data) const;
    const Backend* device_;  // nullptr: host memory
    std::vector<Block> blocks_;
    std::size_t used_ = 0;     // in the last block
    std::size_t current_ = 0;  // in use over all blocks (padding included)
    std::size_t peak_ = 0;     // the most in use since reset
  };
  const Backend& backend_;
  Arena device_;
  Arena host_;
};

// Decoupled RoPE with YaRN: the frequencies and scale the model derives from its config.
struct RopeParams {
  std::span<const double> inverse_frequencies;  // [rope_dim / 2]
  double attention_factor = 1.0;                // YaRN's scale on cos and sin
  bool interleaved = true;                      // pairs (2i, 2i+1) as DeepSeek; else (i, i + half)
};

// Causal softmax attention of one sequence's `tokens` new queries at positions query_offset + i
// over keys 0 ..= their position (k and v hold query_offset + tokens rows: a cached prefix, then
// the new tokens). Heads are addressed as base + token * stride + head * head_stride (in floats),
// so MLA's packed kv_b_proj output is read in place. out: [tokens, heads, v_dim] contiguous.
struct AttentionShape {
  std::int64_t tokens = 0;
  std::int64_t query_offset = 0;
  std::int64_t heads = 0;
  std::int64_t qk_dim = 0;
  std::int64_t v_dim = 0;
  std::int64_t q_stride = 0, q_head_stride = 0;
  std::int64_t k_stride = 0, k_head_stride = 0;
  std::int64_t v_stride = 0, v_head_stride = 0;
};

// One layer of one sequence's rows in a paged latent KV cache: fixed-size blocks of block_tokens
// rows of `width` values (F32 or BF16); the sequence's row j lives in block blocks[j / block_tokens]
// at slot j % block_tokens, at storage + ((blocks[b] * block_stride_rows + layer_offset_rows +
// slot) * width) * dtype_size.
struct LatentPages {
  std::byte* storage = nullptr;
  DType dtype = DType::F32;
  std::int64_t width = 0;
  std::int64_t block_tokens = 0;
  std::int64_t block_stride_rows = 0;
  std::int64_t layer_offset_rows = 0;
  std::span<const std::int32_t> blocks;
};

// The head dimensions of Multi-head Latent Attention.
struct MlaShape {
  std::int64_t heads = 0;
  std::int64_t nope = 0;     // qk_nope_head_dim
  std::int64_t rope = 0;     // qk_rope_head_dim
  std::int64_t v = 0;        // v_head_dim
  std::int64_t kv_lora = 0;  // kv_lora_rank
  std::int64_t qk() const { return nope + rope; }
  std::int64_t width() const { return kv_lora + rope; }  // a cached latent row: c_kv | k_rope
};

// One absorbed-attention query row: the cached keys [0, keys) of its sequence's pages.
struct LatentQuery {
  const LatentPages* pages = nullptr;
  std::int64_t keys = 0;
};

// DeepSeekMoE routing: sigmoid affinities, a bias that only steers the choice, the topk_group best
// groups (a group scores the sum of its two best biased affinities), the top_k experts in them,
// gate weights the chosen unbiased affinities, normalised if asked, times the scaling factor.
struct RouteParams {
  std::int64_t n_group = 1;
  std::int64_t topk_group = 1;
  std::int64_t top_k = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
};

// Rows of one MoE layer grouped by expert: expert e's rows are [offsets[e], offsets[e + 1]) of
// `rows`; slots[i] = token * top_k + k says which route row i serves.
struct Dispatch {
  std::span<std::int64_t> offsets;  // [experts + 1]
  std::span<std::int64_t> slots;    // [tokens * top_k]
  Tensor rows;                      // [tokens * top_k, hidden]
  std::int64_t top_k = 0;
};

// c[m, n] = a[m, k] · b (+ beta · c), b given as [k, n] or, with b_transposed, as [n, k]; leading
// dimensions in floats.
struct MatmulShape {
  std::int64_t m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  bool b_transposed = false;
  float beta = 0.0f;
};

// A device. Every op checks its shapes and fails naming the op (and the weight) at fault.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Device memory, for Workspace and the latent cache.
  virtual void* allocate(std::size_t bytes) const = 0;
  virtual void release(void* data) const = 0;
  // Copies a device tensor to host memory, rows packed: dst.size() == src.size().
  virtual void read(Tensor src, std::span<float> dst) const = 0;
  // Gives a weight that decode reads most (the output head) a copy in the device kernels' own
  // order (Matrix::packed) where the device has one for its dtype and the arithmetic in force;
  // returns the bytes that copy takes (0: none made). The weight's own data stays for the rest.
  virtual std::size_t prepare_decode_weight(Matrix& weight) const = 0;
  // The same for MLA's kv_b_proj, whose absorbed products (mla_absorb_query, mla_absorb_output)
  // read it head by head in two parts.
  virtual std::size_t prepare_absorb_weight(Matrix& kv_b_proj, const MlaShape& d) const = 0;

  // out[i] = table[ids[i]]; an id of kZeroRow gives a zero row (MTP's first position).
  static constexpr std::int64_t kZeroRow = -1;
  virtual void embedding(const Matrix& table, std::span<const std::int64_t> ids, Tensor out) const = 0;
  // y = x · Wᵀ: [rows, W.rows] from [rows, W.cols], FP32 accumulation, any weight dtype.
  virtual void linear(Tensor x, const Matrix& weight, Tensor y) const = 0;
  // out = x / rms(x) * weight per row; out may be x.
  virtual void rmsnorm(Tensor x, std::span<const float> weight, float eps, Tensor out) const = 0;
  // Rotates each row's rope_dim values in place; row r is at positions[r / rows_per_position].
  virtual void rope(Tensor x, std::int64_t rows_per_position, std::span<const std::int64_t> positions,
                    const RopeParams& params) const = 0;
  // x += y.
  virtual void add(Tensor x, Tensor y) const = 0;
  // x = value everywhere.
  virtual void fill(Tensor x, float value) const = 0;
  // out = silu(gate) * up; out may be gate.
  virtual void swiglu(Tensor gate, Tensor up, Tensor out) const = 0;
  // dst row r = src row r / repeat (repeat > 1 broadcasts a row to consecutive rows).
  virtual void copy_rows(Tensor src, Tensor dst, std::int64_t repeat = 1) const = 0;
  // dst row i = src row rows[i].
  virtual void gather_rows(Tensor src, std::span<const std::int64_t> rows, Tensor dst) const = 0;

  virtual void attention_causal(const float* q, const float* k, const float* v, const AttentionShape& shape,
                                float scale, float* out) const = 0;

  // Writes rows to positions [first_position, first_position + rows.rows) of the pages.
  virtual void cache_store(const LatentPages& pages, std::int64_t first_position, Tensor rows) const = 0;
  // Reads positions [0, out.rows) of the pages as float32.
  virtual void cache_load(const LatentPages& pages, Tensor out) const = 0;

  // Absorbed MLA. q: [rows, heads * qk] (q_nope | q_rope per head); kv_b_proj: [heads * (nope + v),
  // kv_lora]. q_latent[r, h] = (W_UK[h]ᵀ q_nope[r, h] | q_rope[r, h]): [rows, heads * width].
  virtual void mla_absorb_query(Tensor q, const Matrix& kv_b_proj, const MlaShape& shape, Tensor q_latent,
                                Workspace& workspace) const = 0;
  // o_latent[r, h] = softmax(scale · q_latent[r, h] · keys) · c_kv over the row's cached keys
  // (latent rows c_kv | k_rope; values are their c_kv): [rows, heads * kv_lora]. The device may
  // split a row's keys into ranges and merge their partial softmaxes.
  virtual void attention_latent(Tensor q_latent, std::span<const LatentQuery> queries, const MlaShape& shape,
                                float scale, Tensor o_latent, Workspace& workspace) const = 0;
  // out[r, h] = W_UV[h] o_latent[r, h]: [rows, heads * v].
  virtual void mla_absorb_output(Tensor o_latent, const Matrix& kv_b_proj, const MlaShape& shape, Tensor out,
                                 Workspace& workspace) const = 0;

  // From router logits [tokens, experts]: experts and weights [tokens * top_k] in choice order.
  virtual void route(Tensor logits, std::span<const float> bias, const RouteParams& params,
                     std::span<std::int32_t> experts, std::span<float> weights) const = 0;
  // Groups x's rows by the experts chosen for them (routes [tokens * top_k]).
  virtual Dispatch moe_dispatch(Tensor x, std::span<const std::int32_t> experts, std::int64_t n_experts,
                                std::int64_t top_k, Workspace& workspace) const = 0;
  // out[i] = the SwiGLU MLP of rows[i]'s expert over rows[i]: [tokens * top_k, hidden]. With
  // `gate` and `up` given (training keeps them), their [tokens * top_k, intermediate] receive the
  // gate_proj and up_proj outputs. An expert with empty weights is held by another rank (expert
  // parallelism): its rows of `out` are zero and it costs nothing here.
  virtual void moe_experts(const Dispatch& dispatch, std::span<const MlpWeights> experts, Tensor out,
                           Workspace& workspace, Tensor gate = {}, Tensor up = {}) const = 0;
  // y[token] += Σ_k weights[token * top_k + k] · out[row of slot (token, k)], summed in expert
  // order whatever the device's schedule.
  virtual void moe_combine(const Dispatch& dispatch, std::span<const float> weights, Tensor out,
                           Tensor y) const = 0;

  // Plain float32 matrix product (training's backward passes).
  virtual void matmul(const float* a, const float* b, float* c, const MatmulShape& shape) const = 0;
};

// A device tensor's values in a new host vector (rows packed).
std::vector<float> read(const Backend& backend, Tensor src);

// How linears compute. Fast (the default): many rows (prefill, training) through a GEMM library's
// product, BF16 activations and weights with FP32 accumulation where the device has BF16
// arithmetic, FP32 elsewhere; and where the GEMM takes BF16, a BF16 weight's few-row products
// (decode) round the activations to BF16 too. Exact: FP32 activations throughout, the numerics the
// parity tests hold to. Process-wide; its first value comes from the environment (DSV3_EXACT=1 or 0), so child
// processes of a test or a script inherit it.
bool exact_arithmetic();
void set_exact_arithmetic(bool exact);

// The backend a process computes on, chosen once ("cpu" today).
const Backend& default_backend();

}  // namespace dsv3::kernels
