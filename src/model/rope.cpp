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
    : interleave_(config.rope_interleave) {
  const std::int64_t dim = config.qk_rope_head_dim;
  const double base = config.rope_theta;
  const std::int64_t half = dim / 2;
  inverse_frequencies_.resize(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inverse_frequencies_[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
  const RopeScaling& yarn = config.rope_scaling;
  if (!yarn.yarn) return;

  // YaRN: frequencies that turn more than beta_fast times over the original context keep their
  // value (extrapolation), those turning fewer than beta_slow times are divided by `factor`
  // (interpolation), with a linear ramp between.
  const double original = static_cast<double>(yarn.original_max_position_embeddings);
  double low = std::floor(correction_dim(yarn.beta_fast, static_cast<double>(dim), base, original));
  double high = std::ceil(correction_dim(yarn.beta_slow, static_cast<double>(dim), base, original));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
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

}  // namespace dsv3
