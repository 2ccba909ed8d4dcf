#include "core/machine.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <fstream>
#include <vector>

#include "core/thread_pool.h"

namespace dsv3 {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("model name")) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown CPU";
}

std::string cpu_features() {
  std::string features;
  auto add = [&features](bool present, const char* name) {
    if (!present) return;
    if (!features.empty()) features += ' ';
    features += name;
  };
  __builtin_cpu_init();
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  return features.empty() ? "scalar" : features;
}

double measure_read_bandwidth(std::int64_t bytes, int repeats) {
  const auto words = static_cast<std::size_t>(bytes / 8);
  std::vector<std::uint64_t> buffer(words);
  for (std::size_t i = 0; i < words; ++i) buffer[i] = i * 0x9e3779b97f4a7c15ull;
  ThreadPool& pool = ThreadPool::global();
  const auto chunks = static_cast<std::int64_t>(pool.size());
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(chunks));
  double best = 0.0;
  for (int pass = 0; pass < repeats; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(chunks, 1, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t c = first; c < last; ++c) {
        const std::size_t begin = words * static_cast<std::size_t>(c) / static_cast<std::size_t>(chunks);
        const std::size_t end = words * static_cast<std::size_t>(c + 1) / static_cast<std::size_t>(chunks);
        // Eight independent integer sums vectorise and keep the loads, not the adds, the limit.
        std::uint64_t partial[8] = {};
        std::size_t i = begin;
        for (; i + 8 <= end; i += 8)
          for (int lane = 0; lane < 8; ++lane) partial[lane] += buffer[i + lane];
        for (; i < end; ++i) partial[0] += buffer[i];
        std::uint64_t total = 0;
        for (std::uint64_t p : partial) total ^= p;
        sums[static_cast<std::size_t>(c)] = total;
      }
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(words * 8) / seconds);
  }
  // Using the sums keeps the compiler from dropping the loads.
  volatile std::uint64_t sink = 0;
  for (std::uint64_t s : sums) sink = sink ^ s;
  return best;
}

std::int64_t last_level_cache_bytes() {
  std::int64_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (!(file >> text) || text.empty()) continue;
    std::int64_t value = 0;
    std::size_t i = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') value = value * 10 + (text[i++] - '0');
    const char unit = i < text.size() ? text[i] : ' ';
    if (unit == 'K') value <<= 10;
    if (unit == 'M') value <<= 20;
    if (unit == 'G') value <<= 30;
    largest = std::max(largest, value);
  }
  return largest;
}

std::int64_t peak_memory_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;
}

std::int64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::int64_t>(pages) * page_size;
}

namespace {
// The bytes of a "Key:   1234 kB" line of a /proc file; 0 when the file has no such line.
std::int64_t proc_kilobytes(const char* path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.size() > key.size() && line.compare(0, key.size(), key) == 0 && line[key.size()] == ':')
      return std::stoll(line.substr(key.size() + 1)) * 1024;
  return 0;
}
}  // namespace

std::int64_t available_memory_bytes() { return proc_kilobytes("/proc/meminfo", "MemAvailable"); }

std::int64_t resident_memory_bytes() { return proc_kilobytes("/proc/self/status", "VmRSS"); }

}  // namespace dsv3
