#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace dsv3 {
namespace {

// The dimension index whose wavelength completes `rotations` turns over `max_positions`.
double correction_dim(double rotations, double dim, double base, double max_positions) {
  return dim * std::log(max_positions / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

}  // namespace

RopeTable::RopeTable(const ModelConfig& config)
    : dim_(config.qk_rope_head_dim), interleave_(config.rope_interleave) {
  const double base = config.rope_theta;
  const std::int64_t half = dim_ / 2;
  inverse_frequencies_.resize(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inverse_frequencies_[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim_));
  const RopeScaling& yarn = config.rope_scaling;
  if (!yarn.yarn) return;

  // YaRN: frequencies that turn more than beta_fast times over the original context keep their
  // value (extrapolation), those turning fewer than beta_slow times are divided by `factor`
  // (interpolation), with a linear ramp between.
  const double original = static_cast<double>(yarn.original_max_position_embeddings);
  double low = std::floor(correction_dim(yarn.beta_fast, static_cast<double>(dim_), base, original));
  double high = std::ceil(correction_dim(yarn.beta_slow, static_cast<double>(dim_), base, original));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim_ - 1));
  if (low == high) high += 0.001;  // avoids a zero-width ramp
  for (std::int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation_weight = 1.0 - ramp;
    const double extrapolated = inverse_frequencies_[i];
    const double interpolated = extrapolated / yarn.factor;
    inverse_frequencies_[i] = interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight;
  }
  // Hugging Face scales cos/sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim) when
  // both are given (1 for the released DeepSeek-V3 configs; the softmax scale then carries the
  // mscale_all_dim correction), and by mscale(factor) otherwise.
  if (yarn.attention_factor) {
    attention_factor_ = *yarn.attention_factor;
  } else if (yarn.mscale && yarn.mscale_all_dim && *yarn.mscale != 0.0 && *yarn.mscale_all_dim != 0.0) {
    attention_factor_ = yarn_get_mscale(yarn.factor, *yarn.mscale) / yarn_get_mscale(yarn.factor, *yarn.mscale_all_dim);
  } else {
    attention_factor_ = yarn_get_mscale(yarn.factor, 1.0);
  }
}

void RopeTable::apply(float* x, std::int64_t rows, std::int64_t stride, std::int64_t rows_per_position,
                      std::span<const std::int64_t> positions) const {
  const std::int64_t half = dim_ / 2;
  std::vector<float> cos_values(static_cast<std::size_t>(half)), sin_values(static_cast<std::size_t>(half));
  std::int64_t cached_position = -1;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t position = positions[static_cast<std::size_t>(r / rows_per_position)];
    if (position != cached_position) {
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(position) * inverse_frequencies_[i];
        cos_values[i] = static_cast<float>(std::cos(angle) * attention_factor_);
        sin_values[i] = static_cast<float>(std::sin(angle) * attention_factor_);
      }
      cached_position = position;
    }
    float* row = x + r * stride;
    // Interleaved (DeepSeek's layout): pairs (2i, 2i+1). Otherwise (rotate-half): pairs (i, i+half).
    for (std::int64_t i = 0; i < half; ++i) {
      float& a = interleave_ ? row[2 * i] : row[i];
      float& b = interleave_ ? row[2 * i + 1] : row[i + half];
      const float a0 = a, b0 = b;
      a = a0 * cos_values[i] - b0 * sin_values[i];
      b = b0 * cos_values[i] + a0 * sin_values[i];
    }
  }
}

}  // namespace dsv3
