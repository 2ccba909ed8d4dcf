// The filters on text and numbers (trim, upper, replace, int, round, truncate, indent...), and default.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

std::string html_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  check_string_size(out.size());
  return out;
}

// Python's int(str): optional sign, digits with single underscores between them, spaces around.
bool parse_python_int(std::string text, int base, std::int64_t& out, bool& too_big) {
  too_big = false;
  std::size_t begin = 0, end = text.size();
  while (begin < end && is_python_space(text[begin])) ++begin;
  while (end > begin && is_python_space(text[end - 1])) --end;
  text = text.substr(begin, end - begin);
  bool negative = false;
  std::size_t i = 0;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';
  if (base == 16 && text.size() >= i + 2 && text[i] == '0' && (text[i + 1] == 'x' || text[i + 1] == 'X')) i += 2;
  if (base == 8 && text.size() >= i + 2 && text[i] == '0' && (text[i + 1] == 'o' || text[i + 1] == 'O')) i += 2;
  if (base == 2 && text.size() >= i + 2 && text[i] == '0' && (text[i + 1] == 'b' || text[i + 1] == 'B')) i += 2;
  if (i >= text.size()) return false;
  unsigned __int128 magnitude = 0;
  bool previous_digit = false;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '_') {
      if (!previous_digit || i + 1 >= text.size()) return false;
      previous_digit = false;
      continue;
    }
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'z') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'Z') digit = c - 'A' + 10;
    else return false;
    if (digit >= base) return false;
    magnitude = magnitude * static_cast<unsigned>(base) + static_cast<unsigned>(digit);
    if (magnitude > (static_cast<unsigned __int128>(1) << 64)) too_big = true;
    previous_digit = true;
  }
  if (too_big) return true;
  const unsigned __int128 limit = negative ? (static_cast<unsigned __int128>(1) << 63)
                                           : (static_cast<unsigned __int128>(1) << 63) - 1;
  if (magnitude > limit) {
    too_big = true;
    return true;
  }
  out = negative ? static_cast<std::int64_t>(-static_cast<__int128>(magnitude)) : static_cast<std::int64_t>(magnitude);
  return true;
}

bool parse_python_float(const std::string& raw, double& out) {
  std::size_t begin = 0, end = raw.size();
  while (begin < end && is_python_space(raw[begin])) ++begin;
  while (end > begin && is_python_space(raw[end - 1])) --end;
  std::string text;
  for (std::size_t i = begin; i < end; ++i) {
    const char c = raw[i];
    if (c == '_') {
      if (i == begin || i + 1 == end || !std::isdigit(static_cast<unsigned char>(raw[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(raw[i + 1])))
        return false;
      continue;
    }
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-' ||
          std::isalpha(static_cast<unsigned char>(c))))
      return false;
    text += c;
  }
  if (text.empty()) return false;
  std::string lower = change_case(text, Case::lower);
  std::string unsigned_part = lower[0] == '+' || lower[0] == '-' ? lower.substr(1) : lower;
  if (unsigned_part == "inf" || unsigned_part == "infinity" || unsigned_part == "nan") {
    out = unsigned_part == "nan" ? std::nan("") : std::numeric_limits<double>::infinity();
    if (lower[0] == '-') out = -out;
    return true;
  }
  if (unsigned_part.find_first_of("abcdfghijklmnopqrstuvwxyz") != std::string::npos) return false;  // not hex etc.
  char* parse_end = nullptr;
  out = std::strtod(text.c_str(), &parse_end);
  return parse_end == text.c_str() + text.size();
}

}  // namespace

void add_text_filters(FilterTable& table) {
  using namespace filter_parameters;
  table.insert({
      {"trim", [](I&, const Value& in, const A& a, const K& k) {
         return Value(strip(to_display_string(in), argument(a, k, 0, "chars"), true, true));
       }},
      {"default", [](I&, const Value& in, const A& a, const K& k) {
         const bool boolean = truthy(argument(a, k, 1, "boolean", Value(false)));
         if (in.undefined || (boolean && !truthy(in))) return argument(a, k, 0, "default_value", Value(""));
         return in;
       }},
      {"upper", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::upper)); }},
      {"lower", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::lower)); }},
      {"capitalize", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::capitalize)); }},
      {"title", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::title)); }},
      {"string", [](I&, const Value& in, const A&, const K&) { return Value(to_display_string(in)); }},
      {"safe", [](I&, const Value& in, const A&, const K&) { return in; }},
      {"escape", [](I&, const Value& in, const A&, const K&) { return Value(html_escape(to_display_string(in))); }},
      {"int", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"default", "base"});
         const Value fallback = argument(a, k, 0, "default", Value(0));
         const std::int64_t base = expect_integer(argument(a, k, 1, "base", Value(10)), "base");
         if (!in.is_data()) return fallback;
         const json& d = in.data();
         if (d.is_number_float()) {
           const double value = d.get<double>();
           if (std::isnan(value) || std::isinf(value)) return fallback;  // Jinja2 catches the error
           if (std::fabs(value) >= 9.223372036854775807e18) builtin_error("integer does not fit in 64 bits");
           return Value(static_cast<std::int64_t>(value));
         }
         if (d.is_number_unsigned()) return in;
         if (d.is_number() || d.is_boolean()) return Value(checked_integer(d, "value"));
         if (d.is_string()) {
           std::int64_t value = 0;
           bool too_big = false;
           if (base >= 2 && base <= 36 && parse_python_int(d.get<std::string>(), static_cast<int>(base), value, too_big)) {
             if (too_big) builtin_error("integer does not fit in 64 bits");
             return Value(value);
           }
           double as_float = 0;  // Jinja2 falls back to int(float(value))
           if (parse_python_float(d.get<std::string>(), as_float)) {
             if (std::isnan(as_float) || std::isinf(as_float)) return fallback;
             if (std::fabs(as_float) >= 9.223372036854775807e18) builtin_error("integer does not fit in 64 bits");
             return Value(static_cast<std::int64_t>(as_float));
           }
         }
         return fallback;
       }},
      {"float", [](I&, const Value& in, const A& a, const K& k) {
         const Value fallback = argument(a, k, 0, "default", Value(0.0));
         if (!in.is_data()) return fallback;
         const json& d = in.data();
         if (d.is_number() || d.is_boolean()) return Value(to_double(in, "value"));
         double value = 0;
         if (d.is_string() && parse_python_float(d.get<std::string>(), value)) return Value(value);
         return fallback;
       }},
      {"abs", [](I&, const Value& in, const A&, const K&) {
         if (in.is_data() && in.data().is_number_float()) return Value(std::fabs(in.data().get<double>()));
         if (!in.is_data() || !(in.data().is_number() || in.data().is_boolean())) builtin_error("bad operand type for abs(): '" + type_name(in) + "'");
         const std::int64_t value = checked_integer(in.data(), "value");
         if (value == std::numeric_limits<std::int64_t>::min()) builtin_error("integer does not fit in 64 bits");
         return Value(value < 0 ? -value : value);
       }},
      {"round", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"precision", "method"});
         const std::int64_t precision = expect_integer(argument(a, k, 0, "precision", Value(0)), "precision");
         const std::string method = expect_string(argument(a, k, 1, "method", Value("common")), "method").get<std::string>();
         if (method != "common" && method != "ceil" && method != "floor") builtin_error("method must be common, ceil or floor");
         const double value = to_double(in, "value");
         if (precision < -308 || precision > 308) builtin_error("precision out of range");
         const double scale = std::pow(10.0, static_cast<double>(precision));
         double result;
         if (method == "ceil") result = std::ceil(value * scale) / scale;
         else if (method == "floor") result = std::floor(value * scale) / scale;
         else {
           // Python's round(): to nearest, ties to even, on the decimal value.
           char buffer[64];
           std::snprintf(buffer, sizeof buffer, "%.*f", static_cast<int>(std::clamp<std::int64_t>(precision, 0, 30)), value);
           result = precision >= 0 ? std::strtod(buffer, nullptr) : std::nearbyint(value * scale) / scale;
         }
         if (in.is_data() && (in.data().is_number_integer() || in.data().is_boolean()) && method == "common" && precision >= 0)
           return in;  // round() of an int stays an int
         return Value(result);
       }},
      {"replace", [](I&, const Value& in, const A& a, const K& k) {
         const Value count = argument(a, k, 2, "count", Value(-1));
         const Value old_value = argument(a, k, 0, "old");
         const Value new_value = argument(a, k, 1, "new");
         return Value(replace(to_display_string(in), to_display_string(old_value), to_display_string(new_value),
                              expect_integer(count, "count")));
       }},
      {"center", [](I&, const Value& in, const A& a, const K& k) {
         return Value(pad_center(to_display_string(in), expect_integer(argument(a, k, 0, "width", Value(80)), "width"), " ", 0));
       }},
      {"wordcount", [](I&, const Value& in, const A&, const K&) {
         std::size_t count = 0;
         bool in_word = false;
         for (const char c : to_display_string(in)) {
           const bool word = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || static_cast<unsigned char>(c) >= 0x80;
           if (word && !in_word) ++count;
           in_word = word;
         }
         return Value(count);
       }},
      {"truncate", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"length", "killwords", "end", "leeway"});
         const std::string text = to_display_string(in);
         const std::int64_t length = expect_integer(argument(a, k, 0, "length", Value(255)), "length");
         const bool killwords = truthy(argument(a, k, 1, "killwords", Value(false)));
         const std::string end = to_display_string(argument(a, k, 2, "end", Value("...")));
         const std::int64_t leeway = expect_integer(argument(a, k, 3, "leeway", Value(5)), "leeway");
         const auto end_length = static_cast<std::int64_t>(utf8_length(end));
         if (length < end_length) builtin_error("expected length >= " + std::to_string(end_length));
         if (leeway < 0) builtin_error("expected leeway >= 0");
         if (static_cast<std::int64_t>(utf8_length(text)) <= length + leeway) return Value(text);
         std::string head = text.substr(0, utf8_offset(text, static_cast<std::size_t>(length - end_length)));
         if (killwords) return Value(head + end);
         const std::size_t space = head.rfind(' ');
         if (space != std::string::npos) head.erase(space);
         return Value(head + end);
       }},
      {"format", [](I&, const Value& in, const A& a, const K& k) {
         if (!a.empty() && !k.empty()) builtin_error("can't handle positional and keyword arguments at the same time");
         return Value(percent_format_impl(to_display_string(in), a, k));
       }},
      {"indent", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"width", "first", "blank"});
         const Value width = argument(a, k, 0, "width", Value(4));
         std::string pad;
         if (width.is_data() && width.data().is_string()) {
           pad = width.data().get<std::string>();
         } else {
           const std::int64_t spaces = expect_integer(width, "width");
           if (spaces > 1024) builtin_error("indent wider than 1024");
           pad.assign(static_cast<std::size_t>(std::max<std::int64_t>(spaces, 0)), ' ');
         }
         const bool first = truthy(argument(a, k, 1, "first", Value(false)));
         const bool blank = truthy(argument(a, k, 2, "blank", Value(false)));
         std::string text = to_display_string(in);
         // Jinja2 splits on line ends, indents the lines after the first (blank ones only with
         // blank=True), and keeps the text's own trailing newline.
         std::vector<std::string> lines;
         std::size_t start = 0;
         while (true) {
           const std::size_t newline = text.find('\n', start);
           if (newline == std::string::npos) {
             lines.push_back(text.substr(start));
             break;
           }
           lines.push_back(text.substr(start, newline - start));
           start = newline + 1;
         }
         std::string out;
         for (std::size_t i = 0; i < lines.size(); ++i) {
           if (i > 0) out += '\n';
           const bool last_empty = i + 1 == lines.size() && lines[i].empty() && i > 0;
           if (last_empty) break;
           const bool indent_line = (i > 0 || first) && (blank || !lines[i].empty());
           if (indent_line) out += pad;
           out += lines[i];
           check_string_size(out.size());
         }
         return Value(out);
       }},
  });
}

}  // namespace dsv3::jinja
