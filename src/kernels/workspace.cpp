// Tensor views and the Workspace arena: the device-neutral part of the op interface.
#include <algorithm>
#include <atomic>
#include <new>

#include "core/env.h"
#include "core/error.h"
#include "kernels/ops.h"

namespace dsv3::kernels {
namespace {

std::atomic<bool>& exact_setting() {
  static std::atomic<bool> exact = env_flag("DSV3_EXACT", false);  // 1: exact FP32 arithmetic, 0: fast
  return exact;
}

}  // namespace

bool exact_arithmetic() { return exact_setting().load(std::memory_order_relaxed); }
void set_exact_arithmetic(bool exact) { exact_setting().store(exact, std::memory_order_relaxed); }


Tensor Tensor::row_range(std::int64_t begin, std::int64_t end) const {
  if (begin < 0 || end > rows || begin > end) fail("tensor rows [{}, {}) outside [0, {})", begin, end, rows);
  return {data + begin * stride, end - begin, cols, stride};
}

Tensor Tensor::columns(std::int64_t begin, std::int64_t end) const {
  if (begin < 0 || end > cols || begin > end) fail("tensor columns [{}, {}) outside [0, {})", begin, end, cols);
  return {data + begin, rows, end - begin, stride};
}

Tensor Tensor::reshape(std::int64_t new_rows, std::int64_t new_cols) const {
  if (!contiguous()) fail("reshape of a strided [{}, {}] tensor", rows, cols);
  if (new_rows * new_cols != rows * cols) fail("reshape of [{}, {}] to [{}, {}]", rows, cols, new_rows, new_cols);
  return {data, new_rows, new_cols};
}

namespace {
constexpr std::size_t kAlignment = 64;  // a cache line, and enough for any SIMD load
std::size_t align_up(std::size_t value, std::size_t alignment) { return (value + alignment - 1) / alignment * alignment; }
}  // namespace

Workspace::Workspace(const Backend& backend) : backend_(backend), device_(&backend), host_(nullptr) {}
Workspace::~Workspace() = default;

Tensor Workspace::tensor(std::int64_t rows, std::int64_t cols) {
  if (rows < 0 || cols < 0) fail("workspace tensor of shape [{}, {}]", rows, cols);
  return {static_cast<float*>(device_.take(static_cast<std::size_t>(rows * cols) * sizeof(float), kAlignment)), rows,
          cols};
}

void Workspace::reset() {
  device_.reset();
  host_.reset();
}

Workspace::Scope::Scope(Workspace& workspace)
    : workspace_(workspace), device_mark_(workspace.device_.mark()), host_mark_(workspace.host_.mark()) {}

Workspace::Scope::~Scope() {
  workspace_.device_.rollback(device_mark_);
  workspace_.host_.rollback(host_mark_);
}

void Workspace::reserve(std::int64_t device_bytes, std::int64_t host_bytes) {
  device_.reserve(static_cast<std::size_t>(device_bytes));
  host_.reserve(static_cast<std::size_t>(host_bytes));
}

Workspace::Arena::~Arena() {
  for (const Block& block : blocks_) release(block.data);
}

std::byte* Workspace::Arena::allocate(std::size_t bytes) const {
  if (device_) return static_cast<std::byte*>(device_->allocate(bytes));
  return static_cast<std::byte*>(::operator new(bytes, std::align_val_t{kAlignment}));
}

void Workspace::Arena::release(std::byte* data) const {
  if (device_) {
    device_->release(data);
  } else {
    ::operator delete(data, std::align_val_t{kAlignment});
  }
}

void* Workspace::Arena::take(std::size_t bytes, std::size_t alignment) {
  alignment = std::max(alignment, kAlignment);
  bytes = std::max<std::size_t>(bytes, 1);
  if (!blocks_.empty()) {
    const std::size_t offset = align_up(used_, alignment);
    if (offset + bytes <= blocks_.back().size) {
      used_ = offset + bytes;
      current_ = blocks_.back().start + used_;
      peak_ = std::max(peak_, current_);
      return blocks_.back().data + offset;
    }
  }
  // A new block, at least as large as all before it, so few steps ever grow it.
  const std::size_t size = std::max(align_up(bytes, kAlignment), static_cast<std::size_t>(capacity()));
  blocks_.push_back({allocate(size), size, current_});
  used_ = bytes;
  current_ += bytes;
  peak_ = std::max(peak_, current_);
  return blocks_.back().data;
}

void Workspace::Arena::rollback(std::size_t mark) {
  while (blocks_.size() > 1 && blocks_.back().start > mark) {
    release(blocks_.back().data);
    blocks_.pop_back();
  }
  if (blocks_.empty()) return;
  used_ = mark - blocks_.back().start;
  current_ = mark;
}

void Workspace::Arena::reset() {
  if (blocks_.size() > 1) {
    // Fold the blocks into one of the high-water size (with room for each block's alignment), so
    // the next step of this shape fits without allocating.
    const std::size_t total = align_up(peak_ + blocks_.size() * kAlignment, kAlignment);
    for (const Block& block : blocks_) release(block.data);
    blocks_.clear();
    blocks_.push_back({allocate(total), total, 0});
  }
  used_ = current_ = peak_ = 0;
}

void Workspace::Arena::reserve(std::size_t bytes) {
  if (static_cast<std::size_t>(capacity()) >= bytes && blocks_.size() <= 1) return;
  if (current_ != 0) fail("Workspace::reserve during a step");
  for (const Block& block : blocks_) release(block.data);
  blocks_.clear();
  const std::size_t size = align_up(bytes, kAlignment);
  blocks_.push_back({allocate(size), size, 0});
}

std::int64_t Workspace::Arena::capacity() const {
  std::size_t total = 0;
  for (const Block& block : blocks_) total += block.size;
  return static_cast<std::int64_t>(total);
}

}  // namespace dsv3::kernels

namespace dsv3::kernels {

std::vector<float> read(const Backend& backend, Tensor src) {
  std::vector<float> values(static_cast<std::size_t>(src.size()));
  backend.read(src, values);
  return values;
}

}  // namespace dsv3::kernels
