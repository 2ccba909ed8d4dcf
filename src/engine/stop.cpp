#include "engine/stop.h"

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace dsv3 {

StopChecker::StopChecker(const SamplingParams& params, std::span<const std::int32_t> end_of_sequence_ids)
    : stop_token_ids_(params.stop_token_ids), stop_strings_(params.stop), max_tokens_(params.max_tokens.value_or(0)) {
  stop_token_ids_.insert(stop_token_ids_.end(), end_of_sequence_ids.begin(), end_of_sequence_ids.end());
  for (std::size_t i = 0; i < stop_strings_.size(); ++i)
    if (stop_strings_[i].empty()) fail("StopChecker: stop string {} is empty", i);
}

StopUpdate StopChecker::add(std::int32_t token, std::string_view text) {
  if (finished()) fail("StopChecker: token {} added after generation finished", token);
  ++generated_tokens_;
  StopUpdate update;
  if (std::find(stop_token_ids_.begin(), stop_token_ids_.end(), token) != stop_token_ids_.end()) {
    reason_ = FinishReason::stop_token;
    update.text = std::exchange(pending_, {});
    update.finished = true;
    return update;
  }
  pending_.append(text);

  // The held-back text holds no complete stop string, so any match ends in the new piece; the
  // earliest start wins, since everything from there on is cut.
  std::size_t stop_at = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const std::size_t at = pending_.find(stop);
    if (at < stop_at) {
      stop_at = at;
      matched_stop_string_ = stop;
    }
  }
  if (stop_at != std::string::npos) {
    reason_ = FinishReason::stop_string;
    update.text = pending_.substr(0, stop_at);
    update.finished = true;
    pending_.clear();
    return update;
  }
  if (max_tokens_ > 0 && generated_tokens_ >= max_tokens_) {
    reason_ = FinishReason::max_tokens;
    update.text = std::exchange(pending_, {});
    update.finished = true;
    return update;
  }
  const std::size_t held = held_back_length();
  update.text = pending_.substr(0, pending_.size() - held);
  pending_.erase(0, pending_.size() - held);
  return update;
}

std::string StopChecker::finish() {
  if (!finished()) reason_ = FinishReason::external;
  return std::exchange(pending_, {});
}

// The longest suffix of the pending text that is a proper prefix of some stop string.
std::size_t StopChecker::held_back_length() const {
  std::size_t longest = 0;
  const std::string_view pending = pending_;
  for (const std::string& stop : stop_strings_) {
    for (std::size_t length = std::min(stop.size() - 1, pending.size()); length > longest; --length) {
      if (pending.substr(pending.size() - length) == std::string_view(stop).substr(0, length)) {
        longest = length;
        break;
      }
    }
  }
  return longest;
}

}  // namespace dsv3
