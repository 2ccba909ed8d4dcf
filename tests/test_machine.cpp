// What core/machine.h reports about this machine's memory, checked against what the process does.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <memory>

#include "core/machine.h"

namespace dsv3 {
namespace {

TEST(Machine, MemoryFiguresHoldTogetherAndFollowWhatTheProcessTouches) {
  const std::int64_t physical = physical_memory_bytes(), available = available_memory_bytes();
  ASSERT_GT(physical, 0);
  ASSERT_GT(available, 0) << "Linux says MemAvailable in /proc/meminfo";
  EXPECT_LE(available, physical);
  // 256 MiB touched shows in this process's resident memory and its peak; MemAvailable is the
  // whole machine's (other processes move it), so only its bounds are checked.
  constexpr std::size_t kBytes = std::size_t{256} << 20;
  const std::int64_t before = resident_memory_bytes();
  ASSERT_GT(before, 0);
  const auto buffer = std::make_unique<char[]>(kBytes);
  std::memset(buffer.get(), 1, kBytes);
  const std::int64_t after = resident_memory_bytes();
  EXPECT_GE(after - before, static_cast<std::int64_t>(kBytes) * 9 / 10);
  // The kernel syncs its per-thread resident counters in batches, so the two readings may differ
  // by a few pages; the peak still holds the buffer.
  EXPECT_GE(peak_memory_bytes(), before + static_cast<std::int64_t>(kBytes) * 9 / 10);
  EXPECT_LE(after, physical);
}

}  // namespace
}  // namespace dsv3
