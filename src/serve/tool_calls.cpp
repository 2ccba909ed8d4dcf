#include "serve/tool_calls.h"

#include <nlohmann/json.hpp>

namespace dsv3::serve {
namespace {

constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kSeparator = "<｜tool▁sep｜>";

constexpr std::string_view kWhitespace = " \t\r\n";

std::string_view trim(std::string_view text) {
  const std::size_t first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kWhitespace) - first + 1);
}

// The length of the longest end of `text` that is a proper start of `marker`.
std::size_t partial_marker(std::string_view text, std::string_view marker) {
  for (std::size_t length = std::min(text.size(), marker.size() - 1); length > 0; --length)
    if (marker.starts_with(text.substr(text.size() - length))) return length;
  return 0;
}

}  // namespace

bool parse_tool_call(std::string_view text, ToolCall& call) {
  const std::size_t separator = text.find(kSeparator);
  if (separator == std::string_view::npos) return false;
  const std::string_view head = trim(text.substr(0, separator));
  const std::string_view rest = text.substr(separator + kSeparator.size());
  std::string_view name, arguments;
  const std::size_t newline = rest.find('\n');
  const std::string_view after_name = newline == std::string_view::npos ? std::string_view() : trim(rest.substr(newline));
  if (newline != std::string_view::npos && after_name.starts_with("```")) {
    // TYPE<sep>NAME\n```json\nARGS\n```
    name = trim(rest.substr(0, newline));
    std::string_view fenced = after_name.substr(3);
    if (fenced.starts_with("json")) fenced.remove_prefix(4);
    fenced = trim(fenced);
    if (!fenced.ends_with("```")) return false;
    arguments = trim(fenced.substr(0, fenced.size() - 3));
  } else {
    // NAME<sep>ARGS
    name = head;
    arguments = trim(rest);
  }
  if (name.empty() || name.find_first_of(kWhitespace) != std::string_view::npos) return false;
  const nlohmann::json parsed = nlohmann::json::parse(arguments, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) return false;
  call.name = std::string(name);
  call.arguments = std::string(arguments);
  return true;
}

ToolCall parse_forced_tool_call(std::string_view text) {
  const std::size_t separator = text.find(kSeparator);
  const std::string_view rest = separator == std::string_view::npos ? text : text.substr(separator + kSeparator.size());
  const std::size_t newline = rest.find('\n');
  std::string_view arguments = newline == std::string_view::npos ? std::string_view() : trim(rest.substr(newline));
  if (arguments.starts_with("```")) {
    arguments.remove_prefix(3);
    if (arguments.starts_with("json")) arguments.remove_prefix(4);
    arguments = trim(arguments);
  }
  if (arguments.ends_with("```")) arguments = trim(arguments.substr(0, arguments.size() - 3));
  return {std::string(trim(rest.substr(0, newline))), std::string(arguments)};
}

std::string forced_tool_call_prefix(const std::string& name) {
  std::string prefix = std::string(kCallsBegin) + std::string(kCallBegin) + "function" + std::string(kSeparator);
  if (!name.empty()) prefix += name + "\n```json\n";
  return prefix;
}

std::vector<std::string_view> forced_tool_call_tokens() { return {kCallsBegin, kCallBegin, kSeparator}; }

void ToolCallParser::force(std::string_view prefix) {
  forced_ = true;
  pending_ += prefix;
  ToolCallUpdate nothing;  // the prefix opens the block: no content, and no call is complete yet
  drain(nothing, false);
}

ToolCallUpdate ToolCallParser::add(std::string_view text) {
  ToolCallUpdate update;
  pending_ += text;
  drain(update, false);
  return update;
}

ToolCallUpdate ToolCallParser::finish() {
  ToolCallUpdate update;
  drain(update, true);
  return update;
}

void ToolCallParser::drain(ToolCallUpdate& update, bool at_end) {
  for (;;) {
    if (state_ == State::text) {
      const std::size_t begin = pending_.find(kCallsBegin);
      if (begin != std::string::npos) {
        update.content += pending_.substr(0, begin);
        pending_.erase(0, begin + kCallsBegin.size());
        state_ = State::block;
        continue;
      }
      const std::size_t held = at_end ? 0 : partial_marker(pending_, kCallsBegin);
      update.content += pending_.substr(0, pending_.size() - held);
      pending_.erase(0, pending_.size() - held);
      return;
    }
    if (state_ == State::done) {
      update.content += pending_;
      pending_.clear();
      return;
    }
    // In the block: calls, separated by whitespace, then the end of the block.
    const std::size_t start = std::min(pending_.find_first_not_of(kWhitespace), pending_.size());
    const std::string_view next = std::string_view(pending_).substr(start);
    if (next.starts_with(kCallsEnd)) {
      pending_.erase(0, start + kCallsEnd.size());
      state_ = State::done;
      continue;
    }
    if (next.starts_with(kCallBegin)) {
      const std::size_t end = next.find(kCallEnd);
      const bool forced_call = forced_ && calls_ == 0;
      if (end == std::string_view::npos) {
        if (!at_end) return;  // the call is still coming
        if (forced_call) {  // cut short: still the call the request forced
          update.calls.push_back(parse_forced_tool_call(next.substr(kCallBegin.size())));
          ++calls_;
          pending_.clear();
          return;
        }
        update.content += pending_;  // an unfinished call, as text
        pending_.clear();
        return;
      }
      ToolCall call;
      const std::string_view inner = next.substr(kCallBegin.size(), end - kCallBegin.size());
      const bool parsed = parse_tool_call(inner, call);
      if (parsed || forced_call) {
        update.calls.push_back(parsed ? std::move(call) : parse_forced_tool_call(inner));
        ++calls_;
      } else {
        update.content += std::string(next.substr(0, end + kCallEnd.size()));
      }
      pending_.erase(0, start + end + kCallEnd.size());
      continue;
    }
    if (!at_end && (kCallBegin.starts_with(next) || kCallsEnd.starts_with(next))) return;  // undecided yet
    // Not a call: the rest of the reply is text.
    state_ = State::done;
  }
}

}  // namespace dsv3::serve
