#include "cli/reply_printer.h"

#include <string_view>

namespace dsv3::cli {
namespace {

constexpr std::string_view dim = "\x1b[2m";
constexpr std::string_view reset_style = "\x1b[0m";
constexpr std::string_view thinking_prefix = "[thinking] ";

void write(std::FILE* out, std::string_view text) { std::fwrite(text.data(), 1, text.size(), out); }

}  // namespace

ReplyPrinter::ReplyPrinter(std::FILE* out, bool styled) : out_(out), styled_(styled) {}

void ReplyPrinter::switch_to(bool thinking) {
  if (thinking == thinking_) return;
  if (styled_ && thinking_) write(out_, reset_style);
  // The answer starts on a line of its own, after a blank line, like a paragraph.
  if (thinking_ && !at_line_start_) write(out_, "\n");
  if (thinking_ && printed_anything_) write(out_, "\n");
  if (thinking_) at_line_start_ = true;
  if (styled_ && thinking) write(out_, dim);
  thinking_ = thinking;
}

void ReplyPrinter::print(const std::vector<ReplySpan>& spans) {
  for (const ReplySpan& span : spans) {
    switch_to(span.thinking);
    std::string_view text = span.text;
    while (!text.empty()) {
      if (thinking_ && !styled_ && at_line_start_) write(out_, thinking_prefix);
      const std::size_t newline = text.find('\n');
      const std::size_t length = newline == std::string_view::npos ? text.size() : newline + 1;
      write(out_, text.substr(0, length));
      at_line_start_ = newline != std::string_view::npos;
      text.remove_prefix(length);
    }
    printed_anything_ = true;
  }
  std::fflush(out_);
}

void ReplyPrinter::end() {
  if (styled_ && thinking_) write(out_, reset_style);
  if (!at_line_start_ || !printed_anything_) write(out_, "\n");
  std::fflush(out_);
  thinking_ = false;
  at_line_start_ = true;
  printed_anything_ = false;
}

}  // namespace dsv3::cli
