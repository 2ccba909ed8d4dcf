// The filters, tests and string/dict methods chat templates call, with Python's semantics (Jinja2
// evaluates templates as Python: str() of True is "True", split() without a separator splits on
// runs of whitespace, negative indices count from the end). `tojson` is transformers' override of
// Jinja2's: json.dumps(ensure_ascii=False) with json.dumps's indent, separators and sort_keys.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <unordered_set>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/utf8.h"

namespace dsv3::jinja {

json Value::to_json() const {
  if (undefined) return nullptr;
  if (namespace_object) return *namespace_object;
  return data();
}

namespace {

[[noreturn]] void builtin_error(const std::string& message) { throw BuiltinError{message}; }

void check_string_size(std::size_t size) {
  if (size > Limits::string_bytes)
    builtin_error("string longer than " + std::to_string(Limits::string_bytes) + " bytes");
}

}  // namespace

bool truthy(const Value& value) {
  if (value.undefined) return false;
  if (!value.is_data()) return true;
  const json& data = value.data();
  switch (data.type()) {
    case json::value_t::null: return false;
    case json::value_t::boolean: return data.get<bool>();
    case json::value_t::string: return !data.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object: return !data.empty();
    case json::value_t::number_float: return data.get<double>() != 0.0;
    case json::value_t::number_unsigned: return data.get<std::uint64_t>() != 0;
    default: return data.get<std::int64_t>() != 0;
  }
}

std::string type_name(const Value& value) {
  if (value.undefined) return "Undefined";
  if (value.is_namespace()) return "Namespace";
  if (value.is_loop()) return "LoopContext";
  if (value.is_macro()) return "Macro";
  switch (value.data().type()) {
    case json::value_t::null: return "NoneType";
    case json::value_t::boolean: return "bool";
    case json::value_t::string: return "str";
    case json::value_t::array: return value.tuple ? "tuple" : "list";
    case json::value_t::object: return "dict";
    case json::value_t::number_float: return "float";
    default: return "int";
  }
}

bool integer_of(const json& value, std::int64_t& out) {
  if (value.is_boolean()) {
    out = value.get<bool>() ? 1 : 0;
    return true;
  }
  if (value.is_number_unsigned()) {
    const auto u = value.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
    out = static_cast<std::int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    out = value.get<std::int64_t>();
    return true;
  }
  return false;
}

std::int64_t checked_integer(const json& value, const char* what) {
  std::int64_t out = 0;
  if (value.is_number_float() || !integer_of(value, out)) {
    if (value.is_number_unsigned()) builtin_error(std::string(what) + " does not fit in 64 bits");
    builtin_error(std::string(what) + " must be an integer");
  }
  return out;
}

std::vector<std::string> utf8_characters(const std::string& text) {
  std::vector<std::string> characters;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = 1;
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead >= 0xF0) length = 4;
    else if (lead >= 0xE0) length = 3;
    else if (lead >= 0xC0) length = 2;
    length = std::min(length, text.size() - i);
    characters.push_back(text.substr(i, length));
    i += length;
  }
  return characters;
}

std::size_t utf8_length(const std::string& text) {
  std::size_t length = 0;
  for (const char c : text) length += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return length;
}

std::size_t utf8_offset(const std::string& text, std::size_t index) {
  std::size_t seen = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;
    if (seen++ == index) return i;
  }
  return text.size();
}

std::size_t check_value_size(const json& value) {
  // Iterative, so a deep value cannot overflow the stack while being measured.
  std::vector<std::pair<const json*, std::size_t>> pending = {{&value, 1}};
  std::size_t bytes = 0;
  while (!pending.empty()) {
    const auto [item, depth] = pending.back();
    pending.pop_back();
    if (depth > Limits::value_depth)
      builtin_error("value nested more than " + std::to_string(Limits::value_depth) + " levels deep");
    bytes += 16;
    if (item->is_string()) {
      bytes += item->get_ref<const std::string&>().size();
    } else if (item->is_array()) {
      for (const auto& element : *item) pending.push_back({&element, depth + 1});
    } else if (item->is_object()) {
      for (const auto& [key, element] : item->items()) {
        bytes += key.size() + 16;
        pending.push_back({&element, depth + 1});
      }
    }
    if (bytes > Limits::value_bytes)
      builtin_error("value larger than " + std::to_string(Limits::value_bytes) + " bytes");
  }
  return bytes;
}

namespace {

// Python's repr(float): the shortest digits that round-trip, in positional notation for decimal
// exponents -4..15 and scientific ("1e+16", "1.5e-07") outside.
std::string float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  char buffer[64];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*e", precision - 1, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  // buffer: d.ddde±XX with `precision` significant digits.
  std::string text(buffer);
  const std::size_t e = text.find('e');
  std::string mantissa = text.substr(0, e);
  const int exponent = std::stoi(text.substr(e + 1));
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    } else if (static_cast<std::size_t>(exponent) + 1 >= digits.size()) {
      out += digits + std::string(static_cast<std::size_t>(exponent) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<std::size_t>(exponent) + 1) + "." +
             digits.substr(static_cast<std::size_t>(exponent) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char exponent_text[16];
  std::snprintf(exponent_text, sizeof exponent_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exponent_text;
}

// Python's repr(str): single quotes unless the text has single and no double quotes; control
// characters escaped as \n, \t, \r or \xNN.
std::string quote_python(const std::string& text) {
  const bool use_double = text.find('\'') != std::string::npos && text.find('"') == std::string::npos;
  const char quote = use_double ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (byte < 0x20 || byte == 0x7F) {
      static const char* const hex = "0123456789abcdef";
      out += "\\x";
      out += hex[byte >> 4];
      out += hex[byte & 0xF];
    } else {
      out += c;
    }
  }
  return out + quote;
}

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

void append_json_string(std::string& out, const std::string& text, bool ensure_ascii) {
  static const char* const hex = "0123456789abcdef";
  auto unicode_escape = [&](std::uint32_t code) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(code >> shift) & 0xF];
  };
  out += '"';
  for (std::size_t i = 0; i < text.size();) {
    const char c = text[i];
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x80) {
      if (!ensure_ascii) {
        out += c;
        ++i;
        continue;
      }
      const std::uint32_t code = next_code_point(text, i);
      if (code >= 0x10000) {
        unicode_escape(0xD800 + ((code - 0x10000) >> 10));
        unicode_escape(0xDC00 + ((code - 0x10000) & 0x3FF));
      } else {
        unicode_escape(code);
      }
      continue;
    }
    ++i;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (byte < 0x20 || (ensure_ascii && byte == 0x7F)) {
          unicode_escape(byte);
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_json(std::string& out, const json& value, const JsonStyle& style, int depth) {
  if (out.size() > Limits::string_bytes) check_string_size(out.size());
  const bool pretty = style.indent >= 0;
  auto newline = [&](int level) {
    if (!pretty) return;
    const std::size_t width = static_cast<std::size_t>(style.indent) * static_cast<std::size_t>(level);
    check_string_size(out.size() + width);
    out += '\n';
    out.append(width, ' ');
  };
  // json.dumps with an indent uses "," between items unless separators says otherwise.
  const std::string& item_separator = style.item_separator;
  switch (value.type()) {
    case json::value_t::string: append_json_string(out, value.get_ref<const std::string&>(), style.ensure_ascii); return;
    case json::value_t::number_float: {
      const double number = value.get<double>();
      out += std::isnan(number) ? "NaN" : std::isinf(number) ? (number > 0 ? "Infinity" : "-Infinity")
                                                              : float_repr(number);
      return;
    }
    case json::value_t::array: {
      if (value.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& item : value) {
        if (!first) out += item_separator;
        first = false;
        newline(depth + 1);
        append_json(out, item, style, depth + 1);
      }
      newline(depth);
      out += ']';
      return;
    }
    case json::value_t::object: {
      if (value.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      std::vector<const std::string*> keys;
      for (const auto& [key, unused] : value.items()) keys.push_back(&key);
      if (style.sort_keys) std::stable_sort(keys.begin(), keys.end(), [](auto* a, auto* b) { return *a < *b; });
      bool first = true;
      for (const std::string* key : keys) {
        if (!first) out += item_separator;
        first = false;
        newline(depth + 1);
        append_json_string(out, *key, style.ensure_ascii);
        out += style.key_separator;
        append_json(out, value.at(*key), style, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
    case json::value_t::boolean: out += value.get<bool>() ? "true" : "false"; return;
    case json::value_t::null: out += "null"; return;
    default: out += value.dump();  // integers are spelt the same in JSON and Python
  }
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


enum class Case { upper, lower, title, capitalize, swap };

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

const json& expect_string(const Value& value, const char* what) {
  if (!value.is_data() || !value.data().is_string())
    builtin_error(std::string(what) + " must be a string, not " + type_name(value));
  return value.data();
}

std::int64_t expect_integer(const Value& value, const char* what) {
  if (!value.is_data()) builtin_error(std::string(what) + " must be an integer, not " + type_name(value));
  return checked_integer(value.data(), what);
}

// Looks up a named argument: positional slot `index`, else keyword `name`, else `fallback`.
Value argument(const Arguments& args, const KeywordArguments& kwargs, std::size_t index, const char* name,
               Value fallback = Value::make_undefined("argument")) {
  if (index < args.size()) return args[index];
  for (const auto& [key, value] : kwargs)
    if (key == name) return value;
  return fallback;
}

// Rejects keyword arguments a builtin does not take, and too many positional ones, as Python does.
void check_arguments(const Arguments& args, const KeywordArguments& kwargs, std::initializer_list<const char*> names) {
  if (args.size() > names.size())
    builtin_error("takes at most " + std::to_string(names.size()) + " argument(s), got " + std::to_string(args.size()));
  for (const auto& [key, unused] : kwargs) {
    std::size_t index = 0;
    bool known = false;
    for (const char* name : names) {
      if (key == name) {
        known = true;
        if (index < args.size()) builtin_error("got multiple values for argument '" + key + "'");
      }
      ++index;
    }
    if (!known) builtin_error("unexpected keyword argument '" + key + "'");
  }
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

void check_list_size(const json& list) {
  if (list.size() > 10 * Limits::range)
    builtin_error("list of more than " + std::to_string(10 * Limits::range) + " items");
}

json split(const std::string& text, const Value& separator, std::int64_t max_splits, bool from_right) {
  json parts = json::array();
  if (separator.undefined || (separator.is_data() && separator.data().is_null())) {
    // Runs of whitespace separate words; leading and trailing whitespace makes no empty word.
    // Scanned by character boundaries (byte offsets), without splitting the text into characters.
    const std::size_t n = text.size();
    auto next = [&](std::size_t i) {  // the byte after the character at i
      ++i;
      while (i < n && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
      return i;
    };
    auto previous = [&](std::size_t i) {  // the start of the character before byte i
      --i;
      while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
      return i;
    };
    auto space_at = [&](std::size_t i) { return is_space_character(text.substr(i, next(i) - i)); };
    std::vector<std::string> words;
    if (!from_right) {
      std::size_t i = 0;
      while (true) {
        while (i < n && space_at(i)) i = next(i);
        if (i == n) break;
        if (max_splits >= 0 && static_cast<std::int64_t>(words.size()) == max_splits) {
          std::size_t end = n;
          while (end > i && space_at(previous(end))) end = previous(end);
          words.push_back(text.substr(i, end - i));
          break;
        }
        std::size_t end = i;
        while (end < n && !space_at(end)) end = next(end);
        words.push_back(text.substr(i, end - i));
        i = end;
        if (words.size() > 10 * Limits::range) check_list_size(json(words));
      }
    } else {
      std::size_t i = n;
      while (true) {
        while (i > 0 && space_at(previous(i))) i = previous(i);
        if (i == 0) break;
        if (max_splits >= 0 && static_cast<std::int64_t>(words.size()) == max_splits) {
          std::size_t begin = 0;
          while (begin < i && space_at(begin)) begin = next(begin);
          words.push_back(text.substr(begin, i - begin));
          break;
        }
        std::size_t begin = i;
        while (begin > 0 && !space_at(previous(begin))) begin = previous(begin);
        words.push_back(text.substr(begin, i - begin));
        i = begin;
        if (words.size() > 10 * Limits::range) check_list_size(json(words));
      }
      std::reverse(words.begin(), words.end());
    }
    for (auto& word : words) {
      parts.push_back(std::move(word));
      check_list_size(parts);
    }
    return parts;
  }
  const std::string& sep = expect_string(separator, "separator").get_ref<const std::string&>();
  if (sep.empty()) builtin_error("empty separator");
  std::vector<std::string> pieces;
  if (!from_right) {
    std::size_t start = 0;
    while (max_splits < 0 || static_cast<std::int64_t>(pieces.size()) < max_splits) {
      const std::size_t found = text.find(sep, start);
      if (found == std::string::npos) break;
      pieces.push_back(text.substr(start, found - start));
      start = found + sep.size();
      if (pieces.size() > 10 * Limits::range) check_list_size(json(pieces));
    }
    pieces.push_back(text.substr(start));
  } else {
    std::size_t end = text.size();
    while (max_splits < 0 || static_cast<std::int64_t>(pieces.size()) < max_splits) {
      if (end < sep.size()) break;
      const std::size_t found = text.rfind(sep, end - sep.size());
      if (found == std::string::npos) break;
      pieces.push_back(text.substr(found + sep.size(), end - found - sep.size()));
      end = found;
      if (pieces.size() > 10 * Limits::range) check_list_size(json(pieces));
    }
    pieces.push_back(text.substr(0, end));
    std::reverse(pieces.begin(), pieces.end());
  }
  for (auto& piece : pieces) parts.push_back(std::move(piece));
  return parts;
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

bool starts_or_ends(const std::string& text, const Value& affix, bool at_start) {
  auto matches = [&](const json& candidate) {
    if (!candidate.is_string()) builtin_error("prefix/suffix must be a string or a tuple of strings");
    const std::string& s = candidate.get_ref<const std::string&>();
    if (s.size() > text.size()) return false;
    return at_start ? text.compare(0, s.size(), s) == 0 : text.compare(text.size() - s.size(), s.size(), s) == 0;
  };
  if (!affix.is_data()) builtin_error("prefix/suffix must be a string or a tuple of strings");
  if (affix.data().is_array()) return std::any_of(affix.data().begin(), affix.data().end(), matches);
  return matches(affix.data());
}

json as_list(const Value& value) {
  if (value.undefined) return json::array();
  if (value.is_loop() || value.is_macro()) builtin_error("'" + type_name(value) + "' object is not iterable");
  const json data = value.to_json();
  if (data.is_array()) return data;
  json list = json::array();
  if (data.is_string()) {
    if (utf8_length(data.get_ref<const std::string&>()) > 10 * Limits::range)
      builtin_error("a list of more than " + std::to_string(10 * Limits::range) + " characters");
    for (auto& c : utf8_characters(data.get<std::string>())) list.push_back(c);
  } else if (data.is_object()) {
    for (const auto& [key, unused] : data.items()) list.push_back(key);
  } else {
    builtin_error("'" + type_name(value) + "' object is not iterable");
  }
  return list;
}

// `attribute` may be dotted ("function.name") and hold list indices ("tool_calls.0"), as in
// Jinja2's make_attrgetter; a missing step gives undefined.
Value attribute_of(const json& item, const std::string& attribute) {
  const json* current = &item;
  std::size_t start = 0;
  while (start <= attribute.size()) {
    const std::size_t dot = std::min(attribute.find('.', start), attribute.size());
    const std::string key = attribute.substr(start, dot - start);
    if (current->is_object()) {
      auto found = current->find(key);
      if (found == current->end()) return Value::make_undefined(key);
      current = &*found;
    } else if (current->is_array() && !key.empty() && std::all_of(key.begin(), key.end(), ::isdigit) && key.size() < 10 &&
               std::stoul(key) < current->size()) {
      current = &(*current)[std::stoul(key)];
    } else {
      return Value::make_undefined(key);
    }
    start = dot + 1;
  }
  return Value(*current);
}

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

// A set key with Python's equality for hashable values: 1, 1.0 and True are one key; lists and
// dicts are unhashable, as in Python.
std::string hash_key(const json& value) {
  if (value.is_string()) return "s" + value.get<std::string>();
  if (value.is_null()) return "z";
  if (value.is_array() || value.is_object()) builtin_error(std::string("unhashable type: '") + (value.is_array() ? "list" : "dict") + "'");
  std::int64_t integer = 0;
  if (!value.is_number_float() && integer_of(value, integer)) return "n" + std::to_string(integer);
  if (value.is_number_unsigned()) return "n" + value.dump();
  const double d = value.get<double>();
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return "n" + std::to_string(static_cast<std::int64_t>(d));
  return "f" + float_repr(d);
}

// Jinja2's sort key: strings compare case-insensitively unless case_sensitive.
json sort_key(const json& value, bool case_sensitive) {
  if (!case_sensitive && value.is_string()) return change_case(value.get<std::string>(), Case::lower);
  return value;
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

std::string python_str(const Value& value) { return to_display_string(value); }

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

double to_double(const Value& value, const char* what) {
  if (!value.is_data() || !(value.data().is_number() || value.data().is_boolean()))
    builtin_error(std::string(what) + " must be a number, not " + type_name(value));
  if (value.data().is_boolean()) return value.data().get<bool>() ? 1.0 : 0.0;
  return value.data().get<double>();
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

using Filter = std::function<Value(Interpreter&, const Value&, const Arguments&, const KeywordArguments&)>;

Value select_or_reject(Interpreter& interpreter, const Value& input, const Arguments& args, bool by_attribute,
                       bool keep_matching) {
  std::size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.empty()) builtin_error("needs an attribute name");
    attribute = expect_string(args[0], "attribute").get<std::string>();
    next = 1;
  }
  json kept = json::array();
  for (const auto& item : as_list(input)) {
    const Value field = by_attribute ? attribute_of(item, attribute) : Value(item);
    bool matches;
    if (args.size() <= next) {
      matches = truthy(field);
    } else {
      const std::string test = expect_string(args[next], "test name").get<std::string>();
      if (!has_test(test)) builtin_error("no test named '" + test + "'");
      matches = interpreter.test(test, field, Arguments(args.begin() + static_cast<std::ptrdiff_t>(next) + 1, args.end()));
    }
    if (matches == keep_matching) kept.push_back(item);
  }
  return Value(std::move(kept));
}

json sorted(json list, bool reverse, bool case_sensitive, const std::string& attribute) {
  std::vector<std::pair<json, json>> keyed;
  for (auto& item : list) {
    json key = attribute.empty() ? item : attribute_of(item, attribute).to_json();
    keyed.emplace_back(sort_key(key, case_sensitive), std::move(item));
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? python_less(b.first, a.first) : python_less(a.first, b.first);
  });
  json out = json::array();
  for (auto& [unused, item] : keyed) out.push_back(std::move(item));
  return out;
}

const std::map<std::string, Filter>& filters() {
  using I = Interpreter;
  using A = Arguments;
  using K = KeywordArguments;
  static const std::map<std::string, Filter> all = {
      {"length", [](I&, const Value& in, const A&, const K&) {
         if (in.undefined) return Value(0);
         if (!in.is_data() && !in.is_namespace()) builtin_error("object of type '" + type_name(in) + "' has no len()");
         const json& data = in.view();
         if (data.is_string()) return Value(utf8_length(data.get_ref<const std::string&>()));
         if (data.is_array() || data.is_object()) return Value(data.size());
         builtin_error("object of type '" + type_name(in) + "' has no len()");
       }},
      {"tojson", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"ensure_ascii", "indent", "separators", "sort_keys"});
         if (in.undefined) builtin_error("Object of type Undefined is not JSON serializable");
         if (in.is_loop() || in.is_macro()) builtin_error("Object of type " + type_name(in) + " is not JSON serializable");
         JsonStyle style;
         style.ensure_ascii = truthy(argument(a, k, 0, "ensure_ascii", Value(false)));
         const Value indent = argument(a, k, 1, "indent", Value(nullptr));
         if (!(indent.is_data() && indent.data().is_null())) {
           const std::int64_t width = expect_integer(indent, "indent");
           if (width > 64) builtin_error("indent wider than 64 spaces");
           style.indent = static_cast<int>(std::max<std::int64_t>(width, 0));
           style.item_separator = ",";
         }
         const Value separators = argument(a, k, 2, "separators", Value(nullptr));
         if (!(separators.is_data() && separators.data().is_null())) {
           if (!separators.is_data() || !separators.data().is_array() || separators.data().size() != 2 ||
               !separators.data()[0].is_string() || !separators.data()[1].is_string())
             builtin_error("separators must be a pair of strings");
           style.item_separator = separators.data()[0].get<std::string>();
           style.key_separator = separators.data()[1].get<std::string>();
         }
         style.sort_keys = truthy(argument(a, k, 3, "sort_keys", Value(false)));
         std::string out;
         append_json(out, in.to_json(), style, 0);
         check_string_size(out.size());
         return Value(out);
       }},
      {"trim", [](I&, const Value& in, const A& a, const K& k) {
         return Value(strip(to_display_string(in), argument(a, k, 0, "chars"), true, true));
       }},
      {"default", [](I&, const Value& in, const A& a, const K& k) {
         const bool boolean = truthy(argument(a, k, 1, "boolean", Value(false)));
         if (in.undefined || (boolean && !truthy(in))) return argument(a, k, 0, "default_value", Value(""));
         return in;
       }},
      {"join", [](I&, const Value& in, const A& a, const K& k) {
         const Value separator = argument(a, k, 0, "d", Value(""));
         const Value attribute = argument(a, k, 1, "attribute", Value(nullptr));
         const std::string sep = to_display_string(separator);
         std::string out;
         bool first = true;
         for (const auto& item : as_list(in)) {
           if (!first) out += sep;
           first = false;
           out += to_display_string(attribute.is_data() && attribute.data().is_string()
                                        ? attribute_of(item, attribute.data().get<std::string>())
                                        : Value(item));
           check_string_size(out.size());
         }
         return Value(out);
       }},
      {"upper", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::upper)); }},
      {"lower", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::lower)); }},
      {"capitalize", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::capitalize)); }},
      {"title", [](I&, const Value& in, const A&, const K&) { return Value(change_case(to_display_string(in), Case::title)); }},
      {"string", [](I&, const Value& in, const A&, const K&) { return Value(to_display_string(in)); }},
      {"safe", [](I&, const Value& in, const A&, const K&) { return in; }},
      {"escape", [](I&, const Value& in, const A&, const K&) { return Value(html_escape(to_display_string(in))); }},
      {"list", [](I&, const Value& in, const A&, const K&) {
         if (in.is_data() && in.data().is_array()) {  // a copy keeps how its items print
           Value copy = in;
           copy.tuple = false;
           return copy;
         }
         return Value(as_list(in));
       }},
      {"first", [](I&, const Value& in, const A&, const K&) {
         const json list = as_list(in);
         if (list.empty()) return Value::make_undefined("first");
         Value item(list.front());
         item.tuple = in.tuple_items && item.data().is_array();
         return item;
       }},
      {"last", [](I&, const Value& in, const A&, const K&) {
         const json list = as_list(in);
         if (list.empty()) return Value::make_undefined("last");
         Value item(list.back());
         item.tuple = in.tuple_items && item.data().is_array();
         return item;
       }},
      {"reverse", [](I&, const Value& in, const A&, const K&) {
         if (in.is_data() && in.data().is_string()) {
           auto characters = utf8_characters(in.data().get<std::string>());
           std::string out;
           for (auto c = characters.rbegin(); c != characters.rend(); ++c) out += *c;
           return Value(out);
         }
         json list = as_list(in);
         std::reverse(list.begin(), list.end());
         return Value(list);
       }},
      {"items", [](I&, const Value& in, const A&, const K&) {
         if (in.undefined) return Value(json::array());
         const json data = in.to_json();
         if (!data.is_object()) builtin_error("can only get item pairs from a mapping");
         json pairs = json::array();
         for (const auto& [key, value] : data.items()) pairs.push_back(json::array({key, value}));
         Value result(pairs);
         result.tuple_items = true;
         return result;
       }},
      {"dictsort", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"case_sensitive", "by", "reverse"});
         if (!in.is_data() || !in.data().is_object()) builtin_error("can only sort a mapping");
         const bool case_sensitive = truthy(argument(a, k, 0, "case_sensitive", Value(false)));
         const std::string by = expect_string(argument(a, k, 1, "by", Value("key")), "by").get<std::string>();
         if (by != "key" && by != "value") builtin_error("You can only sort by either 'key' or 'value'");
         const bool reverse = truthy(argument(a, k, 2, "reverse", Value(false)));
         json pairs = json::array();
         for (const auto& [key, value] : in.data().items()) pairs.push_back(json::array({key, value}));
         Value result(sorted(pairs, reverse, case_sensitive, by == "key" ? "0" : "1"));
         result.tuple_items = true;
         return result;
       }},
      {"sort", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"reverse", "case_sensitive", "attribute"});
         const Value attribute = argument(a, k, 2, "attribute", Value(nullptr));
         return Value(sorted(as_list(in), truthy(argument(a, k, 0, "reverse", Value(false))),
                             truthy(argument(a, k, 1, "case_sensitive", Value(false))),
                             attribute.is_data() && attribute.data().is_string() ? attribute.data().get<std::string>() : ""));
       }},
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
      {"selectattr", [](I& i, const Value& in, const A& a, const K&) { return select_or_reject(i, in, a, true, true); }},
      {"rejectattr", [](I& i, const Value& in, const A& a, const K&) { return select_or_reject(i, in, a, true, false); }},
      {"select", [](I& i, const Value& in, const A& a, const K&) { return select_or_reject(i, in, a, false, true); }},
      {"reject", [](I& i, const Value& in, const A& a, const K&) { return select_or_reject(i, in, a, false, false); }},
      {"map", [](I& interpreter, const Value& in, const A& a, const K& k) {
         const Value attribute = argument({}, k, 0, "attribute");
         const Value fallback = argument({}, k, 0, "default");
         json mapped = json::array();
         for (const auto& item : as_list(in)) {
           if (!attribute.undefined) {
             const Value field = attribute_of(item, to_display_string(attribute));
             mapped.push_back(field.undefined && !fallback.undefined ? fallback.to_json() : field.to_json());
           } else {
             if (a.empty()) builtin_error("map needs a filter name or attribute=");
             const std::string name = expect_string(a[0], "filter name").get<std::string>();
             if (!has_filter(name)) builtin_error("no filter named '" + name + "'");
             KeywordArguments rest;
             for (const auto& pair : k) rest.push_back(pair);
             mapped.push_back(interpreter.filter(name, Value(item), Arguments(a.begin() + 1, a.end()), rest).to_json());
           }
         }
         return Value(mapped);
       }},
      {"unique", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"case_sensitive", "attribute"});
         const bool case_sensitive = truthy(argument(a, k, 0, "case_sensitive", Value(false)));
         const Value attribute = argument(a, k, 1, "attribute", Value(nullptr));
         json kept = json::array();
         std::unordered_set<std::string> seen;  // Python's set: linear, not quadratic
         for (const auto& item : as_list(in)) {
           const json field = attribute.is_data() && attribute.data().is_string()
                                  ? attribute_of(item, attribute.data().get<std::string>()).to_json()
                                  : item;
           if (seen.insert(hash_key(sort_key(field, case_sensitive))).second) kept.push_back(item);
         }
         return Value(kept);
       }},
      {"sum", [](I&, const Value& in, const A& a, const K& k) {
         check_arguments(a, k, {"attribute", "start"});
         const Value attribute = argument(a, k, 0, "attribute", Value(nullptr));
         Value total = argument(a, k, 1, "start", Value(0));
         for (const auto& item : as_list(in)) {
           const Value value = attribute.is_data() && attribute.data().is_string()
                                   ? attribute_of(item, attribute.data().get<std::string>())
                                   : Value(item);
           const bool numbers = total.is_data() && value.is_data() && (total.data().is_number() || total.data().is_boolean()) &&
                                (value.data().is_number() || value.data().is_boolean());
           if (!numbers) builtin_error("unsupported operand type(s) for +: '" + type_name(total) + "' and '" + type_name(value) + "'");
           std::int64_t x = 0, y = 0, sum = 0;
           if (!total.data().is_number_float() && !value.data().is_number_float() && integer_of(total.data(), x) &&
               integer_of(value.data(), y)) {
             if (__builtin_add_overflow(x, y, &sum)) builtin_error("integer result does not fit in 64 bits");
             total = Value(sum);
           } else {
             total = Value(to_double(total, "start") + to_double(value, "item"));
           }
         }
         return total;
       }},
      {"min", [](I&, const Value& in, const A& a, const K& k) {
         const json list = as_list(in);
         if (list.empty()) return Value::make_undefined("min of an empty sequence");
         const bool case_sensitive = truthy(argument(a, k, 0, "case_sensitive", Value(false)));
         const Value attribute = argument(a, k, 1, "attribute", Value(nullptr));
         return Value(sorted(list, false, case_sensitive,
                             attribute.is_data() && attribute.data().is_string() ? attribute.data().get<std::string>() : "")
                          .front());
       }},
      {"max", [](I&, const Value& in, const A& a, const K& k) {
         const json list = as_list(in);
         if (list.empty()) return Value::make_undefined("max of an empty sequence");
         const bool case_sensitive = truthy(argument(a, k, 0, "case_sensitive", Value(false)));
         const Value attribute = argument(a, k, 1, "attribute", Value(nullptr));
         // The first of equal maxima, as Python's max().
         const json order = sorted(list, true, case_sensitive,
                                   attribute.is_data() && attribute.data().is_string() ? attribute.data().get<std::string>() : "");
         return Value(order.front());
       }},
      {"batch", [](I&, const Value& in, const A& a, const K& k) {
         const std::int64_t size = expect_integer(argument(a, k, 0, "linecount"), "linecount");
         if (size <= 0) builtin_error("linecount must be positive");
         const Value fill = argument(a, k, 1, "fill_with", Value(nullptr));
         json batches = json::array();
         json current = json::array();
         for (const auto& item : as_list(in)) {
           current.push_back(item);
           if (static_cast<std::int64_t>(current.size()) == size) batches.push_back(std::exchange(current, json::array()));
         }
         if (!current.empty()) {
           if (!(fill.is_data() && fill.data().is_null()))
             while (static_cast<std::int64_t>(current.size()) < size) current.push_back(fill.to_json());
           batches.push_back(current);
         }
         return Value(batches);
       }},
      {"slice", [](I&, const Value& in, const A& a, const K& k) {
         const std::int64_t slices = expect_integer(argument(a, k, 0, "slices"), "slices");
         if (slices <= 0 || slices > 100000) builtin_error("slices must be between 1 and 100000");
         const Value fill = argument(a, k, 1, "fill_with", Value(nullptr));
         const json list = as_list(in);
         const std::size_t n = static_cast<std::size_t>(slices);
         const std::size_t per = list.size() / n, extra = list.size() % n;
         json out = json::array();
         std::size_t offset = 0;
         for (std::size_t s = 0; s < n; ++s) {
           const std::size_t count = per + (s < extra ? 1 : 0);
           json part(list.begin() + static_cast<std::ptrdiff_t>(offset), list.begin() + static_cast<std::ptrdiff_t>(offset + count));
           offset += count;
           if (!(fill.is_data() && fill.data().is_null()) && s >= extra && extra > 0) part.push_back(fill.to_json());
           out.push_back(part);
         }
         return Value(out);
       }},
      {"groupby", [](I&, const Value& in, const A& a, const K& k) {
         const std::string attribute = to_display_string(argument(a, k, 0, "attribute"));
         const Value fallback = argument(a, k, 1, "default", Value(nullptr));
         const json ordered = sorted(as_list(in), false, truthy(argument(a, k, 2, "case_sensitive", Value(false))), attribute);
         json groups = json::array();
         for (const auto& item : ordered) {
           Value key = attribute_of(item, attribute);
           if (key.undefined) key = fallback;
           const json grouper = key.to_json();
           if (groups.empty() || !python_equal(groups.back()["grouper"], grouper))
             groups.push_back(json{{"grouper", grouper}, {"list", json::array()}});
           groups.back()["list"].push_back(item);
         }
         return Value(groups);
       }},
      {"attr", [](I&, const Value& in, const A& a, const K&) {
         if (a.empty()) builtin_error("needs an attribute name");
         // Jinja2's attr() reads Python attributes, never items: a dict's keys are not attributes.
         if (in.is_namespace()) {
           const std::string name = to_display_string(a[0]);
           if (in.namespace_object->contains(name)) return Value((*in.namespace_object)[name]);
         }
         return Value::make_undefined(to_display_string(a[0]));
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
  };
  return all;
}

std::string filter_key(const std::string& name) {
  if (name == "d") return "default";
  if (name == "count") return "length";
  if (name == "e") return "escape";
  return name;
}

}  // namespace

std::string to_display_string(const Value& value) {
  if (value.undefined) return "";
  if (value.is_loop()) return "<LoopContext " + std::to_string(value.loop_index0 + 1) + "/" + std::to_string(value.loop_length) + ">";
  if (value.is_macro()) return "<Macro '" + value.macro->attribute + "'>";
  if (value.is_namespace()) return "<Namespace " + python_repr(*value.namespace_object) + ">";
  const json& data = value.data();
  if (data.is_string()) return data.get<std::string>();
  auto tuple_repr = [](const json& items) {
    std::string out = "(";
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + python_repr(items[i]);
    return out + (items.size() == 1 ? ",)" : ")");
  };
  if (value.tuple) return tuple_repr(data);
  if (value.tuple_items && data.is_array()) {
    std::string out = "[";
    for (std::size_t i = 0; i < data.size(); ++i) {
      out += (i ? ", " : "") + (data[i].is_array() ? tuple_repr(data[i]) : python_repr(data[i]));
      check_string_size(out.size());
    }
    return out + "]";
  }
  return python_repr(data);
}

std::string python_repr(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return "None";
    case json::value_t::boolean: return value.get<bool>() ? "True" : "False";
    case json::value_t::string: return quote_python(value.get<std::string>());
    case json::value_t::number_float: return float_repr(value.get<double>());
    case json::value_t::array: {
      std::string out = "[";
      for (std::size_t i = 0; i < value.size(); ++i) {
        out += (i ? ", " : "") + python_repr(value[i]);
        check_string_size(out.size());
      }
      return out + "]";
    }
    case json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        out += (first ? "" : ", ") + quote_python(key) + ": " + python_repr(item);
        check_string_size(out.size());
        first = false;
      }
      return out + "}";
    }
    default: return value.dump();
  }
}

bool python_equal(const json& a, const json& b) {
  const bool a_number = a.is_number() || a.is_boolean();
  const bool b_number = b.is_number() || b.is_boolean();
  if (a_number && b_number) {
    std::int64_t i = 0, j = 0;
    if (!a.is_number_float() && !b.is_number_float()) {
      const bool a_fits = integer_of(a, i), b_fits = integer_of(b, j);
      if (a_fits && b_fits) return i == j;
      if (a_fits != b_fits) return false;
      return a.get<std::uint64_t>() == b.get<std::uint64_t>();
    }
    const double x = a.is_boolean() ? (a.get<bool>() ? 1.0 : 0.0) : a.get<double>();
    const double y = b.is_boolean() ? (b.get<bool>() ? 1.0 : 0.0) : b.get<double>();
    return x == y;
  }
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!python_equal(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& [key, item] : a.items()) {
      auto found = b.find(key);
      if (found == b.end() || !python_equal(item, *found)) return false;
    }
    return true;
  }
  return a == b;
}

bool python_less(const json& a, const json& b) {
  const bool a_number = a.is_number() || a.is_boolean();
  const bool b_number = b.is_number() || b.is_boolean();
  if (a_number && b_number) {
    std::int64_t i = 0, j = 0;
    if (!a.is_number_float() && !b.is_number_float() && integer_of(a, i) && integer_of(b, j)) return i < j;
    const double x = a.is_boolean() ? (a.get<bool>() ? 1.0 : 0.0) : a.get<double>();
    const double y = b.is_boolean() ? (b.get<bool>() ? 1.0 : 0.0) : b.get<double>();
    return x < y;
  }
  if (a.is_string() && b.is_string()) return a.get_ref<const std::string&>() < b.get_ref<const std::string&>();
  if (a.is_array() && b.is_array()) {
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (!python_equal(a[i], b[i])) return python_less(a[i], b[i]);
    }
    return a.size() < b.size();
  }
  builtin_error("'<' not supported between these types");
}

std::string percent_format(const std::string& format, const Arguments& args, const KeywordArguments& kwargs) {
  return percent_format_impl(format, args, kwargs);
}

std::string to_json_text(const json& value, const JsonStyle& style) {
  std::string out;
  append_json(out, value, style, 0);
  return out;
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

bool has_filter(const std::string& name) { return filters().count(filter_key(name)) > 0; }

Value apply_filter(Interpreter& interpreter, const std::string& name, const Value& input, const Arguments& args,
                   const KeywordArguments& kwargs) {
  auto found = filters().find(filter_key(name));
  if (found == filters().end()) builtin_error("no filter named '" + name + "'");
  return found->second(interpreter, input, args, kwargs);
}

namespace {

using Test = std::function<bool(const Value&, const Arguments&)>;

const Value& test_argument(const Arguments& args) {
  if (args.empty()) builtin_error("needs an argument");
  return args[0];
}

bool is_number_value(const Value& v) { return v.is_data() && (v.data().is_number() || v.data().is_boolean()); }

bool compare_test(const Value& v, const Arguments& a, const char* op) {
  const Value& other = test_argument(a);
  if (!v.is_data() || !other.is_data()) builtin_error(std::string("'") + op + "' not supported for " + type_name(v));
  const std::string o = op;
  if (o == "<") return python_less(v.data(), other.data());
  if (o == "<=") return !python_less(other.data(), v.data());
  if (o == ">") return python_less(other.data(), v.data());
  return !python_less(v.data(), other.data());
}

const std::map<std::string, Test>& tests() {
  static const std::map<std::string, Test> all = {
      {"defined", [](const Value& v, const Arguments&) { return !v.undefined; }},
      {"undefined", [](const Value& v, const Arguments&) { return v.undefined; }},
      {"none", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_null(); }},
      {"string", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_string(); }},
      {"number", [](const Value& v, const Arguments&) { return is_number_value(v); }},
      {"integer", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_number_integer(); }},
      {"float", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_number_float(); }},
      {"boolean", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_boolean(); }},
      {"true", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_boolean() && v.data().get<bool>(); }},
      {"false", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_boolean() && !v.data().get<bool>(); }},
      {"mapping", [](const Value& v, const Arguments&) { return v.is_data() && v.data().is_object(); }},
      {"sequence", [](const Value& v, const Arguments&) { return v.is_data() && (v.data().is_array() || v.data().is_string() || v.data().is_object()); }},
      {"iterable", [](const Value& v, const Arguments&) { return v.undefined || (v.is_data() && (v.data().is_array() || v.data().is_string() || v.data().is_object())); }},
      {"callable", [](const Value& v, const Arguments&) { return v.is_macro(); }},
      {"escaped", [](const Value&, const Arguments&) { return false; }},
      {"equalto", [](const Value& v, const Arguments& a) {
         const Value& other = test_argument(a);
         if (v.undefined || other.undefined) return v.undefined && other.undefined;
         return v.is_data() && other.is_data() && python_equal(v.data(), other.data());
       }},
      {"ne", [](const Value& v, const Arguments& a) {
         const Value& other = test_argument(a);
         if (v.undefined || other.undefined) return !(v.undefined && other.undefined);
         return !(v.is_data() && other.is_data() && python_equal(v.data(), other.data()));
       }},
      {"sameas", [](const Value& v, const Arguments& a) {
         // Python's `is`: None, True and False are singletons; other values are not the same object.
         const Value& other = test_argument(a);
         if (!v.is_data() || !other.is_data()) return v.namespace_object && v.namespace_object == other.namespace_object;
         // CPython also keeps one object for each small integer (-5..256).
         std::int64_t i = 0, j = 0;
         if (v.data().is_number_integer() && other.data().is_number_integer() && integer_of(v.data(), i) &&
             integer_of(other.data(), j))
           return i == j && i >= -5 && i <= 256;
         return (v.data().is_null() && other.data().is_null()) ||
                (v.data().is_boolean() && other.data().is_boolean() && v.data() == other.data());
       }},
      {"lessthan", [](const Value& v, const Arguments& a) { return compare_test(v, a, "<"); }},
      {"le", [](const Value& v, const Arguments& a) { return compare_test(v, a, "<="); }},
      {"greaterthan", [](const Value& v, const Arguments& a) { return compare_test(v, a, ">"); }},
      {"ge", [](const Value& v, const Arguments& a) { return compare_test(v, a, ">="); }},
      {"odd", [](const Value& v, const Arguments&) {
         if (!v.is_data()) builtin_error("value must be an integer");
         return checked_integer(v.data(), "value") % 2 != 0;
       }},
      {"even", [](const Value& v, const Arguments&) {
         if (!v.is_data()) builtin_error("value must be an integer");
         return checked_integer(v.data(), "value") % 2 == 0;
       }},
      {"divisibleby", [](const Value& v, const Arguments& a) {
         const std::int64_t divisor = expect_integer(test_argument(a), "divisor");
         if (divisor == 0) builtin_error("integer modulo by zero");
         if (divisor == -1) return true;
         return expect_integer(v, "value") % divisor == 0;
       }},
      {"in", [](const Value& v, const Arguments& a) {
         const Value& container = test_argument(a);
         if (!container.is_data()) builtin_error("argument of type '" + type_name(container) + "' is not iterable");
         const json& data = container.data();
         if (data.is_string()) {
           if (!v.is_data() || !v.data().is_string())
             builtin_error("'in <string>' requires string as left operand, not " + type_name(v));
           return data.get_ref<const std::string&>().find(v.data().get_ref<const std::string&>()) != std::string::npos;
         }
         if (data.is_object()) return v.is_data() && v.data().is_string() && data.contains(v.data().get<std::string>());
         if (!data.is_array()) builtin_error("argument of type '" + type_name(container) + "' is not iterable");
         return v.is_data() && std::any_of(data.begin(), data.end(), [&](const json& e) { return python_equal(e, v.data()); });
       }},
      {"lower", [](const Value& v, const Arguments&) { const std::string s = to_display_string(v); return s == change_case(s, Case::lower); }},
      {"upper", [](const Value& v, const Arguments&) { const std::string s = to_display_string(v); return s == change_case(s, Case::upper); }},
  };
  return all;
}

std::string test_key(const std::string& name) {
  if (name == "eq" || name == "==") return "equalto";
  if (name == "!=") return "ne";
  if (name == "lt" || name == "<") return "lessthan";
  if (name == "gt" || name == ">") return "greaterthan";
  if (name == "<=") return "le";
  if (name == ">=") return "ge";
  return name;
}

bool is_cased_text_lower(const std::string& s) {
  bool cased = false;
  std::size_t i = 0;
  while (i < s.size()) {
    const std::uint32_t c = next_code_point(s, i);
    if (to_lower(c) != c) return false;
    if (is_cased_letter(c)) cased = true;
  }
  return cased;
}

bool is_cased_text_upper(const std::string& s) {
  bool cased = false;
  std::size_t i = 0;
  while (i < s.size()) {
    const std::uint32_t c = next_code_point(s, i);
    if (to_upper(c) != c && c != 0xDF) return false;
    if (is_cased_letter(c)) cased = true;
  }
  return cased;
}

std::int64_t character_index(const std::string& text, std::size_t byte_offset) {
  std::int64_t index = 0;
  for (std::size_t i = 0; i < byte_offset && i < text.size(); ++i) index += (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80;
  return index;
}

}  // namespace

bool has_test(const std::string& name) { return tests().count(test_key(name)) > 0; }

bool apply_test(Interpreter&, const std::string& name, const Value& input, const Arguments& args) {
  auto found = tests().find(test_key(name));
  if (found == tests().end()) builtin_error("no test named '" + name + "'");
  return found->second(input, args);
}

Value call_method(Interpreter&, const Value& object, const std::string& method, const Arguments& args,
                  const KeywordArguments& kwargs) {
  if (object.is_data() && object.data().is_string()) {
    const std::string& text = object.data().get_ref<const std::string&>();
    if (method == "strip" || method == "lstrip" || method == "rstrip")
      return Value(strip(text, argument(args, kwargs, 0, "chars"), method != "rstrip", method != "lstrip"));
    if (method == "split" || method == "rsplit")
      return Value(split(text, argument(args, kwargs, 0, "sep"),
                         expect_integer(argument(args, kwargs, 1, "maxsplit", Value(-1)), "maxsplit"), method == "rsplit"));
    if (method == "startswith" || method == "endswith") {
      const std::int64_t start = expect_integer(argument(args, kwargs, 1, "start", Value(0)), "start");
      const auto count = static_cast<std::int64_t>(utf8_length(text));
      const std::int64_t from = start < 0 ? std::max<std::int64_t>(0, count + start) : std::min(start, count);
      const std::string tail = text.substr(utf8_offset(text, static_cast<std::size_t>(from)));
      return Value(starts_or_ends(tail, argument(args, kwargs, 0, "prefix", Value(nullptr)), method == "startswith"));
    }
    if (method == "upper") return Value(change_case(text, Case::upper));
    if (method == "lower") return Value(change_case(text, Case::lower));
    if (method == "title") return Value(change_case(text, Case::title));
    if (method == "capitalize") return Value(change_case(text, Case::capitalize));
    if (method == "swapcase") return Value(change_case(text, Case::swap));
    if (method == "replace")
      return Value(replace(text, expect_string(argument(args, kwargs, 0, "old"), "old"),
                           expect_string(argument(args, kwargs, 1, "new"), "new"),
                           expect_integer(argument(args, kwargs, 2, "count", Value(-1)), "count")));
    if (method == "find" || method == "rfind" || method == "index" || method == "rindex") {
      const std::string needle = expect_string(argument(args, kwargs, 0, "sub"), "substring");
      const std::size_t at = method[0] == 'r' ? text.rfind(needle) : text.find(needle);
      if (at == std::string::npos) {
        if (method == "index" || method == "rindex") builtin_error("substring not found");
        return Value(std::int64_t{-1});
      }
      return Value(character_index(text, at));
    }
    if (method == "count") {
      const std::string needle = expect_string(argument(args, kwargs, 0, "sub"), "substring");
      if (needle.empty()) return Value(utf8_length(text) + 1);
      std::int64_t count = 0;
      for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++count;
      return Value(count);
    }
    if (method == "join") {
      std::string out;
      bool first = true;
      std::size_t index = 0;
      for (const auto& item : as_list(argument(args, kwargs, 0, "iterable"))) {
        if (!item.is_string())
          builtin_error("sequence item " + std::to_string(index) + ": expected str instance, " + type_name(Value(item)) + " found");
        out += (first ? "" : text) + item.get<std::string>();
        check_string_size(out.size());
        first = false;
        ++index;
      }
      return Value(out);
    }
    if (method == "splitlines") {
      const bool keep = truthy(argument(args, kwargs, 0, "keepends", Value(false)));
      json lines = json::array();
      std::size_t start = 0;
      for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\n' && text[i] != '\r') continue;
        std::size_t end = i;
        if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
        lines.push_back(text.substr(start, (keep ? i + 1 : end) - start));
        check_list_size(lines);
        start = i + 1;
      }
      if (start < text.size()) lines.push_back(text.substr(start));
      return Value(lines);
    }
    if (method == "isdigit" || method == "isspace" || method == "isalpha" || method == "isalnum") {
      auto predicate = [&](unsigned char c) {
        if (method == "isdigit") return std::isdigit(c) != 0;
        if (method == "isspace") return is_python_space(static_cast<char>(c));
        if (method == "isalpha") return std::isalpha(c) != 0;
        return std::isalnum(c) != 0;
      };
      return Value(!text.empty() && std::all_of(text.begin(), text.end(), [&](char c) { return predicate(static_cast<unsigned char>(c)); }));
    }
    if (method == "islower") return Value(is_cased_text_lower(text));
    if (method == "isupper") return Value(is_cased_text_upper(text));
    if (method == "istitle") return Value(!text.empty() && change_case(text, Case::title) == text && is_cased_text_lower(text) == false);
    if (method == "center" || method == "ljust" || method == "rjust") {
      const std::int64_t width = expect_integer(argument(args, kwargs, 0, "width"), "width");
      const Value fill = argument(args, kwargs, 1, "fillchar", Value(" "));
      const std::string& fill_text = expect_string(fill, "fillchar").get_ref<const std::string&>();
      if (utf8_characters(fill_text).size() != 1) builtin_error("The fill character must be exactly one character long");
      return Value(pad_center(text, width, fill_text, method == "center" ? 0 : method == "ljust" ? -1 : 1));
    }
    if (method == "zfill") {
      const std::int64_t width = expect_integer(argument(args, kwargs, 0, "width"), "width");
      const std::int64_t length = static_cast<std::int64_t>(utf8_length(text));
      if (width <= length) return Value(text);
      check_string_size(static_cast<std::size_t>(std::min<std::int64_t>(width, std::numeric_limits<std::int32_t>::max())));
      const bool sign = !text.empty() && (text[0] == '-' || text[0] == '+');
      return Value((sign ? text.substr(0, 1) : "") + std::string(static_cast<std::size_t>(width - length), '0') +
                   (sign ? text.substr(1) : text));
    }
    if (method == "removeprefix" || method == "removesuffix") {
      const std::string affix = expect_string(argument(args, kwargs, 0, "affix"), "affix").get_ref<const std::string&>();
      if (method == "removeprefix") return Value(text.rfind(affix, 0) == 0 ? text.substr(affix.size()) : text);
      const bool ends = affix.size() <= text.size() && text.compare(text.size() - affix.size(), affix.size(), affix) == 0;
      return Value(ends ? text.substr(0, text.size() - affix.size()) : text);
    }
    if (method == "format") return Value(brace_format(text, args, kwargs));
  } else if (object.is_data() && object.data().is_object()) {
    const json& data = object.data();
    if (method == "items") {
      json pairs = json::array();
      for (const auto& [key, value] : data.items()) pairs.push_back(json::array({key, value}));
      Value result(pairs);
      result.tuple_items = true;
      return result;
    }
    if (method == "keys" || method == "values") {
      json list = json::array();
      for (const auto& [key, value] : data.items()) list.push_back(method == "keys" ? json(key) : value);
      return Value(list);
    }
    if (method == "get") {
      const Value key = argument(args, kwargs, 0, "key");
      const Value fallback = argument(args, kwargs, 1, "default", Value(nullptr));
      if (!key.is_data() || !key.data().is_string()) return fallback;
      auto found = data.find(key.data().get<std::string>());
      return found != data.end() ? Value(*found) : fallback;
    }
  }
  builtin_error("'" + type_name(object) + "' object has no attribute '" + method + "'");
}

}  // namespace dsv3::jinja
