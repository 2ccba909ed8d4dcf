#pragma once
// Finds DeepSeek-V3's tool calls in a reply as it streams in:
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
//   ...more calls...<｜tool▁calls▁end｜>
// (the format the model's chat template writes for earlier turns). Text before the block is
// content; text that could still be the start of the block is held back until resolved, as
// StopChecker does for stop strings. A call that does not parse is given back as content, never
// dropped. Also accepted: NAME<｜tool▁sep｜>ARGS without the type and the code fence (V3.1's form).
//
// A reply whose start the server forced into a call (tool_choice "required" or a named function)
// is primed with that forced text: its first call is then a call whatever the model wrote after
// it, even when the arguments are not JSON or the reply was cut short, as OpenAI returns a forced
// call cut by max_tokens with partial arguments.
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

// The text a forced reply starts with: the opening of the block and of its first call, up to and
// including the function's name and the start of its arguments when `name` is given, else up to
// the separator the name follows (the template's format for earlier turns, cut there).
std::string forced_tool_call_prefix(const std::string& name);
// The special tokens that prefix is made of (a tokenizer without them cannot force a call).
std::vector<std::string_view> forced_tool_call_tokens();

class ToolCallParser {
 public:
  // Starts the reply with `prefix` (forced_tool_call_prefix's), which the model did not write:
  // nothing of it is returned as content.
  void force(std::string_view prefix);
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
  bool forced_ = false;
};

// One call's text between <｜tool▁call▁begin｜> and <｜tool▁call▁end｜>; false when it does not parse.
bool parse_tool_call(std::string_view text, ToolCall& call);
// The same for a forced call, which always gives one: the name up to the first line break, the
// arguments what follows (without the code fence), as the model wrote them.
ToolCall parse_forced_tool_call(std::string_view text);

}  // namespace dsv3::serve
