// Python's value semantics: truth, type names, 64-bit integers, UTF-8 counts, size limits, str/repr, ==, <.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {

json Value::to_json() const {
  if (undefined) return nullptr;
  if (namespace_object) return *namespace_object;
  return data();
}

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

void check_list_size(const json& list) {
  if (list.size() > 10 * Limits::range)
    builtin_error("list of more than " + std::to_string(10 * Limits::range) + " items");
}

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

namespace {

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

}  // namespace dsv3::jinja
