// Template text -> tokens. Whitespace control is applied here, to the text runs, so the parser
// and evaluator never see it: `{%-`/`{{-`/`{#-` strip all whitespace before the tag, `-%}`/`-}}`/
// `-#}` strip all whitespace after it; with trim_blocks a block or comment tag also eats the one
// newline right after it, and with lstrip_blocks the spaces and tabs between a line start and a
// block or comment tag go (`{%+` opts out), as in Jinja2's own lexer.
#include <cctype>
#include <string>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/utf8.h"

namespace dsv3::jinja {

void fail_at(std::string_view source, Offset offset, const std::string& message) {
  std::size_t line = 1;
  std::size_t column = 1;
  for (std::size_t i = 0; i < offset && i < source.size(); ++i) {
    const auto byte = static_cast<unsigned char>(source[i]);
    if (byte == '\n') {
      ++line;
      column = 1;
    } else if ((byte & 0xC0) != 0x80) {  // count characters, not UTF-8 continuation bytes
      ++column;
    }
  }
  fail("chat template line {}, column {}: {}", line, column, message);
}

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

class Lexer {
 public:
  Lexer(std::string_view source, LexerOptions options) : source_(source), options_(options) {}

  std::vector<Token> run() {
    std::size_t position = 0;
    bool strip_next_text = false;  // the previous tag ended with `-`
    bool trim_next_newline = false;  // the previous tag was a block/comment and trim_blocks is on
    while (position < source_.size()) {
      const std::size_t tag = find_tag(position);
      std::string text(source_.substr(position, tag - position));
      if (strip_next_text) {
        std::size_t first = 0;
        while (first < text.size() && is_space(text[first])) ++first;
        text.erase(0, first);
      } else if (trim_next_newline && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
      }
      strip_next_text = trim_next_newline = false;
      if (tag == source_.size()) {
        emit_text(std::move(text), position);
        break;
      }
      const char kind = source_[tag + 1];  // '{', '%' or '#'
      std::size_t inner = tag + 2;
      const bool block_like = kind == '%' || kind == '#';
      if (inner < source_.size() && source_[inner] == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
        ++inner;
      } else if (inner < source_.size() && source_[inner] == '+' && block_like) {
        ++inner;  // `{%+` keeps the leading whitespace even with lstrip_blocks
      } else if (block_like && options_.lstrip_blocks) {
        lstrip_line_end(text, tag);
      }
      emit_text(std::move(text), position);
      bool stripped_after = false;
      if (kind == '#') {
        position = skip_comment(tag, inner, stripped_after);
      } else {
        position = lex_tag(tag, inner, kind == '%', stripped_after);
        if (kind == '%') position = lex_raw_body(position, stripped_after);
      }
      strip_next_text = stripped_after;
      trim_next_newline = block_like && options_.trim_blocks;
    }
    tokens_.push_back({TokenKind::end_of_input, "", source_.size()});
    return std::move(tokens_);
  }

 private:
  std::size_t find_tag(std::size_t from) const {
    for (std::size_t i = from; i + 1 < source_.size(); ++i) {
      if (source_[i] == '{' && (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#'))
        return i;
    }
    return source_.size();
  }

  // Removes trailing spaces/tabs when only they stand between a line start and the tag at `tag`.
  // Judged on the source, not on `text`, since trim_blocks may already have eaten that newline.
  void lstrip_line_end(std::string& text, std::size_t tag) const {
    std::size_t start = tag;
    while (start > 0 && (source_[start - 1] == ' ' || source_[start - 1] == '\t')) --start;
    if (start > 0 && source_[start - 1] != '\n') return;
    std::size_t cut = text.size();
    while (cut > 0 && (text[cut - 1] == ' ' || text[cut - 1] == '\t')) --cut;
    text.erase(cut);
  }

  // After `{% raw %}`: the text up to `{% endraw %}` is literal. Returns where lexing goes on.
  std::size_t lex_raw_body(std::size_t position, bool& stripped_after) {
    const std::size_t n = tokens_.size();
    if (n < 3 || tokens_[n - 3].kind != TokenKind::block_begin || tokens_[n - 2].kind != TokenKind::name ||
        tokens_[n - 2].text != "raw" || tokens_[n - 1].kind != TokenKind::block_end)
      return position;
    const Offset opened = tokens_[n - 3].where;
    tokens_.resize(n - 3);
    for (std::size_t at = source_.find("{%", position); at != std::string_view::npos;
         at = source_.find("{%", at + 2)) {
      std::size_t word = at + 2;
      const bool strip_before = word < source_.size() && source_[word] == '-';
      if (strip_before || (word < source_.size() && source_[word] == '+')) ++word;
      while (word < source_.size() && is_space(source_[word])) ++word;
      if (source_.substr(word, 6) != "endraw") continue;
      std::size_t close = word + 6;
      while (close < source_.size() && is_space(source_[close])) ++close;
      const bool strip_after = source_.substr(close, 3) == "-%}";
      if (!strip_after && source_.substr(close, 2) != "%}") continue;
      std::string text(source_.substr(position, at - position));
      if (stripped_after) {
        std::size_t first = 0;
        while (first < text.size() && is_space(text[first])) ++first;
        text.erase(0, first);
      }
      if (strip_before) {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (options_.lstrip_blocks) {
        lstrip_line_end(text, at);
      }
      emit_text(std::move(text), position);
      stripped_after = strip_after;
      return close + (strip_after ? 3 : 2);
    }
    fail_at(source_, opened, "'{% raw %}' is never closed with '{% endraw %}'");
  }

  void emit_text(std::string text, Offset where) {
    if (!text.empty()) tokens_.push_back({TokenKind::text, std::move(text), where});
  }

  std::size_t skip_comment(std::size_t tag, std::size_t inner, bool& stripped_after) {
    const std::size_t end = source_.find("#}", inner);
    if (end == std::string_view::npos) fail_at(source_, tag, "comment '{#' is never closed with '#}'");
    stripped_after = end > inner && source_[end - 1] == '-';
    return end + 2;
  }

  std::size_t lex_tag(std::size_t tag, std::size_t position, bool is_block, bool& stripped_after) {
    tokens_.push_back({is_block ? TokenKind::block_begin : TokenKind::variable_begin,
                       is_block ? "{%" : "{{", tag});
    const char closer = is_block ? '%' : '}';
    int brackets = 0;  // `}}` inside a dict literal like {{ {'a': {'b': 1}} }} is not the end
    while (true) {
      while (position < source_.size() && is_space(source_[position])) ++position;
      if (position >= source_.size())
        fail_at(source_, tag, is_block ? "block '{%' is never closed with '%}'"
                                       : "expression '{{' is never closed with '}}'");
      const char c = source_[position];
      const bool closes = position + 1 < source_.size() && c == closer && source_[position + 1] == '}';
      const bool dash_closes = c == '-' && position + 2 < source_.size() &&
                               source_[position + 1] == closer && source_[position + 2] == '}';
      if (brackets == 0 && (closes || dash_closes)) {
        stripped_after = dash_closes;
        const std::size_t end = position + (dash_closes ? 3 : 2);
        tokens_.push_back({is_block ? TokenKind::block_end : TokenKind::variable_end,
                           is_block ? "%}" : "}}", position});
        return end;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        std::size_t end = position;
        while (end < source_.size() &&
               (std::isalnum(static_cast<unsigned char>(source_[end])) || source_[end] == '_'))
          ++end;
        tokens_.push_back({TokenKind::name, std::string(source_.substr(position, end - position)), position});
        position = end;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        position = lex_number(position);
      } else if (c == '\'' || c == '"') {
        position = lex_string(position);
      } else {
        position = lex_operator(position, brackets);
      }
    }
  }

  std::size_t lex_number(std::size_t start) {
    std::size_t end = start;
    auto digits = [&] {
      while (end < source_.size() && (std::isdigit(static_cast<unsigned char>(source_[end])) || source_[end] == '_'))
        ++end;
    };
    digits();
    bool floating = false;
    if (end + 1 < source_.size() && source_[end] == '.' &&
        std::isdigit(static_cast<unsigned char>(source_[end + 1]))) {
      floating = true;
      ++end;
      digits();
    }
    if (end < source_.size() && (source_[end] == 'e' || source_[end] == 'E')) {
      std::size_t exponent = end + 1;
      if (exponent < source_.size() && (source_[exponent] == '+' || source_[exponent] == '-')) ++exponent;
      if (exponent < source_.size() && std::isdigit(static_cast<unsigned char>(source_[exponent]))) {
        floating = true;
        end = exponent;
        digits();
      }
    }
    std::string spelling;
    for (std::size_t i = start; i < end; ++i)
      if (source_[i] != '_') spelling += source_[i];
    tokens_.push_back({floating ? TokenKind::floating : TokenKind::integer, spelling, start});
    return end;
  }

  std::size_t lex_string(std::size_t start) {
    const char quote = source_[start];
    std::string value;
    std::size_t i = start + 1;
    while (true) {
      if (i >= source_.size()) fail_at(source_, start, "string literal is never closed");
      const char c = source_[i];
      if (c == quote) break;
      if (c != '\\' || i + 1 >= source_.size()) {
        value += c;
        ++i;
        continue;
      }
      const char escaped = source_[i + 1];
      i += 2;
      switch (escaped) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;  // a backslash-newline continues the literal, as in Python
        case 'x': tokenizer_internal::append_utf8(static_cast<char32_t>(hex_escape(start, i, 2)), value); break;
        case 'u': tokenizer_internal::append_utf8(static_cast<char32_t>(unicode_escape(start, i, 4)), value); break;
        case 'U': tokenizer_internal::append_utf8(static_cast<char32_t>(unicode_escape(start, i, 8)), value); break;
        default:
          if (escaped >= '0' && escaped <= '7') {  // up to three octal digits, as in Python
            unsigned code = static_cast<unsigned>(escaped - '0');
            for (int digits = 1; digits < 3 && i < source_.size() && source_[i] >= '0' && source_[i] <= '7'; ++digits)
              code = code * 8 + static_cast<unsigned>(source_[i++] - '0');
            tokenizer_internal::append_utf8(static_cast<char32_t>(code), value);
          } else {  // Python keeps unknown escapes verbatim
            value += '\\';
            value += escaped;
          }
      }
    }
    tokens_.push_back({TokenKind::string, std::move(value), start});
    return i + 1;
  }

  // Reads `digits` hex digits at `i` (just after the escape letter) and advances past them.
  unsigned hex_escape(std::size_t literal, std::size_t& i, int digits) {
    unsigned code = 0;
    for (int d = 0; d < digits; ++d, ++i) {
      const char c = i < source_.size() ? source_[i] : '\0';
      int nibble;
      if (c >= '0' && c <= '9') nibble = c - '0';
      else if (c >= 'a' && c <= 'f') nibble = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') nibble = c - 'A' + 10;
      else fail_at(source_, literal, "truncated \\x, \\u or \\U escape in string literal");
      code = code * 16 + static_cast<unsigned>(nibble);
    }
    return code;
  }

  // \\uXXXX (with a following \\uXXXX for a surrogate pair) or \\UXXXXXXXX.
  unsigned unicode_escape(std::size_t literal, std::size_t& i, int digits) {
    unsigned code = hex_escape(literal, i, digits);
    if (code >= 0xD800 && code < 0xDC00 && source_.substr(i, 2) == "\\u") {
      std::size_t after = i + 2;
      const unsigned low = hex_escape(literal, after, 4);
      if (low >= 0xDC00 && low < 0xE000) {
        i = after;
        return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
      }
    }
    if ((code >= 0xD800 && code < 0xE000) || code > 0x10FFFF)
      fail_at(source_, literal, "escape in string literal is not a Unicode character");
    return code;
  }


  std::size_t lex_operator(std::size_t start, int& brackets) {
    static const char* const two_char[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : two_char) {
      if (source_.substr(start, 2) == op) {
        tokens_.push_back({TokenKind::op, op, start});
        return start + 2;
      }
    }
    const char c = source_[start];
    static const std::string one_char = "+-*/%~<>=()[]{},.:|";
    if (one_char.find(c) == std::string::npos)
      fail_at(source_, start, std::string("unexpected character '") + c + "'");
    if (c == '(' || c == '[' || c == '{') ++brackets;
    if ((c == ')' || c == ']' || c == '}') && brackets > 0) --brackets;
    tokens_.push_back({TokenKind::op, std::string(1, c), start});
    return start + 1;
  }

  std::string_view source_;
  LexerOptions options_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, LexerOptions options) {
  if (source.size() > Limits::template_bytes)
    fail_at(source, Limits::template_bytes,
            "the template is longer than " + std::to_string(Limits::template_bytes) + " bytes");
  return Lexer(source, options).run();
}

}  // namespace dsv3::jinja
