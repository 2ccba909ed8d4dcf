#pragma once
// A fixed pool of worker threads for data-parallel loops. The calling thread takes part, so a
// pool of N threads keeps N cores busy. One caller drives the pool at a time; a loop started while
// another runs (from a second thread, or nested in a loop body) runs on its own thread instead, so
// no caller ever waits for another and nesting cannot deadlock.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/function_ref.h"

namespace dsv3 {

class ThreadPool {
 public:
  // The loop body: called with [begin, end) ranges; a reference, so a call allocates nothing.
  using Body = FunctionRef<void(std::int64_t, std::int64_t)>;

  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls body(begin, end) over [0, count) split into chunks of at least `grain` items. When a
  // chunk throws, no further chunk starts, and once every thread has left the body the first
  // exception is rethrown here (any later ones are dropped); the pool stays usable.
  void parallel_for(std::int64_t count, std::int64_t grain, Body body);

  // The process-wide pool, sized by DSV3_THREADS or the hardware concurrency.
  static ThreadPool& global();
  static void set_global_threads(int threads);

 private:
  void worker_loop();
  void run_chunks() noexcept;
  void wait_for_workers();

  std::vector<std::thread> workers_;

  // The job: written by the caller that owns the pool before it publishes `job_`, read by workers
  // after they see it published and until they leave `busy_`.
  const Body* body_ = nullptr;
  std::int64_t count_ = 0;
  std::int64_t chunk_ = 0;
  std::int64_t chunks_ = 0;
  std::uint64_t generation_ = 0;
  std::atomic<std::int64_t> next_chunk_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // the first exception of the job; under mutex_

  std::atomic<bool> owned_{false};      // a caller drives the pool
  std::atomic<std::uint64_t> job_{0};   // 2 * generation + 1 while workers may join it, + 0 once closed
  std::atomic<int> busy_{0};            // workers that may be inside the body
  std::atomic<int> sleeping_{0};        // workers waiting on wake_
  std::atomic<bool> caller_sleeping_{false};

  std::mutex mutex_;
  std::condition_variable wake_;  // workers: a job was published, or stop_
  std::condition_variable done_;  // the caller: busy_ fell to 0
  bool stop_ = false;
};

}  // namespace dsv3
