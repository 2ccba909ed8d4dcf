#pragma once
// Finds DeepSeek-V3's tool calls in a reply as it streams in:
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
//   ...more calls...<｜tool▁calls▁end｜>
// (the format the model's chat template writes for earlier turns). Text before the block is
// content; text that could still be the start of the block is held back until resolved, as
// StopChecker does for stop strings. A call that does not parse is given back as content, never
// dropped. Also accepted: NAME<｜tool▁sep｜>ARGS without the type and the code fence (V3.1's form).
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::serve {

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text, as OpenAI's function.arguments
  bool operator==(const ToolCall&) const = default;
};

struct ToolCallUpdate {
  std::string content;          // plain text resolved now, in order
  std::vector<ToolCall> calls;  // calls completed now, in order
};

class ToolCallParser {
 public:
  ToolCallUpdate add(std::string_view text);
  // The end of the reply: what is still held back (an unfinished call as plain text).
  ToolCallUpdate finish();
  // Calls found so far (over the whole reply).
  std::size_t calls() const { return calls_; }

 private:
  void drain(ToolCallUpdate& update, bool at_end);

  enum class State { text, block, done };
  State state_ = State::text;
  std::string pending_;
  std::size_t calls_ = 0;
};

// One call's text between <｜tool▁call▁begin｜> and <｜tool▁call▁end｜>; false when it does not parse.
bool parse_tool_call(std::string_view text, ToolCall& call);

}  // namespace dsv3::serve
