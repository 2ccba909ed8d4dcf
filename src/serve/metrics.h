#pragma once
// Prometheus text-format pieces for /metrics: request counters, cumulative histograms with fixed buckets.
#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace dsv3::serve {

// Counters for /metrics, by route and status.
class RequestCounts {
 public:
  void add(const std::string& route, int status) {
    std::lock_guard lock(mutex_);
    ++counts_[{route, status}];
  }
  std::map<std::pair<std::string, int>, std::int64_t> snapshot() const {
    std::lock_guard lock(mutex_);
    return counts_;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::int64_t> counts_;
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}

  void observe(double value) {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < bounds_.size(); ++i)
      if (value <= bounds_[i]) ++counts_[i];
    ++count_;
    sum_ += value;
  }

  // `name`'s _bucket (cumulative, as Prometheus wants), _sum and _count lines.
  std::string text(const std::string& name, const std::string& help) const {
    std::lock_guard lock(mutex_);
    std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    for (std::size_t i = 0; i < bounds_.size(); ++i)
      out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], counts_[i]);
    out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, sum_, name, count_);
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<double> bounds_;
  std::vector<std::int64_t> counts_;
  std::int64_t count_ = 0;
  double sum_ = 0.0;
};

}  // namespace dsv3::serve
