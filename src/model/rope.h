#pragma once
// Decoupled RoPE with YaRN scaling, applied to the qk_rope_head_dim part of queries and keys.
#include <cstdint>
#include <span>
#include <vector>

#include "io/model_config.h"
#include "kernels/ops.h"

namespace dsv3 {

class RopeTable {
 public:
  explicit RopeTable(const ModelConfig& config);

  // What the rope op needs (kernels/ops.h).
  kernels::RopeParams params() const { return {inverse_frequencies_, attention_factor_, interleave_}; }

  const std::vector<double>& inverse_frequencies() const { return inverse_frequencies_; }
  double attention_factor() const { return attention_factor_; }

 private:
  bool interleave_;
  std::vector<double> inverse_frequencies_;  // [dim / 2]
  double attention_factor_ = 1.0;            // YaRN's scale on cos and sin
};

}  // namespace dsv3
