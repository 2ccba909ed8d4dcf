#pragma once
// Matrix: a read-only [rows, cols] weight in its storage dtype, usually a view into a mapped
// checkpoint. FP8 matrices carry their float32 block scales (DeepSeek's `weight_scale_inv`: one
// per block_rows x block_cols block, edge blocks partial), and are dequantised on the fly by the
// kernels, never stored wide.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {

// pair_tiles: the weight's rows in tiles of 16 by column pairs. absorb_tiles: kv_b_proj's, per head
// its W_UK transposed and its W_UV, each in such tiles (the absorbed attention's products).
enum class PackedOrder { pair_tiles, absorb_tiles };

// A weight's copy in a device kernel's own order, made once at load for a weight that decode reads
// with every row of a batch (Backend::prepare_decode_weight, prepare_absorb_weight): the CPU's
// AVX512-BF16 dot products read a BF16 weight fastest as tiles of 16 rows by column pairs. It
// belongs to the data it was made from (`source`, rows x cols): a Matrix viewing other data or
// other rows ignores it.
struct PackedWeight {
  PackedOrder order = PackedOrder::pair_tiles;
  const std::byte* source = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const std::uint32_t* data = nullptr;
  std::size_t bytes = 0;
  std::shared_ptr<const void> owner;
};

struct Matrix {
  std::string name;
  DType dtype = DType::F32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const std::byte* data = nullptr;  // row-major, possibly unaligned
  // FP8 only: scales[(r / block_rows) * scale_cols + c / block_cols] multiplies element (r, c).
  std::shared_ptr<const std::vector<float>> scales;
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
  // Training's FP8 recipe (DeepSeek-V3 §3.3): the GEMM rounds its input rows through E4M3 in 1x128
  // tiles (fp8_quantize_dequantize) before multiplying; the weight itself is given already rounded.
  bool fp8_input_tiles = false;
  // Keeps owned data alive (weights made in memory rather than mapped from a file).
  std::shared_ptr<const void> owner;
  // The kernels read this copy in place of `data` where they can (nullptr: none was made).
  std::shared_ptr<const PackedWeight> packed;

  // `packed` if it was made from this matrix's data and shape, in that order.
  const PackedWeight* packed_copy(PackedOrder order = PackedOrder::pair_tiles) const {
    return packed && packed->order == order && packed->source == data && packed->rows == rows && packed->cols == cols
               ? packed.get()
               : nullptr;
  }
  bool empty() const { return data == nullptr; }
  std::int64_t scale_cols() const { return (cols + block_cols - 1) / block_cols; }
  std::size_t bytes() const { return static_cast<std::size_t>(rows * cols) * dtype_size(dtype); }
};

// The three matrices of a SwiGLU MLP (dense layers, shared and routed experts):
// down(silu(gate x) * up x).
struct MlpWeights {
  Matrix gate_proj;  // [intermediate, hidden]
  Matrix up_proj;    // [intermediate, hidden]
  Matrix down_proj;  // [hidden, intermediate]
};

// A float32 matrix owning its values (tests, freshly initialised or converted weights).
Matrix make_f32_matrix(std::string name, std::int64_t rows, std::int64_t cols, std::vector<float> values);

}  // namespace dsv3
