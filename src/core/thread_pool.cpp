#include "core/thread_pool.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "core/error.h"

namespace dsv3 {
namespace {
// A decode step runs hundreds of short loops; waking a sleeping thread for each costs more than
// many of them take, so workers and the caller spin a little (~0.1 ms) before they sleep.
constexpr int kSpinIterations = 4000;
constexpr int kMostThreads = 4096;

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

bool is_open(std::uint64_t job) { return (job & 1) != 0; }

std::unique_ptr<ThreadPool> g_pool;
std::mutex g_pool_mutex;

int default_threads() {
  if (const char* env = std::getenv("DSV3_THREADS")) {
    int value = 0;
    const char* end = env + std::strlen(env);
    const auto [stop, error] = std::from_chars(env, end, value);
    if (error != std::errc() || stop != end || value < 1 || value > kMostThreads)
      fail("DSV3_THREADS=\"{}\": expected a thread count in [1, {}]", env, kMostThreads);
    return value;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads > kMostThreads) fail("ThreadPool: {} threads asked for, at most {} supported", threads, kMostThreads);
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

ThreadPool& ThreadPool::global() {
  std::lock_guard lock(g_pool_mutex);
  if (!g_pool) g_pool = std::make_unique<ThreadPool>(default_threads());
  return *g_pool;
}

void ThreadPool::set_global_threads(int threads) {
  std::lock_guard lock(g_pool_mutex);
  g_pool = std::make_unique<ThreadPool>(threads);
}

void ThreadPool::run_chunks() noexcept {
  while (!failed_.load(std::memory_order_relaxed)) {
    // Chunk indices rather than item offsets: the counter overshoots by at most one per thread,
    // which cannot overflow whatever `count` is.
    const std::int64_t index = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (index >= chunks_) return;
    const std::int64_t begin = index * chunk_;
    const std::int64_t end = begin + std::min(chunk_, count_ - begin);
    try {
      (*body_)(begin, end);
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker_loop() {
  std::uint64_t last = 0;  // the last job this worker saw, joined or not
  auto new_job = [&](std::uint64_t job) { return is_open(job) && job != last; };
  for (;;) {
    std::uint64_t job = job_.load(std::memory_order_seq_cst);
    for (int i = 0; i < kSpinIterations && !new_job(job); ++i) {
      pause();
      job = job_.load(std::memory_order_seq_cst);
    }
    if (!new_job(job)) {
      std::unique_lock lock(mutex_);
      // Paired with the caller's store of job_ then load of sleeping_: either the caller sees this
      // worker asleep and notifies under the mutex, or this worker sees the job before it sleeps.
      sleeping_.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lock, [&] { return stop_ || new_job(job = job_.load(std::memory_order_seq_cst)); });
      sleeping_.fetch_sub(1, std::memory_order_relaxed);
      if (stop_) return;
    }
    last = job;
    // Enter, then check the job is still open: the caller closes it before it waits for busy_ to
    // reach 0, so a worker either is counted before the close or sees it closed and stays out.
    busy_.fetch_add(1, std::memory_order_seq_cst);
    if (job_.load(std::memory_order_seq_cst) == job) run_chunks();
    if (busy_.fetch_sub(1, std::memory_order_seq_cst) == 1 && caller_sleeping_.load(std::memory_order_seq_cst)) {
      { std::lock_guard lock(mutex_); }
      done_.notify_all();
    }
  }
}

void ThreadPool::wait_for_workers() {
  for (int i = 0; i < kSpinIterations && busy_.load(std::memory_order_seq_cst) != 0; ++i) pause();
  if (busy_.load(std::memory_order_seq_cst) == 0) return;
  std::unique_lock lock(mutex_);
  caller_sleeping_.store(true, std::memory_order_seq_cst);
  done_.wait(lock, [&] { return busy_.load(std::memory_order_seq_cst) == 0; });
  caller_sleeping_.store(false, std::memory_order_relaxed);
}

void ThreadPool::parallel_for(std::int64_t count, std::int64_t grain, Body body) {
  if (count <= 0) return;
  grain = std::max<std::int64_t>(1, grain);
  // Inline when there is nothing to share, or when another loop drives the pool: a second
  // thread's loop, or a loop nested in a body (the pool is then owned by the outer caller).
  if (workers_.empty() || count <= grain || owned_.load(std::memory_order_relaxed) ||
      owned_.exchange(true, std::memory_order_acquire)) {
    body(0, count);
    return;
  }
  body_ = &body;
  count_ = count;
  // About four chunks per thread balances uneven chunks without much contention.
  chunk_ = std::max(grain, count / (4 * static_cast<std::int64_t>(size())));
  chunks_ = count / chunk_ + (count % chunk_ != 0);
  next_chunk_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  const std::uint64_t job = 2 * ++generation_ + 1;
  job_.store(job, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard lock(mutex_); }
    wake_.notify_all();
  }

  run_chunks();
  job_.store(job - 1, std::memory_order_seq_cst);  // closed: no worker joins from now on
  wait_for_workers();

  std::exception_ptr error;
  if (failed_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(mutex_);
    error = std::exchange(error_, nullptr);
  }
  body_ = nullptr;
  owned_.store(false, std::memory_order_release);
  if (error) std::rethrow_exception(error);
}

}  // namespace dsv3
