#include "core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace dsv3 {
namespace {

std::string amount(double value, ProgressBar::Unit unit) {
  if (unit == ProgressBar::Unit::items) return fmt::format("{:.0f}", value);
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int i = 0;
  while (value >= 1000.0 && i < 4) value /= 1000.0, ++i;
  return fmt::format("{:.1f} {}", value, units[i]);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, std::int64_t total, Unit unit)
    : label_(std::move(label)), total_(std::max<std::int64_t>(total, 1)), unit_(unit), visible_(::isatty(2) != 0) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() {
  if (visible_) fmt::print(stderr, "\r\033[K");
}

void ProgressBar::set(std::int64_t done) {
  std::lock_guard lock(mutex_);
  done_ = std::min(done, total_);
  draw(done_ == total_);
}

void ProgressBar::advance(std::int64_t amount_done) {
  std::lock_guard lock(mutex_);
  done_ = std::min(done_ + amount_done, total_);
  draw(done_ == total_);
}

void ProgressBar::draw(bool force) {
  if (!visible_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
  const int width = 30, filled = static_cast<int>(fraction * width);
  const double rate = seconds > 0 ? static_cast<double>(done_) / seconds : 0.0;
  const double left = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  fmt::print(stderr, "\r\033[K{} [{}{}] {}/{} {}/s, {:.0f} s left", label_, std::string(filled, '#'),
             std::string(width - filled, '.'), amount(static_cast<double>(done_), unit_),
             amount(static_cast<double>(total_), unit_), amount(rate, unit_), left);
}

}  // namespace dsv3
