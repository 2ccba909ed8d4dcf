// AdamW on FP32 master weights with FP32 or BF16 moments, gradient clipping, and the schedules of
// the learning rate and of the balancing speed γ.
#include <cmath>
#include <cstring>
#include <numbers>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

constexpr std::int64_t kGrain = 1 << 14;  // elements per task in element-wise loops

// Reads and writes one stored moment: FP32 as is, BF16 rounded to nearest even on every store.
struct F32Store {
  static float load(const float& v) { return v; }
  static void store(float& slot, float v) { slot = v; }
};
struct Bf16Store {
  static float load(const std::uint16_t& v) { return bf16_to_float(v); }
  static void store(std::uint16_t& slot, float v) { slot = float_to_bf16(v); }
};

template <typename Store, typename T>
void adamw_update(Parameter& p, std::vector<T>& m, std::vector<T>& v, float lr, float decay, float beta1, float beta2,
                  float eps, double correction1, double correction2) {
  const auto inverse_correction1 = static_cast<float>(1.0 / correction1);
  const auto inverse_sqrt_correction2 = static_cast<float>(1.0 / std::sqrt(correction2));
  ThreadPool::global().parallel_for(static_cast<std::int64_t>(p.value.size()), kGrain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const float g = p.grad[i];
      // The update uses the moments as stored, so a BF16 run is exactly what its state records.
      Store::store(m[i], beta1 * Store::load(m[i]) + (1.0f - beta1) * g);
      Store::store(v[i], beta2 * Store::load(v[i]) + (1.0f - beta2) * g * g);
      const float m_hat = Store::load(m[i]) * inverse_correction1;
      const float denominator = std::sqrt(Store::load(v[i])) * inverse_sqrt_correction2 + eps;
      p.value[i] = p.value[i] * (1.0f - lr * decay) - lr * m_hat / denominator;
    }
  });
}

std::span<const std::byte> bytes_of(const auto& values) { return std::as_bytes(std::span(values)); }

template <typename T>
void read_moment(const TensorStore& store, const std::string& name, DType dtype, std::vector<T>& target) {
  const TensorView& view = store.require(name);
  if (view.dtype != dtype || view.nbytes != target.size() * sizeof(T))
    fail("{}: {} {} in {}, expected {} with {} values", name, dtype_name(view.dtype), view.shape_string(),
         view.file.string(), dtype_name(dtype), target.size());
  std::memcpy(target.data(), view.data, view.nbytes);
}

}  // namespace

AdamW::AdamW(const TrainableModel& model, const AdamWOptions& options) : options_(options) {
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0) || !(options.beta2 >= 0.0 && options.beta2 < 1.0))
    fail("AdamW: betas ({}, {}) must lie in [0, 1)", options.beta1, options.beta2);
  if (!(options.eps > 0.0)) fail("AdamW: eps = {} must be positive", options.eps);
  if (!(options.weight_decay >= 0.0)) fail("AdamW: weight_decay = {} must be >= 0", options.weight_decay);
  for (const auto& [name, p] : model.parameters) {
    Moments& moments = moments_[name];
    if (options.moment_dtype == MomentDType::f32) {
      moments.m32.assign(p.value.size(), 0.0f);
      moments.v32.assign(p.value.size(), 0.0f);
    } else {
      moments.m16.assign(p.value.size(), 0);
      moments.v16.assign(p.value.size(), 0);
    }
  }
}

bool AdamW::decays(const Parameter& p) const {
  if (options_.decay_norms_and_embeddings) return true;
  return p.shape.size() == 2 && p.name != "model.embed_tokens.weight";
}

void AdamW::step(TrainableModel& model, double lr) {
  ++steps_;
  const double correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const auto beta1 = static_cast<float>(options_.beta1), beta2 = static_cast<float>(options_.beta2);
  const auto eps = static_cast<float>(options_.eps), rate = static_cast<float>(lr);
  for (auto& [name, p] : model.parameters) {
    auto found = moments_.find(name);
    if (found == moments_.end()) fail("AdamW: {} has no moments (the optimizer belongs to another model)", name);
    Moments& mo = found->second;
    const float decay = decays(p) ? static_cast<float>(options_.weight_decay) : 0.0f;
    if (options_.moment_dtype == MomentDType::f32) {
      adamw_update<F32Store>(p, mo.m32, mo.v32, rate, decay, beta1, beta2, eps, correction1, correction2);
    } else {
      adamw_update<Bf16Store>(p, mo.m16, mo.v16, rate, decay, beta1, beta2, eps, correction1, correction2);
    }
  }
}

float AdamW::first_moment(const std::string& name, std::size_t i) const {
  const Moments& mo = moments_.at(name);
  return options_.moment_dtype == MomentDType::f32 ? mo.m32.at(i) : bf16_to_float(mo.m16.at(i));
}

float AdamW::second_moment(const std::string& name, std::size_t i) const {
  const Moments& mo = moments_.at(name);
  return options_.moment_dtype == MomentDType::f32 ? mo.v32.at(i) : bf16_to_float(mo.v16.at(i));
}

std::vector<TensorToWrite> AdamW::state_tensors() const {
  std::vector<TensorToWrite> tensors;
  const bool f32 = options_.moment_dtype == MomentDType::f32;
  for (const auto& [name, mo] : moments_) {
    const std::vector<std::int64_t> shape{static_cast<std::int64_t>(f32 ? mo.m32.size() : mo.m16.size())};
    const DType dtype = f32 ? DType::F32 : DType::BF16;
    tensors.push_back({"adam_m:" + name, dtype, shape, f32 ? bytes_of(mo.m32) : bytes_of(mo.m16)});
    tensors.push_back({"adam_v:" + name, dtype, shape, f32 ? bytes_of(mo.v32) : bytes_of(mo.v16)});
  }
  return tensors;
}

void AdamW::load_state(const TensorStore& store, std::int64_t steps) {
  for (auto& [name, mo] : moments_) {
    if (options_.moment_dtype == MomentDType::f32) {
      read_moment(store, "adam_m:" + name, DType::F32, mo.m32);
      read_moment(store, "adam_v:" + name, DType::F32, mo.v32);
    } else {
      read_moment(store, "adam_m:" + name, DType::BF16, mo.m16);
      read_moment(store, "adam_v:" + name, DType::BF16, mo.v16);
    }
  }
  steps_ = steps;
}

void scale_gradients(TrainableModel& model, double factor) {
  const auto f = static_cast<float>(factor);
  for (auto& [name, p] : model.parameters)
    for (float& g : p.grad) g *= f;
}

double clip_gradient_norm(TrainableModel& model, double max_norm) {
  double sum_squares = 0.0;
  for (const auto& [name, p] : model.parameters)
    for (float g : p.grad) sum_squares += static_cast<double>(g) * g;
  const double norm = std::sqrt(sum_squares);
  // PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  if (max_norm > 0.0 && norm > max_norm) scale_gradients(model, max_norm / (norm + 1e-6));
  return norm;
}

double LearningRateSchedule::at(std::int64_t step) const {
  if (step < warmup_steps) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const std::int64_t start = std::max(decay_start, warmup_steps);
  if (step < start || decay_steps <= 0) return peak;
  if (step >= start + decay_steps) return floor;
  const double progress = static_cast<double>(step - start) / static_cast<double>(decay_steps);
  return floor + (peak - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace dsv3::train
