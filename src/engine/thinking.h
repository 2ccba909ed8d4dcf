#pragma once
// Separates the reasoning of an R1-style reply ("<think>…</think>" before the answer) from the
// answer while the reply streams in. Tags may arrive split across tokens ("<th" + "ink>"), so text
// that could still be the start of a tag is held back until it is resolved, as StopChecker does
// for stop strings. Only one thinking block is recognised, and only at the start of the reply
// (after whitespace): a "<think>" later in an answer is text the model is writing about.
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

struct ReplySpan {
  std::string text;
  bool thinking = false;
  bool operator==(const ReplySpan&) const = default;
};

class ThinkingSplitter {
 public:
  // `starts_thinking`: the prompt already opened the block (templates that end the generation
  // prompt with "<think>\n", as later R1 releases do), so the reply starts inside it.
  explicit ThinkingSplitter(bool starts_thinking = false);

  // The spans of `text` that are resolved now, tags removed, in order. Whitespace at the start of
  // the thinking block and of an answer that follows one is dropped (R1 writes "\n" and "\n\n"
  // there as layout).
  std::vector<ReplySpan> add(std::string_view text);
  // The end of the reply: whatever was held back, as text.
  std::vector<ReplySpan> finish();

  bool thinking() const { return state_ == State::thinking; }

 private:
  enum class State { before, thinking, answer };
  void emit(std::string_view text, std::vector<ReplySpan>& spans);

  State state_;
  bool trim_leading_ = false;  // the current section has produced no text yet
  std::string pending_;
};

// Whether a rendered prompt ends inside an open thinking block ("...<think>" plus whitespace).
bool prompt_opens_thinking(std::string_view rendered_prompt);

}  // namespace dsv3
