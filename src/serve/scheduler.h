#pragma once
// Continuous batching for the server: one thread owns the Engine and steps it; request handlers
// on other threads submit jobs (one sequence per choice) and read their tokens from the job's own
// queue. Jobs join the batch between steps, as long as the batch and the KV cache have room for
// them, and leave when their sequences finish or are cancelled.
//
// Admission takes what the cache can hold now (a job's prompts); when the running sequences
// outgrow the cache, the engine preempts the newest and computes them again later, so a step does
// not fail for want of pages. A request whose sequences cannot fit even alone is refused up front.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "serve/metrics.h"

namespace dsv3::serve {

// What a job's queue carries: a token of one choice, or the end of the whole job with an error.
struct JobItem {
  std::int32_t choice = 0;
  SampledToken sampled;
  bool finished = false;
  FinishReason reason = FinishReason::none;
  std::int64_t drafted = 0, accepted = 0;  // the choice's MTP drafts so far (TokenEvent's)
  std::string error;  // non-empty: the job failed (the engine refused or failed it)
  int status = 500;   // of an error: 400 when the engine refused the request
};

// One request's sequences and the queue its handler waits on.
class Job {
 public:
  Job(std::vector<std::vector<std::int32_t>> prompts, std::vector<SamplingParams> params);

  std::size_t choices() const { return prompts_.size(); }
  // Waits up to `timeout_ms` for items and moves them into `out` (appended); false on timeout.
  bool wait(std::vector<JobItem>& out, int timeout_ms);
  // Asks the scheduler to end one choice (a stop string seen), or all of them (a client gone).
  void cancel(std::size_t choice);
  void cancel_all();
  // Prompt tokens of all choices taken from the prefix cache, once the job has been admitted.
  std::int64_t cached_prompt_tokens();

 private:
  friend class Scheduler;
  void push(JobItem item);
  bool cancelled(std::size_t choice);

  std::vector<std::vector<std::int32_t>> prompts_;
  std::vector<SamplingParams> params_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<JobItem> items_;
  std::vector<bool> cancelled_;
  std::int64_t cached_prompt_tokens_ = 0;
  std::atomic<bool> any_cancelled_{false};
};

struct SchedulerStats {
  std::int64_t steps = 0;
  std::int64_t batched_steps = 0;  // steps with more than one sequence
  std::int64_t most_batch = 0;
  std::int64_t running = 0;        // sequences in the engine now
  std::int64_t queued = 0;         // jobs waiting for admission
  std::int64_t cache_free_tokens = 0;  // free blocks and evictable cached ones
  PrefixCacheStats prefix_cache;
  std::int64_t generated_tokens = 0;
  std::int64_t cancelled = 0;      // sequences ended before they finished (stop strings, clients gone)
  SpeculationStats speculation;    // MTP drafts tried and accepted, by draft position
  std::int64_t preemptions = 0;    // sequences preempted for want of cache pages
  std::int64_t waiting = 0;        // preempted sequences waiting to be computed again
  std::optional<RouterCounts> router_counts;  // with expert statistics on: the engine's as of its last step
};

class Scheduler {
 public:
  // `max_batch`: most sequences stepped together; `max_queue`: most jobs waiting to join.
  Scheduler(Engine& engine, std::int64_t max_batch, std::int64_t max_queue);
  ~Scheduler();

  // The most cache tokens one sequence can hold: its prompt and max_tokens, in whole pages, plus
  // the drafts MTP may try past its end.
  std::int64_t reservation(std::int64_t prompt_tokens, std::int64_t max_tokens) const;
  std::int64_t capacity_tokens() const;

  enum class Submitted { accepted, queue_full, stopping };
  Submitted submit(std::shared_ptr<Job> job);

  // Cancels every job (the grace period of a shutdown ran out).
  void cancel_all();
  // Stops the thread once every job has been served.
  void stop();

  SchedulerStats stats() const;
  // Sequences per engine step.
  const Histogram& batch_rows() const { return batch_rows_; }

 private:
  struct Running {
    std::shared_ptr<Job> job;
    std::size_t choice = 0;
  };
  void loop();
  bool admit(const std::shared_ptr<Job>& job);  // false: no room yet
  void fail_running(const std::string& message);

  Engine& engine_;
  const std::int64_t max_batch_;
  const std::int64_t max_queue_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  bool cancel_all_ = false;
  // Owned by the scheduler thread.
  std::map<SequenceId, Running> running_;
  SchedulerStats stats_;  // guarded by mutex_
  Histogram batch_rows_{{1, 2, 4, 8, 16, 32, 64, 128}};
  std::thread thread_;
};

}  // namespace dsv3::serve
