#include "core/thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace dsv3 {
namespace {
thread_local bool t_inside_pool = false;
constexpr int kSpinIterations = 4000;

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
std::unique_ptr<ThreadPool> g_pool;
std::mutex g_pool_mutex;

int default_threads() {
  if (const char* env = std::getenv("DSV3_THREADS")) {
    const int value = std::atoi(env);
    if (value > 0) return value;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this, i] { worker_loop(i); });
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

void ThreadPool::run_chunks() {
  for (;;) {
    std::int64_t begin;
    {
      std::lock_guard lock(mutex_);
      if (next_ >= count_) return;
      begin = next_;
      next_ += chunk_;
    }
    (*body_)(begin, std::min(count_, begin + chunk_));
  }
}

void ThreadPool::worker_loop(int) {
  t_inside_pool = true;
  std::uint64_t seen = 0;
  for (;;) {
    // A decode step runs hundreds of short loops; waking a sleeping thread for each costs more
    // than many of them take, so a worker spins a little (~0.1 ms) before it sleeps.
    for (int i = 0; i < kSpinIterations && published_.load(std::memory_order_acquire) == seen; ++i) pause();
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++busy_;
    }
    run_chunks();
    {
      std::lock_guard lock(mutex_);
      --busy_;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallel_for(std::int64_t count, std::int64_t grain,
                              const std::function<void(std::int64_t, std::int64_t)>& body) {
  if (count <= 0) return;
  grain = std::max<std::int64_t>(1, grain);
  if (workers_.empty() || t_inside_pool || count <= grain) {
    body(0, count);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    if (running_) {  // another thread already drives the pool: run this loop inline
      body(0, count);
      return;
    }
    running_ = true;
    body_ = &body;
    count_ = count;
    // About four chunks per thread balances uneven chunks without much locking.
    const std::int64_t target = std::max<std::int64_t>(1, count / (4 * size()));
    chunk_ = std::max(grain, target);
    next_ = 0;
    ++generation_;
  }
  published_.store(generation_, std::memory_order_release);
  wake_.notify_all();
  t_inside_pool = true;
  run_chunks();
  t_inside_pool = false;
  for (int i = 0; i < kSpinIterations && busy_.load(std::memory_order_acquire) != 0; ++i) pause();
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return busy_ == 0 && next_ >= count_; });
  running_ = false;
  body_ = nullptr;
}

}  // namespace dsv3
