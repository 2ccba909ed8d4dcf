// parallel_for allocates nothing: the body is passed by reference (FunctionRef), not wrapped in
// a std::function, on the pool's path, the inline path and nested loops alike.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <functional>

#include "allocation_counter.h"
#include "core/thread_pool.h"

namespace dsv3 {
namespace {

TEST(HeapAllocations, TheCounterSeesAStdFunctionWithALargeCapture) {
  std::array<std::int64_t, 8> captured{};
  const std::int64_t before = test::heap_allocations();
  std::function<std::int64_t()> wrapped = [captured] { return captured[0]; };
  EXPECT_GE(test::heap_allocations() - before, 1);
  EXPECT_EQ(wrapped(), 0);
}

TEST(HeapAllocations, ParallelForAllocatesNothing) {
  ThreadPool pool(4);
  // Captures bigger than std::function's small-object buffer: a std::function would allocate.
  std::array<std::int64_t, 8> weights{1, 2, 3, 4, 5, 6, 7, 8};
  std::atomic<std::int64_t> sum{0}, chunks{0}, nested_items{0};
  auto loop = [&](std::int64_t count, std::int64_t grain) {
    pool.parallel_for(count, grain, [&, weights](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) sum.fetch_add(weights[static_cast<std::size_t>(i % 8)]);
      chunks.fetch_add(1);
      pool.parallel_for(3, 1, [&, weights](std::int64_t b, std::int64_t e) { nested_items.fetch_add((e - b) * weights[0]); });
    });
  };
  loop(1000, 1);  // warm-up: the workers have started and slept once
  const std::int64_t before = test::heap_allocations();
  for (int round = 0; round < 100; ++round) {
    loop(1000, 1);  // through the workers
    loop(5, 100);   // inline: the count fits one grain
  }
  EXPECT_EQ(test::heap_allocations() - before, 0);
  EXPECT_EQ(sum.load(), 101 * 4500 + 100 * (1 + 2 + 3 + 4 + 5));
  EXPECT_EQ(nested_items.load(), 3 * chunks.load());
}

}  // namespace
}  // namespace dsv3
