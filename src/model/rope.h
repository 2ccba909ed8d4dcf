#pragma once
// Decoupled RoPE with YaRN scaling, applied to the qk_rope_head_dim part of queries and keys.
#include <cstdint>
#include <span>
#include <vector>

#include "io/model_config.h"

namespace dsv3 {

class RopeTable {
 public:
  explicit RopeTable(const ModelConfig& config);

  // Rotates `rows` vectors of rope_dim floats in place; row r (at x + r * stride) belongs to
  // position positions[r / rows_per_position] (e.g. rows_per_position = heads for queries).
  void apply(float* x, std::int64_t rows, std::int64_t stride, std::int64_t rows_per_position,
             std::span<const std::int64_t> positions) const;

  const std::vector<double>& inverse_frequencies() const { return inverse_frequencies_; }
  double attention_factor() const { return attention_factor_; }

 private:
  std::int64_t dim_;
  bool interleave_;
  std::vector<double> inverse_frequencies_;  // [dim / 2]
  double attention_factor_ = 1.0;            // YaRN's scale on cos and sin
};

}  // namespace dsv3
