#pragma once
// When a sequence stops, and which of its text the user may see. The generation loop feeds every
// generated token with its decoded text piece; stop strings are matched over the concatenated
// text, so one may span pieces. Text that could still turn out to be the start of a stop string
// is held back until it is resolved, so the user never sees any part of a stop string.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"

namespace dsv3 {

enum class FinishReason { none, stop_token, stop_string, max_tokens, external };

struct StopUpdate {
  std::string text;       // safe to emit now, in order after all earlier updates
  bool finished = false;  // no further tokens may be added
};

class StopChecker {
 public:
  // Stops on params.stop_token_ids and the model's `end_of_sequence_ids`, on params.stop strings,
  // and after params.max_tokens generated tokens.
  explicit StopChecker(const SamplingParams& params, std::span<const std::int32_t> end_of_sequence_ids = {});

  // Records one generated token and its decoded text. A stop token's own text is never emitted;
  // a stop string and everything after it are dropped.
  StopUpdate add(std::int32_t token, std::string_view text);

  // Ends generation for a reason the checker does not see (context full, request cancelled) and
  // returns the text still held back, which can no longer become a stop string.
  std::string finish();

  bool finished() const { return reason_ != FinishReason::none; }
  FinishReason reason() const { return reason_; }
  std::int32_t generated_tokens() const { return generated_tokens_; }
  // The stop string that ended generation; empty unless reason() is stop_string.
  const std::string& matched_stop_string() const { return matched_stop_string_; }

 private:
  std::size_t held_back_length() const;

  std::vector<std::int32_t> stop_token_ids_;
  std::vector<std::string> stop_strings_;
  std::int32_t max_tokens_ = 0;  // 0 = no limit
  std::int32_t generated_tokens_ = 0;
  std::string pending_;  // received but not yet emitted: a possible start of a stop string
  std::string matched_stop_string_;
  FinishReason reason_ = FinishReason::none;
};

}  // namespace dsv3
