#include "engine/thinking.h"

#include <algorithm>

namespace dsv3 {
namespace {

constexpr std::string_view open_tag = "<think>";
constexpr std::string_view close_tag = "</think>";
constexpr std::string_view whitespace = " \t\r\n";

// The length of the longest end of `text` that is the start of `tag` (without being all of it).
std::size_t partial_tag_length(std::string_view text, std::string_view tag) {
  for (std::size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

}  // namespace

ThinkingSplitter::ThinkingSplitter(bool starts_thinking)
    : state_(starts_thinking ? State::thinking : State::before), trim_leading_(starts_thinking) {}

void ThinkingSplitter::emit(std::string_view text, std::vector<ReplySpan>& spans) {
  if (trim_leading_) {
    const std::size_t start = text.find_first_not_of(whitespace);
    if (start == std::string_view::npos) return;
    text.remove_prefix(start);
    trim_leading_ = false;
  }
  if (text.empty()) return;
  const bool thinking = state_ == State::thinking;
  if (!spans.empty() && spans.back().thinking == thinking)
    spans.back().text += text;
  else
    spans.push_back({std::string(text), thinking});
}

std::vector<ReplySpan> ThinkingSplitter::add(std::string_view text) {
  pending_ += text;
  std::vector<ReplySpan> spans;
  for (;;) {
    if (state_ == State::before) {
      const std::size_t start = pending_.find_first_not_of(whitespace);
      if (start == std::string::npos) return spans;
      const std::string_view rest = std::string_view(pending_).substr(start);
      if (rest.starts_with(open_tag)) {
        pending_.erase(0, start + open_tag.size());
        state_ = State::thinking;
        trim_leading_ = true;
        continue;
      }
      if (open_tag.starts_with(rest)) return spans;
      state_ = State::answer;
      continue;
    }
    if (state_ == State::thinking) {
      const std::size_t close = pending_.find(close_tag);
      if (close != std::string::npos) {
        emit(std::string_view(pending_).substr(0, close), spans);
        pending_.erase(0, close + close_tag.size());
        state_ = State::answer;
        trim_leading_ = true;
        continue;
      }
      const std::size_t resolved = pending_.size() - partial_tag_length(pending_, close_tag);
      emit(std::string_view(pending_).substr(0, resolved), spans);
      pending_.erase(0, resolved);
      return spans;
    }
    emit(pending_, spans);
    pending_.clear();
    return spans;
  }
}

std::vector<ReplySpan> ThinkingSplitter::finish() {
  std::vector<ReplySpan> spans;
  if (state_ == State::before) state_ = State::answer;
  emit(pending_, spans);
  pending_.clear();
  return spans;
}

bool prompt_opens_thinking(std::string_view rendered_prompt) {
  const std::size_t end = rendered_prompt.find_last_not_of(whitespace);
  return end != std::string_view::npos && rendered_prompt.substr(0, end + 1).ends_with(open_tag);
}

}  // namespace dsv3
