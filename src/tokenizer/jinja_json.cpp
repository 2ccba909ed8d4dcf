// tojson: transformers' override of Jinja2's, json.dumps(ensure_ascii=False) with indent, separators, sort_keys.
#include <algorithm>
#include <cmath>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

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

}  // namespace

std::string to_json_text(const json& value, const JsonStyle& style) {
  std::string out;
  append_json(out, value, style, 0);
  return out;
}

void add_json_filters(FilterTable& table) {
  using namespace filter_parameters;
  table.insert({
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
  });
}

}  // namespace dsv3::jinja
