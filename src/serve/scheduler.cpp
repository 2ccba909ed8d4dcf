#include "serve/scheduler.h"

#include <algorithm>
#include <chrono>

namespace dsv3::serve {
namespace {

JobItem error_item(std::string message, int status, std::size_t choice = 0) {
  JobItem item;
  item.choice = static_cast<std::int32_t>(choice);
  item.error = std::move(message);
  item.status = status;
  return item;
}

JobItem token_item(std::size_t choice, const TokenEvent& event) {
  JobItem item;
  item.choice = static_cast<std::int32_t>(choice);
  item.sampled = event.sampled;
  item.finished = event.finished;
  item.reason = event.reason;
  item.drafted = event.drafted;
  item.accepted = event.accepted;
  return item;
}

}  // namespace

Job::Job(std::vector<std::vector<std::int32_t>> prompts, std::vector<SamplingParams> params)
    : prompts_(std::move(prompts)), params_(std::move(params)), cancelled_(prompts_.size(), false) {}

bool Job::wait(std::vector<JobItem>& out, int timeout_ms) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [this] { return !items_.empty(); })) return false;
  while (!items_.empty()) {
    out.push_back(std::move(items_.front()));
    items_.pop_front();
  }
  return true;
}

void Job::cancel(std::size_t choice) {
  std::lock_guard lock(mutex_);
  if (choice < cancelled_.size()) cancelled_[choice] = true;
  any_cancelled_ = true;
}

void Job::cancel_all() {
  std::lock_guard lock(mutex_);
  std::fill(cancelled_.begin(), cancelled_.end(), true);
  any_cancelled_ = true;
}

void Job::push(JobItem item) {
  {
    std::lock_guard lock(mutex_);
    items_.push_back(std::move(item));
  }
  ready_.notify_all();
}

std::int64_t Job::cached_prompt_tokens() {
  std::lock_guard lock(mutex_);
  return cached_prompt_tokens_;
}

bool Job::cancelled(std::size_t choice) {
  if (!any_cancelled_) return false;
  std::lock_guard lock(mutex_);
  return cancelled_.at(choice);
}

Scheduler::Scheduler(Engine& engine, std::int64_t max_batch, std::int64_t max_queue)
    : engine_(engine), max_batch_(max_batch), max_queue_(max_queue) {
  stats_.cache_free_tokens = engine_.free_tokens();
  stats_.prefix_cache = engine_.prefix_cache();
  if (const RouterCounts* counts = engine_.router_counts()) stats_.router_counts = *counts;
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  stop();
  if (thread_.joinable()) thread_.join();
}

std::int64_t Scheduler::reservation(std::int64_t prompt_tokens, std::int64_t max_tokens) const {
  const std::int64_t block = engine_.cache().block_tokens();
  const std::int64_t tokens = prompt_tokens + max_tokens + engine_.options().mtp_drafts + 1;
  return (tokens + block - 1) / block * block;
}

std::int64_t Scheduler::capacity_tokens() const { return engine_.cache().capacity_tokens(); }

Scheduler::Submitted Scheduler::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return Submitted::stopping;
    if (static_cast<std::int64_t>(queue_.size()) >= max_queue_) return Submitted::queue_full;
    queue_.push_back(std::move(job));
    stats_.queued = static_cast<std::int64_t>(queue_.size());
  }
  wake_.notify_all();
  return Submitted::accepted;
}

void Scheduler::cancel_all() {
  {
    std::lock_guard lock(mutex_);
    cancel_all_ = true;
  }
  wake_.notify_all();
}

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

bool Scheduler::admit(const std::shared_ptr<Job>& job) {
  const auto choices = static_cast<std::int64_t>(job->choices());
  // The pages of its prompts and first tokens, not of all it may generate: when the running
  // sequences outgrow the cache, the engine preempts the newest. Preempted sequences come back
  // before new work joins.
  std::int64_t wanted = 0;
  for (std::size_t c = 0; c < job->choices(); ++c)
    wanted += reservation(static_cast<std::int64_t>(job->prompts_[c].size()), 1);
  if (!running_.empty()) {
    if (static_cast<std::int64_t>(running_.size()) + choices > max_batch_) return false;
    if (engine_.waiting() > 0 || wanted > engine_.room_tokens()) return false;
  }
  std::vector<SequenceId> added;
  try {
    for (std::size_t c = 0; c < job->choices(); ++c) {
      const SequenceId id = engine_.add(job->prompts_[c], job->params_[c]);
      added.push_back(id);
      {
        std::lock_guard lock(job->mutex_);
        job->cached_prompt_tokens_ += engine_.cached_prompt_tokens(id);
      }
      running_.emplace(id, Running{job, c});
    }
  } catch (const std::exception& e) {
    for (const SequenceId id : added) {
      engine_.finish(id);
      running_.erase(id);
    }
    job->push(error_item(e.what(), 400));
  }
  return true;
}

void Scheduler::fail_running(const std::string& message) {
  for (auto& [id, entry] : running_) {
    engine_.finish(id);
    entry.job->push(error_item(message, 500, entry.choice));
  }
  running_.clear();
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return !queue_.empty() || !running_.empty() || stopping_ || cancel_all_; });
      if (cancel_all_) {
        for (auto& job : queue_) job->push(error_item("the server is shutting down", 503));
        queue_.clear();
        for (auto& [id, entry] : running_) entry.job->cancel_all();
        cancel_all_ = false;
      }
      if (stopping_ && queue_.empty() && running_.empty()) {
        stats_.queued = 0;
        stats_.running = 0;
        return;
      }
      while (!queue_.empty() && admit(queue_.front())) queue_.pop_front();
      stats_.queued = static_cast<std::int64_t>(queue_.size());
    }
    std::int64_t cancelled = 0;
    for (auto it = running_.begin(); it != running_.end();) {
      if (it->second.job->cancelled(it->second.choice)) {
        engine_.finish(it->first);
        TokenEvent ended;
        ended.finished = true;
        ended.reason = FinishReason::external;
        it->second.job->push(token_item(it->second.choice, ended));
        it = running_.erase(it);
        ++cancelled;
      } else {
        ++it;
      }
    }
    if (cancelled > 0) {
      std::lock_guard lock(mutex_);
      stats_.cancelled += cancelled;
    }
    if (running_.empty()) {
      std::lock_guard lock(mutex_);
      stats_.running = 0;
      stats_.cache_free_tokens = engine_.free_tokens();
      stats_.prefix_cache = engine_.prefix_cache();
      continue;
    }
    const auto batch = static_cast<std::int64_t>(running_.size());
    std::span<const TokenEvent> events;
    try {
      events = engine_.step();
    } catch (const std::exception& e) {
      fail_running(e.what());
      continue;
    }
    for (const TokenEvent& event : events) {
      const auto it = running_.find(event.sequence);
      if (it == running_.end()) continue;
      it->second.job->push(token_item(it->second.choice, event));
      if (event.finished) running_.erase(it);
    }
    batch_rows_.observe(static_cast<double>(batch));
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    if (batch > 1) ++stats_.batched_steps;
    stats_.most_batch = std::max(stats_.most_batch, batch);
    stats_.generated_tokens += static_cast<std::int64_t>(events.size());
    stats_.running = static_cast<std::int64_t>(running_.size());
    stats_.cache_free_tokens = engine_.free_tokens();
    stats_.prefix_cache = engine_.prefix_cache();
    stats_.speculation = engine_.speculation();
    stats_.preemptions = engine_.preemptions();
    stats_.waiting = engine_.waiting();
    if (const RouterCounts* counts = engine_.router_counts()) stats_.router_counts = *counts;
  }
}

}  // namespace dsv3::serve
