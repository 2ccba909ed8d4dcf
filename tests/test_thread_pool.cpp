// The thread pool: every index covered once, exceptions from any thread reach the caller once and
// only after every thread has left the body, the pool usable afterwards, and several outside
// threads calling it at once with nested loops (run under ThreadSanitizer by
// `scripts/test.sh --sanitize thread`).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace dsv3 {
namespace {

// Counts the threads inside the body; a throwing chunk leaves through the destructor too.
struct Inside {
  explicit Inside(std::atomic<int>& count) : count_(count) { count_.fetch_add(1); }
  ~Inside() { count_.fetch_sub(1); }
  std::atomic<int>& count_;
};

void wait_until(const std::atomic<bool>& flag) {
  while (!flag.load()) std::this_thread::yield();
}

// Every index of [0, count) visited exactly once.
void expect_covered_once(ThreadPool& pool, std::int64_t count, std::int64_t grain) {
  std::vector<std::atomic<int>> visits(static_cast<std::size_t>(count));
  pool.parallel_for(count, grain, [&](std::int64_t begin, std::int64_t end) {
    ASSERT_LE(0, begin);
    ASSERT_LT(begin, end);
    ASSERT_LE(end, count);
    for (std::int64_t i = begin; i < end; ++i) visits[static_cast<std::size_t>(i)].fetch_add(1);
  });
  for (std::int64_t i = 0; i < count; ++i)
    ASSERT_EQ(visits[static_cast<std::size_t>(i)].load(), 1) << "index " << i << " of " << count << ", grain " << grain;
}

TEST(ThreadPool, EveryIndexOnceForAwkwardCountsAndGrains) {
  for (const int threads : {1, 2, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (const std::int64_t count : {1, 7, 129, 1000})
      for (const std::int64_t grain : {0, 1, 3, 128, 5000}) expect_covered_once(pool, count, grain);
  }
}

TEST(ThreadPool, NothingRunsForAnEmptyRange) {
  ThreadPool pool(4);
  int calls = 0;
  pool.parallel_for(0, 1, [&](std::int64_t, std::int64_t) { ++calls; });
  pool.parallel_for(-5, 1, [&](std::int64_t, std::int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPool, AWorkersExceptionReachesTheCallerAfterEveryThreadLeftTheBody) {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  std::atomic<int> inside{0};
  std::atomic<bool> thrown{false}, thrower_chosen{false};
  try {
    pool.parallel_for(64, 1, [&](std::int64_t begin, std::int64_t) {
      const Inside guard(inside);
      if (std::this_thread::get_id() == caller) {
        wait_until(thrown);  // the caller's share ends only after a worker has thrown
        return;
      }
      if (!thrower_chosen.exchange(true)) {
        thrown = true;
        throw std::runtime_error("worker chunk at " + std::to_string(begin));
      }
      // The other workers are still in the body when the exception is thrown.
      wait_until(thrown);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    });
    FAIL() << "parallel_for returned normally";
  } catch (const std::runtime_error& error) {
    EXPECT_EQ(std::string(error.what()).rfind("worker chunk at ", 0), 0u) << error.what();
    EXPECT_EQ(inside.load(), 0) << "a thread is still inside the body when the exception arrives";
  }
  expect_covered_once(pool, 1000, 1);
}

TEST(ThreadPool, TheCallersExceptionWaitsForTheWorkersToLeave) {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  std::atomic<int> inside{0};
  std::atomic<bool> worker_entered{false}, thrown{false};
  bool caller_threw = false;
  try {
    pool.parallel_for(64, 1, [&](std::int64_t, std::int64_t) {
      const Inside guard(inside);
      if (std::this_thread::get_id() == caller && !caller_threw) {
        wait_until(worker_entered);
        caller_threw = true;
        thrown = true;
        throw std::logic_error("caller's chunk");
      }
      worker_entered = true;
      wait_until(thrown);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    });
    FAIL() << "parallel_for returned normally";
  } catch (const std::logic_error& error) {
    EXPECT_STREQ(error.what(), "caller's chunk");
    EXPECT_EQ(inside.load(), 0) << "a worker is still inside the body when the exception arrives";
  }
  // Whether or not the caller got a chunk, the loop either threw its exception or none: when
  // workers took every chunk, the FAIL above reports it.
  EXPECT_TRUE(caller_threw);
  expect_covered_once(pool, 1000, 1);
}

TEST(ThreadPool, WhenEveryChunkThrowsOneExceptionArrivesAndThePoolStaysUsable) {
  ThreadPool pool(4);
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> thrown{0}, inside{0};
    int caught = 0;
    try {
      pool.parallel_for(1000, 1, [&](std::int64_t begin, std::int64_t) {
        const Inside guard(inside);
        thrown.fetch_add(1);
        throw std::runtime_error("chunk " + std::to_string(begin));
      });
    } catch (const std::runtime_error& error) {
      ++caught;
      EXPECT_EQ(std::string(error.what()).rfind("chunk ", 0), 0u);
      EXPECT_EQ(inside.load(), 0);
    }
    EXPECT_EQ(caught, 1);
    // No chunk starts once one has failed; at most one per thread was already under way.
    EXPECT_GE(thrown.load(), 1);
    EXPECT_LE(thrown.load(), pool.size());
    expect_covered_once(pool, 129, 1);
  }
}

TEST(ThreadPool, NestedLoopsRunAndCoverTheirRanges) {
  ThreadPool pool(4);
  constexpr std::int64_t outer = 37, inner = 53;
  std::vector<std::atomic<int>> visits(outer * inner);
  pool.parallel_for(outer, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      pool.parallel_for(inner, 1, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t j = b; j < e; ++j) visits[static_cast<std::size_t>(i * inner + j)].fetch_add(1);
      });
  });
  for (std::size_t k = 0; k < visits.size(); ++k) ASSERT_EQ(visits[k].load(), 1) << k;
}

TEST(ThreadPool, AnExceptionInANestedLoopReachesTheOuterCaller) {
  ThreadPool pool(4);
  auto outer = [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      pool.parallel_for(16, 1, [&](std::int64_t b, std::int64_t e) {
        if (i == 5 && b <= 7 && 7 < e) throw std::out_of_range("nested");
      });
  };
  EXPECT_THROW(pool.parallel_for(16, 1, outer), std::out_of_range);
  expect_covered_once(pool, 1000, 1);
}

// Four outside threads drive one pool at once, each with nested loops and some loops that throw;
// each thread's sums come out exact and every exception reaches the thread that started its loop.
TEST(ThreadPool, FourOutsideThreadsWithNestedLoopsAndExceptions) {
  ThreadPool pool(4);
  constexpr int kCallers = 4, kRounds = 60;
  constexpr std::int64_t outer = 24, inner = 40;
  std::vector<std::int64_t> wrong(kCallers, 0), caught(kCallers, 0);
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        const bool throws = round % 5 == 4;
        std::atomic<std::int64_t> sum{0};
        try {
          pool.parallel_for(outer, 1, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t i = begin; i < end; ++i)
              pool.parallel_for(inner, 3, [&](std::int64_t b, std::int64_t e) {
                if (throws && i == outer / 2 && b == 0) throw std::runtime_error("caller " + std::to_string(t));
                for (std::int64_t j = b; j < e; ++j) sum.fetch_add(i * inner + j + t);
              });
          });
          const std::int64_t n = outer * inner;
          if (throws || sum.load() != n * (n - 1) / 2 + n * t) ++wrong[t];
        } catch (const std::runtime_error& error) {
          if (!throws || error.what() != "caller " + std::to_string(t)) ++wrong[t];
          ++caught[t];
        }
      }
    });
  }
  for (auto& thread : callers) thread.join();
  for (int t = 0; t < kCallers; ++t) {
    EXPECT_EQ(wrong[t], 0) << "caller " << t;
    EXPECT_EQ(caught[t], kRounds / 5) << "caller " << t;
  }
  expect_covered_once(pool, 1000, 1);
}

TEST(ThreadPool, ASecondPoolCanBeDrivenFromInsideTheFirstsBody) {
  ThreadPool first(3), second(3);
  std::atomic<std::int64_t> sum{0};
  first.parallel_for(8, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i)
      second.parallel_for(100, 1, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t j = b; j < e; ++j) sum.fetch_add(j);
      });
  });
  EXPECT_EQ(sum.load(), 8 * 4950);
}

}  // namespace
}  // namespace dsv3
