// The methods of str and dict values (strip, split, startswith, replace, find, format, items, get...).
#include <algorithm>
#include <cctype>
#include <limits>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

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
