#pragma once
// Writes a streamed chat reply, showing an R1-style model's thinking apart from its answer: dim on
// a terminal, and on a pipe or file each thinking line starts with "[thinking] " so that a reader
// (or a script) can tell the two apart without colours.
#include <cstdio>
#include <vector>

#include "engine/thinking.h"

namespace dsv3::cli {

class ReplyPrinter {
 public:
  // `styled`: `out` is a terminal that understands ANSI colours.
  ReplyPrinter(std::FILE* out, bool styled);

  void print(const std::vector<ReplySpan>& spans);
  // Ends the reply: restores the style and finishes the line.
  void end();

 private:
  void switch_to(bool thinking);

  std::FILE* out_;
  bool styled_;
  bool thinking_ = false;
  bool at_line_start_ = true;
  bool printed_anything_ = false;
};

}  // namespace dsv3::cli
