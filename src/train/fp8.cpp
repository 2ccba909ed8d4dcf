// DeepSeek-V3's FP8 training recipe (§3.3), simulated on the CPU: the inputs of a Linear's three
// GEMMs are rounded through E4M3 with fine-grained scales, and the products accumulate in FP32.
// Rounding and saturation are the real thing's; only the tensor cores' limited accumulation width
// is not modelled (DeepSeek promotes partial sums to FP32 every 128 elements for that reason).
#include <algorithm>
#include <bit>
#include <cmath>

#include "core/error.h"
#include "core/numeric.h"
#include "train/train.h"

namespace dsv3::train {

void TrainableModel::set_fp8_gemms(bool on) {
  for (auto& [name, p] : parameters) p.fp8_gemm = false;
  if (!on) return;
  // The Linears DeepSeek-V3's FP8 checkpoints store in E4M3 are the ones its recipe trains in FP8.
  for (const CheckpointTensor& t : checkpoint_layout(config))
    if (t.fp8_in_official_checkpoints && t.copy_of.empty()) parameter(t.name).fp8_gemm = true;
}

}  // namespace dsv3::train
