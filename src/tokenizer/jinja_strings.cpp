// Python's str algorithms the filters and methods share: case mapping, strip, replace, padding, % formatting.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "tokenizer/jinja_internal.h"
#include "tokenizer/utf8.h"

namespace dsv3::jinja {

// Decodes one UTF-8 character at `i` (advancing it); invalid bytes come back as themselves.
std::uint32_t next_code_point(const std::string& text, std::size_t& i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  const std::size_t length = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (length == 1 || i + length > text.size()) {
    ++i;
    return lead;
  }
  std::uint32_t code = lead & (0x7F >> length);
  for (std::size_t k = 1; k < length; ++k) code = (code << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
  i += length;
  return code;
}

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic: enough for the
// text chat templates hold without a Unicode library (Python also maps 'ß' to "SS").
std::uint32_t to_upper(std::uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17F) {
    const bool odd_lower = (c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177);
    if (odd_lower) return (c & 1) ? c - 1 : c;
    return (c & 1) ? c : c - 1;  // 0x139..0x148 and 0x179..0x17E pair odd upper with even lower
  }
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

std::uint32_t to_lower(std::uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17F) {
    const bool odd_lower = (c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177);
    if (odd_lower) return (c & 1) ? c : c + 1;
    return (c & 1) ? c + 1 : c;
  }
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

bool is_cased_letter(std::uint32_t c) { return to_upper(c) != c || to_lower(c) != c || c == 0xDF; }

std::string change_case(const std::string& text, Case mode) {
  std::string out;
  out.reserve(text.size());
  bool previous_cased = false;
  bool first = true;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t start = i;
    const std::uint32_t c = next_code_point(text, i);
    if (c >= 0x80 && c < 0x100 && i - start == 1) {  // a stray byte stays as it is
      out += text[start];
      previous_cased = false;
      first = false;
      continue;
    }
    bool upper = false;
    switch (mode) {
      case Case::upper: upper = true; break;
      case Case::lower: upper = false; break;
      case Case::title: upper = !previous_cased; break;
      case Case::capitalize: upper = first; break;
      case Case::swap: upper = to_lower(c) == c && to_upper(c) != c; break;
    }
    const bool cased = is_cased_letter(c);
    if (mode == Case::swap && !cased) {
      tokenizer_internal::append_utf8(c, out);
    } else if (upper && c == 0xDF) {
      out += mode == Case::upper || mode == Case::swap ? "SS" : "Ss";
    } else {
      tokenizer_internal::append_utf8(upper ? to_upper(c) : to_lower(c), out);
    }
    previous_cased = cased;
    first = false;
  }
  return out;
}

bool is_python_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == '\x1c' || c == '\x1d' ||
         c == '\x1e' || c == '\x1f';
}

// Python's str.isspace() for one character: ASCII whitespace, the separators \x1c-\x1f and
// Unicode's spaces (no-break space, the U+2000 block, ideographic space, line separators...).
bool is_space_character(const std::string& c) {
  if (c.size() == 1) return is_python_space(c[0]);
  std::size_t i = 0;
  const std::uint32_t code = next_code_point(c, i);
  return code == 0x85 || code == 0xA0 || code == 0x1680 || (code >= 0x2000 && code <= 0x200A) || code == 0x2028 ||
         code == 0x2029 || code == 0x202F || code == 0x205F || code == 0x3000;
}

std::string strip(const std::string& text, const Value& chars, bool left, bool right) {
  const bool whitespace = chars.undefined || (chars.is_data() && chars.data().is_null());
  std::vector<std::string> set;
  if (!whitespace) set = utf8_characters(expect_string(chars, "chars").get<std::string>());
  auto strips = [&](const std::string& c) {
    if (whitespace) return is_space_character(c);
    return std::find(set.begin(), set.end(), c) != set.end();
  };
  auto character_at = [&](std::size_t i) {  // the character starting at byte i
    std::size_t end = i + 1;
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    return text.substr(i, end - i);
  };
  std::size_t begin = 0;
  std::size_t end = text.size();
  if (left) {
    while (begin < end) {
      const std::string c = character_at(begin);
      if (!strips(c)) break;
      begin += c.size();
    }
  }
  if (right) {
    while (end > begin) {
      std::size_t start = end - 1;
      while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      if (!strips(text.substr(start, end - start))) break;
      end = start;
    }
  }
  return text.substr(begin, end - begin);
}

std::string replace(const std::string& text, const std::string& old, const std::string& replacement,
                    std::int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts the replacement between characters and at both ends
    std::int64_t done = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const bool starts_character = (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80;
      if (starts_character && (count < 0 || done < count)) {
        out += replacement;
        ++done;
        check_string_size(out.size());
      }
      out += text[i];
    }
    if (count < 0 || done < count) out += replacement;
    check_string_size(out.size());
    return out;
  }
  std::size_t start = 0;
  for (std::int64_t done = 0; count < 0 || done < count; ++done) {
    const std::size_t found = text.find(old, start);
    if (found == std::string::npos) break;
    out.append(text, start, found - start);
    out += replacement;
    check_string_size(out.size());
    start = found + old.size();
  }
  out.append(text, start, std::string::npos);
  check_string_size(out.size());
  return out;
}

std::string pad_center(const std::string& text, std::int64_t width, const std::string& fill, int where) {
  const std::int64_t length = static_cast<std::int64_t>(utf8_length(text));
  if (width <= length) return text;
  if (width > static_cast<std::int64_t>(Limits::string_bytes)) check_string_size(static_cast<std::size_t>(width));
  const std::int64_t total = width - length;
  // Python's str.center puts the odd extra character on the left when the width is odd... of
  // total and length both odd; this is its formula.
  std::int64_t left = where < 0 ? 0 : where > 0 ? total : total / 2 + (total & width & 1);
  std::string out;
  for (std::int64_t i = 0; i < left; ++i) out += fill;
  out += text;
  for (std::int64_t i = 0; i < total - left; ++i) out += fill;
  return out;
}

namespace {

std::string python_str(const Value& value) { return to_display_string(value); }

}  // namespace

// printf-style formatting for the `format` filter: %s %r %d %i %f %e %g %x %o %% with flags,
// width and precision, positional or %(name)s.
std::string percent_format_impl(const std::string& format, const Arguments& args, const KeywordArguments& kwargs) {
  std::string out;
  std::size_t next_arg = 0;
  for (std::size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out += format[i];
      continue;
    }
    if (++i >= format.size()) builtin_error("incomplete format");
    if (format[i] == '%') {
      out += '%';
      continue;
    }
    Value arg;
    if (format[i] == '(') {
      const std::size_t close = format.find(')', i);
      if (close == std::string::npos) builtin_error("incomplete format key");
      const std::string key = format.substr(i + 1, close - i - 1);
      arg = argument({}, kwargs, 0, key.c_str(), Value::make_undefined(key));
      if (arg.undefined) builtin_error("format key '" + key + "' not given");
      i = close + 1;
    } else {
      if (next_arg >= args.size()) builtin_error("not enough arguments for format string");
      arg = args[next_arg++];
    }
    std::string spec = "%";
    while (i < format.size() && std::string("-+ #0").find(format[i]) != std::string::npos) spec += format[i++];
    while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i])) && spec.size() < 8) spec += format[i++];
    if (i < format.size() && format[i] == '.') {
      spec += format[i++];
      while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i])) && spec.size() < 12) spec += format[i++];
    }
    if (i >= format.size()) builtin_error("incomplete format");
    const char conversion = format[i];
    char buffer[512];
    if (conversion == 's' || conversion == 'r') {
      const std::string text = conversion == 's' ? python_str(arg) : python_repr(arg.to_json());
      std::snprintf(buffer, sizeof buffer, (spec + "s").c_str(), "");
      spec += "s";
      // Width applies to characters; build the padding by hand for long texts.
      const int written = std::snprintf(nullptr, 0, spec.c_str(), text.c_str());
      if (written < 0) builtin_error("bad format");
      std::string formatted(static_cast<std::size_t>(written) + 1, '\0');
      std::snprintf(formatted.data(), formatted.size(), spec.c_str(), text.c_str());
      formatted.pop_back();
      out += formatted;
    } else if (std::string("dioxXeEfFgG").find(conversion) != std::string::npos) {
      if (!arg.is_data() || !(arg.data().is_number() || arg.data().is_boolean()))
        builtin_error(std::string("%") + conversion + " format: a real number is required, not " + type_name(arg));
      if (std::string("dioxX").find(conversion) != std::string::npos) {
        std::int64_t integer = 0;
        if (arg.data().is_number_float()) {
          const double d = arg.data().get<double>();
          if (conversion != 'd' && conversion != 'i') builtin_error("%x format: an integer is required, not float");
          if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) builtin_error("integer does not fit in 64 bits");
          integer = static_cast<std::int64_t>(d);
        } else {
          integer = checked_integer(arg.data(), "format argument");
        }
        spec += "ll";
        spec += conversion == 'i' ? 'd' : conversion;
        std::snprintf(buffer, sizeof buffer, spec.c_str(), static_cast<long long>(integer));
      } else {
        spec += conversion;
        std::snprintf(buffer, sizeof buffer, spec.c_str(), arg.data().get<double>());
      }
      out += buffer;
    } else {
      builtin_error(std::string("unsupported format character '") + conversion + "'");
    }
    check_string_size(out.size());
  }
  if (next_arg < args.size()) builtin_error("not all arguments converted during string formatting");
  return out;
}

// str.format with {} / {0} / {name} fields (no format specs beyond them).
std::string brace_format(const std::string& format, const Arguments& args, const KeywordArguments& kwargs) {
  std::string out;
  std::size_t automatic = 0;
  for (std::size_t i = 0; i < format.size(); ++i) {
    const char c = format[i];
    if (c == '{' && i + 1 < format.size() && format[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < format.size() && format[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      const std::size_t close = format.find('}', i);
      if (close == std::string::npos) builtin_error("single '{' encountered in format string");
      const std::string field = format.substr(i + 1, close - i - 1);
      Value value;
      if (field.empty()) {
        if (automatic >= args.size()) builtin_error("Replacement index " + std::to_string(automatic) + " out of range");
        value = args[automatic++];
      } else if (std::all_of(field.begin(), field.end(), ::isdigit) && field.size() < 6) {
        const std::size_t index = std::stoul(field);
        if (index >= args.size()) builtin_error("Replacement index " + field + " out of range");
        value = args[index];
      } else {
        value = argument({}, kwargs, 0, field.c_str(), Value::make_undefined(field));
        if (value.undefined) builtin_error("format field '" + field + "' not given");
      }
      out += python_str(value);
      i = close;
    } else if (c == '}') {
      builtin_error("single '}' encountered in format string");
    } else {
      out += c;
    }
    check_string_size(out.size());
  }
  return out;
}

std::string percent_format(const std::string& format, const Arguments& args, const KeywordArguments& kwargs) {
  return percent_format_impl(format, args, kwargs);
}

std::string strftime_text(const std::string& format, std::time_t now) {
  if (format.size() > 256) builtin_error("format longer than 256 characters");
  std::tm local{};
  if (!localtime_r(&now, &local)) builtin_error("cannot read the local time");
  std::string out(1024, '\0');
  const std::size_t written = std::strftime(out.data(), out.size(), format.c_str(), &local);
  if (written == 0 && !format.empty()) return "";
  out.resize(written);
  return out;
}

}  // namespace dsv3::jinja
