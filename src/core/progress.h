#pragma once
// A one-line progress bar on stderr for long work (loading, initialising, benchmarking): done/total,
// rate and time left, redrawn at most ten times a second. Completely quiet when stderr is not a
// terminal, so piped and logged output stays clean. Thread-safe.
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace dsv3 {

class ProgressBar {
 public:
  enum class Unit { items, bytes };
  ProgressBar(std::string label, std::int64_t total, Unit unit = Unit::items);
  ~ProgressBar();  // clears the line

  void set(std::int64_t done);
  void advance(std::int64_t amount = 1);
  bool visible() const { return visible_; }

 private:
  void draw(bool force);

  std::string label_;
  std::int64_t total_;
  Unit unit_;
  std::int64_t done_ = 0;
  bool visible_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace dsv3
