// The filters, tests and string/dict methods chat templates call, with Python's semantics (Jinja2
// evaluates templates as Python: str() of True is "True", split() without a separator splits on
// runs of whitespace, negative indices count from the end). `tojson` is HF's override of Jinja2's:
// json.dumps(ensure_ascii=False) with Python's default separators and no HTML escaping.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>

#include "tokenizer/jinja_ast.h"

namespace dsv3::jinja {

json Value::to_json() const {
  if (undefined) return nullptr;
  if (namespace_object) return *namespace_object;
  return data;
}

bool truthy(const Value& value) {
  if (value.undefined) return false;
  if (value.is_namespace()) return true;
  const json& data = value.data;
  switch (data.type()) {
    case json::value_t::null: return false;
    case json::value_t::boolean: return data.get<bool>();
    case json::value_t::string: return !data.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object: return !data.empty();
    case json::value_t::number_float: return data.get<double>() != 0.0;
    default: return data.get<long long>() != 0;
  }
}

std::vector<std::string> utf8_characters(const std::string& text) {
  std::vector<std::string> characters;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = 1;
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead >= 0xF0) length = 4;
    else if (lead >= 0xE0) length = 3;
    else if (lead >= 0xC0) length = 2;
    characters.push_back(text.substr(i, length));
    i += length;
  }
  return characters;
}

namespace {

std::string float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return json(value).dump();  // shortest round-trip digits, "1.0" for integral values, like Python
}

std::string quote_python(const std::string& text) {
  // Python's repr prefers single quotes, switching to double when only single quotes occur inside.
  const bool use_double = text.find('\'') != std::string::npos && text.find('"') == std::string::npos;
  const char quote = use_double ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : text) {
    if (c == quote || c == '\\') out += '\\';
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else out += c;
  }
  return out + quote;
}

void append_json_string(std::string& out, const std::string& text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char* const hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_json(std::string& out, const json& value, int indent, int depth) {
  const bool pretty = indent >= 0;
  auto newline = [&](int level) {
    if (pretty) out += '\n' + std::string(static_cast<std::size_t>(indent * level), ' ');
  };
  const char* const item_separator = pretty ? "," : ", ";
  switch (value.type()) {
    case json::value_t::string: append_json_string(out, value.get_ref<const std::string&>()); return;
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
        append_json(out, item, indent, depth + 1);
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
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out += item_separator;
        first = false;
        newline(depth + 1);
        append_json_string(out, key);
        out += ": ";
        append_json(out, item, indent, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
    default: out += value.dump();  // null, booleans and integers are spelt the same in JSON and here
  }
}

[[noreturn]] void builtin_error(const std::string& message) { throw BuiltinError{message}; }

const json& expect_string(const Value& value, const char* what) {
  if (value.undefined || !value.data.is_string()) builtin_error(std::string(what) + " must be a string");
  return value.data;
}

long long expect_integer(const Value& value, const char* what) {
  if (value.undefined || !value.data.is_number_integer()) builtin_error(std::string(what) + " must be an integer");
  return value.data.get<long long>();
}

// Looks up a named argument: positional slot `index`, else keyword `name`, else `fallback`.
Value argument(const Arguments& args, const KeywordArguments& kwargs, std::size_t index, const char* name,
               Value fallback = Value::make_undefined("argument")) {
  if (index < args.size()) return args[index];
  for (const auto& [key, value] : kwargs)
    if (key == name) return value;
  return fallback;
}

bool is_python_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string strip(const std::string& text, const Value& chars, bool left, bool right) {
  auto strips = [&](char c) {
    if (chars.undefined || chars.data.is_null()) return is_python_space(c);
    return chars.data.get_ref<const std::string&>().find(c) != std::string::npos;
  };
  std::size_t begin = 0;
  std::size_t end = text.size();
  if (left) while (begin < end && strips(text[begin])) ++begin;
  if (right) while (end > begin && strips(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

json split(const std::string& text, const Value& separator, long long max_splits) {
  json parts = json::array();
  if (separator.undefined || separator.data.is_null()) {
    std::size_t i = 0;
    while (true) {
      while (i < text.size() && is_python_space(text[i])) ++i;
      if (i == text.size()) break;
      if (max_splits >= 0 && static_cast<long long>(parts.size()) == max_splits) {
        parts.push_back(strip(text.substr(i), Value::make_undefined(""), false, true));
        break;
      }
      std::size_t end = i;
      while (end < text.size() && !is_python_space(text[end])) ++end;
      parts.push_back(text.substr(i, end - i));
      i = end;
    }
    return parts;
  }
  const std::string& sep = expect_string(separator, "separator");
  if (sep.empty()) builtin_error("empty separator");
  std::size_t start = 0;
  while (max_splits < 0 || static_cast<long long>(parts.size()) < max_splits) {
    const std::size_t found = text.find(sep, start);
    if (found == std::string::npos) break;
    parts.push_back(text.substr(start, found - start));
    start = found + sep.size();
  }
  parts.push_back(text.substr(start));
  return parts;
}

std::string change_case(std::string text, int (*convert)(int)) {
  for (char& c : text) c = static_cast<char>(convert(static_cast<unsigned char>(c)));
  return text;
}

std::string capitalize(const std::string& text) {
  std::string out = change_case(text, ::tolower);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

std::string title(const std::string& text) {
  std::string out = text;
  bool previous_letter = false;
  for (char& c : out) {
    const bool letter = std::isalpha(static_cast<unsigned char>(c));
    c = static_cast<char>(letter && !previous_letter ? std::toupper(static_cast<unsigned char>(c))
                                                     : std::tolower(static_cast<unsigned char>(c)));
    previous_letter = letter;
  }
  return out;
}

std::string replace(const std::string& text, const std::string& old, const std::string& replacement, long long count) {
  if (old.empty()) builtin_error("replacing an empty string is not supported");
  std::string out;
  std::size_t start = 0;
  for (long long done = 0; count < 0 || done < count; ++done) {
    const std::size_t found = text.find(old, start);
    if (found == std::string::npos) break;
    out += text.substr(start, found - start) + replacement;
    start = found + old.size();
  }
  return out + text.substr(start);
}

bool starts_or_ends(const std::string& text, const Value& affix, bool at_start) {
  auto matches = [&](const json& candidate) {
    if (!candidate.is_string()) builtin_error("prefix/suffix must be a string or a list of strings");
    const std::string& s = candidate.get_ref<const std::string&>();
    if (s.size() > text.size()) return false;
    return at_start ? text.compare(0, s.size(), s) == 0 : text.compare(text.size() - s.size(), s.size(), s) == 0;
  };
  if (affix.data.is_array())
    return std::any_of(affix.data.begin(), affix.data.end(), matches);
  return matches(affix.data);
}

json as_list(const Value& value) {
  if (value.undefined) return json::array();
  const json data = value.to_json();
  if (data.is_array()) return data;
  json list = json::array();
  if (data.is_string()) {
    for (auto& c : utf8_characters(data.get<std::string>())) list.push_back(c);
  } else if (data.is_object()) {
    for (const auto& [key, unused] : data.items()) list.push_back(key);
  } else {
    builtin_error("expected a list, string or dict");
  }
  return list;
}

// `attribute` may be dotted ("function.name"), as in Jinja2's selectattr/map/sort.
json attribute_of(const json& item, const std::string& attribute) {
  json current = item;
  std::size_t start = 0;
  while (start <= attribute.size()) {
    const std::size_t dot = std::min(attribute.find('.', start), attribute.size());
    const std::string key = attribute.substr(start, dot - start);
    if (!current.is_object() || !current.contains(key)) return json();
    current = json(current[key]);
    start = dot + 1;
  }
  return current;
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
  return out;
}

using Filter = std::function<Value(const Value&, const Arguments&, const KeywordArguments&)>;

Value select_by_attribute(const Value& input, const Arguments& args, bool keep_matching) {
  if (args.empty()) builtin_error("needs an attribute name");
  const std::string attribute = expect_string(args[0], "attribute").get<std::string>();
  json kept = json::array();
  for (const auto& item : as_list(input)) {
    const json field = attribute_of(item, attribute);
    bool matches;
    if (args.size() < 2) {
      matches = truthy(Value(field));
    } else {
      const std::string test = expect_string(args[1], "test").get<std::string>();
      Arguments test_args(args.begin() + 2, args.end());
      matches = apply_test(test, field.is_null() && !item.contains(attribute) ? Value::make_undefined(attribute)
                                                                                : Value(field),
                           test_args);
    }
    if (matches == keep_matching) kept.push_back(item);
  }
  return Value(std::move(kept));
}

const std::map<std::string, Filter>& filters() {
  static const std::map<std::string, Filter> all = {
      {"length", [](const Value& in, const Arguments&, const KeywordArguments&) {
         if (in.undefined) return Value(0);
         const json data = in.to_json();
         if (data.is_string()) return Value(utf8_characters(data.get<std::string>()).size());
         if (data.is_array() || data.is_object()) return Value(data.size());
         builtin_error("needs a string, list or dict");
       }},
      {"tojson", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const Value indent = argument(a, k, 0, "indent", Value(nullptr));
         std::string out;
         append_json(out, in.to_json(), indent.data.is_null() ? -1 : static_cast<int>(expect_integer(indent, "indent")), 0);
         return Value(out);
       }},
      {"trim", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         return Value(strip(to_display_string(in), argument(a, k, 0, "chars"), true, true));
       }},
      {"default", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const bool boolean = truthy(argument(a, k, 1, "boolean", Value(false)));
         if (in.undefined || (boolean && !truthy(in))) return argument(a, k, 0, "default_value", Value(""));
         return in;
       }},
      {"join", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const Value separator = argument(a, k, 0, "d", Value(""));
         const Value attribute = argument(a, k, 1, "attribute", Value(nullptr));
         std::string out;
         bool first = true;
         for (const auto& item : as_list(in)) {
           if (!first) out += to_display_string(separator);
           first = false;
           out += to_display_string(Value(attribute.data.is_string() ? attribute_of(item, attribute.data.get<std::string>()) : item));
         }
         return Value(out);
       }},
      {"upper", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(change_case(to_display_string(in), ::toupper)); }},
      {"lower", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(change_case(to_display_string(in), ::tolower)); }},
      {"capitalize", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(capitalize(to_display_string(in))); }},
      {"title", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(title(to_display_string(in))); }},
      {"string", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(to_display_string(in)); }},
      {"safe", [](const Value& in, const Arguments&, const KeywordArguments&) { return in; }},
      {"escape", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(html_escape(to_display_string(in))); }},
      {"list", [](const Value& in, const Arguments&, const KeywordArguments&) { return Value(as_list(in)); }},
      {"first", [](const Value& in, const Arguments&, const KeywordArguments&) {
         const json list = as_list(in);
         return list.empty() ? Value::make_undefined("first") : Value(list.front());
       }},
      {"last", [](const Value& in, const Arguments&, const KeywordArguments&) {
         const json list = as_list(in);
         return list.empty() ? Value::make_undefined("last") : Value(list.back());
       }},
      {"reverse", [](const Value& in, const Arguments&, const KeywordArguments&) {
         if (in.data.is_string()) {
           auto characters = utf8_characters(in.data.get<std::string>());
           std::string out;
           for (auto c = characters.rbegin(); c != characters.rend(); ++c) out += *c;
           return Value(out);
         }
         json list = as_list(in);
         std::reverse(list.begin(), list.end());
         return Value(list);
       }},
      {"items", [](const Value& in, const Arguments&, const KeywordArguments&) {
         const json data = in.to_json();
         if (!data.is_object()) builtin_error("needs a dict");
         json pairs = json::array();
         for (const auto& [key, value] : data.items()) pairs.push_back(json::array({key, value}));
         return Value(pairs);
       }},
      {"int", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const json& d = in.data;
         if (d.is_number()) return Value(static_cast<long long>(d.get<double>()));
         if (d.is_string()) {
           try {
             return Value(std::stoll(d.get<std::string>()));
           } catch (const std::exception&) {
           }
         }
         return argument(a, k, 0, "default", Value(0));
       }},
      {"float", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const json& d = in.data;
         if (d.is_number()) return Value(d.get<double>());
         if (d.is_string()) {
           try {
             return Value(std::stod(d.get<std::string>()));
           } catch (const std::exception&) {
           }
         }
         return argument(a, k, 0, "default", Value(0.0));
       }},
      {"abs", [](const Value& in, const Arguments&, const KeywordArguments&) {
         if (in.data.is_number_float()) return Value(std::fabs(in.data.get<double>()));
         if (in.data.is_number()) return Value(std::llabs(in.data.get<long long>()));
         builtin_error("needs a number");
       }},
      {"replace", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const Value count = argument(a, k, 2, "count", Value(-1));
         return Value(replace(to_display_string(in), expect_string(argument(a, k, 0, "old"), "old"),
                              expect_string(argument(a, k, 1, "new"), "new"), expect_integer(count, "count")));
       }},
      {"selectattr", [](const Value& in, const Arguments& a, const KeywordArguments&) { return select_by_attribute(in, a, true); }},
      {"rejectattr", [](const Value& in, const Arguments& a, const KeywordArguments&) { return select_by_attribute(in, a, false); }},
      {"map", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const Value attribute = argument({}, k, 0, "attribute");
         json mapped = json::array();
         for (const auto& item : as_list(in)) {
           if (!attribute.undefined) {
             mapped.push_back(attribute_of(item, expect_string(attribute, "attribute").get<std::string>()));
           } else {
             if (a.empty()) builtin_error("needs a filter name or attribute=");
             const std::string name = expect_string(a[0], "filter name").get<std::string>();
             if (!has_filter(name) || name == "map") builtin_error("unknown filter '" + name + "'");
             mapped.push_back(apply_filter(name, Value(item), Arguments(a.begin() + 1, a.end()), {}).to_json());
           }
         }
         return Value(mapped);
       }},
      {"unique", [](const Value& in, const Arguments&, const KeywordArguments&) {
         json kept = json::array();
         for (const auto& item : as_list(in))
           if (std::find(kept.begin(), kept.end(), item) == kept.end()) kept.push_back(item);
         return Value(kept);
       }},
      {"indent", [](const Value& in, const Arguments& a, const KeywordArguments& k) {
         const std::string pad(static_cast<std::size_t>(expect_integer(argument(a, k, 0, "width", Value(4)), "width")), ' ');
         const bool first = truthy(argument(a, k, 1, "first", Value(false)));
         const std::string text = to_display_string(in);
         std::string out = first && !text.empty() ? pad : "";
         for (std::size_t i = 0; i < text.size(); ++i) {
           out += text[i];
           // Jinja2 leaves blank lines unindented unless blank=True.
           if (text[i] == '\n' && i + 1 < text.size() && text[i + 1] != '\n') out += pad;
         }
         return Value(out);
       }},
  };
  return all;
}

std::string display_key(const std::string& name) {
  if (name == "d") return "default";
  if (name == "count") return "length";
  if (name == "e") return "escape";
  return name;
}

}  // namespace

std::string to_display_string(const Value& value) {
  if (value.undefined) return "";
  const json data = value.to_json();
  if (data.is_string()) return data.get<std::string>();
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
      for (std::size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + python_repr(value[i]);
      return out + "]";
    }
    case json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        out += (first ? "" : ", ") + quote_python(key) + ": " + python_repr(item);
        first = false;
      }
      return out + "}";
    }
    default: return value.dump();
  }
}

std::string to_json_text(const json& value, int indent) {
  std::string out;
  append_json(out, value, indent, 0);
  return out;
}

bool has_filter(const std::string& name) { return filters().count(display_key(name)) > 0; }

Value apply_filter(const std::string& name, const Value& input, const Arguments& args, const KeywordArguments& kwargs) {
  return filters().at(display_key(name))(input, args, kwargs);
}

namespace {

using Test = std::function<bool(const Value&, const Arguments&)>;

const Value& test_argument(const Arguments& args) {
  if (args.empty()) builtin_error("needs an argument");
  return args[0];
}

const std::map<std::string, Test>& tests() {
  static const std::map<std::string, Test> all = {
      {"defined", [](const Value& v, const Arguments&) { return !v.undefined; }},
      {"undefined", [](const Value& v, const Arguments&) { return v.undefined; }},
      {"none", [](const Value& v, const Arguments&) { return !v.undefined && !v.is_namespace() && v.data.is_null(); }},
      {"string", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_string(); }},
      {"number", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_number(); }},
      {"integer", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_number_integer(); }},
      {"float", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_number_float(); }},
      {"boolean", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_boolean(); }},
      {"true", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_boolean() && v.data.get<bool>(); }},
      {"false", [](const Value& v, const Arguments&) { return !v.undefined && v.data.is_boolean() && !v.data.get<bool>(); }},
      {"mapping", [](const Value& v, const Arguments&) { return !v.undefined && (v.is_namespace() || v.data.is_object()); }},
      {"sequence", [](const Value& v, const Arguments&) { return !v.undefined && (v.data.is_array() || v.data.is_string() || v.data.is_object()); }},
      {"iterable", [](const Value& v, const Arguments&) { return v.undefined || v.data.is_array() || v.data.is_string() || v.data.is_object(); }},
      {"equalto", [](const Value& v, const Arguments& a) { return !v.undefined && v.to_json() == test_argument(a).to_json(); }},
      {"ne", [](const Value& v, const Arguments& a) { return v.undefined || v.to_json() != test_argument(a).to_json(); }},
      {"odd", [](const Value& v, const Arguments&) { return expect_integer(v, "value") % 2 != 0; }},
      {"even", [](const Value& v, const Arguments&) { return expect_integer(v, "value") % 2 == 0; }},
      {"divisibleby", [](const Value& v, const Arguments& a) {
         const long long divisor = expect_integer(test_argument(a), "divisor");
         if (divisor == 0) builtin_error("division by zero");
         return expect_integer(v, "value") % divisor == 0;
       }},
      {"in", [](const Value& v, const Arguments& a) {
         const json container = test_argument(a).to_json();
         const json needle = v.to_json();
         if (container.is_string())
           return needle.is_string() && container.get<std::string>().find(needle.get<std::string>()) != std::string::npos;
         if (container.is_object()) return needle.is_string() && container.contains(needle.get<std::string>());
         return container.is_array() && std::find(container.begin(), container.end(), needle) != container.end();
       }},
      {"lower", [](const Value& v, const Arguments&) { const std::string s = expect_string(v, "value"); return s == change_case(s, ::tolower); }},
      {"upper", [](const Value& v, const Arguments&) { const std::string s = expect_string(v, "value"); return s == change_case(s, ::toupper); }},
  };
  return all;
}

std::string test_key(const std::string& name) {
  if (name == "eq" || name == "==" || name == "sameas") return "equalto";
  if (name == "!=") return "ne";
  return name;
}

}  // namespace

bool has_test(const std::string& name) { return tests().count(test_key(name)) > 0; }

bool apply_test(const std::string& name, const Value& input, const Arguments& args) {
  auto found = tests().find(test_key(name));
  if (found == tests().end()) builtin_error("unknown test '" + name + "'");
  return found->second(input, args);
}

Value call_method(const Value& object, const std::string& method, const Arguments& args, const KeywordArguments& kwargs) {
  const json data = object.to_json();
  if (data.is_string()) {
    const std::string& text = data.get_ref<const std::string&>();
    if (method == "strip" || method == "lstrip" || method == "rstrip") {
      const Value chars = argument(args, kwargs, 0, "chars");
      if (!chars.undefined && !chars.data.is_null()) expect_string(chars, "chars");
      return Value(strip(text, chars, method != "rstrip", method != "lstrip"));
    }
    if (method == "split")
      return Value(split(text, argument(args, kwargs, 0, "sep"),
                         expect_integer(argument(args, kwargs, 1, "maxsplit", Value(-1)), "maxsplit")));
    if (method == "startswith" || method == "endswith")
      return Value(starts_or_ends(text, argument(args, kwargs, 0, "prefix", Value(nullptr)), method == "startswith"));
    if (method == "upper") return Value(change_case(text, ::toupper));
    if (method == "lower") return Value(change_case(text, ::tolower));
    if (method == "title") return Value(title(text));
    if (method == "capitalize") return Value(capitalize(text));
    if (method == "replace")
      return Value(replace(text, expect_string(argument(args, kwargs, 0, "old"), "old"),
                           expect_string(argument(args, kwargs, 1, "new"), "new"),
                           expect_integer(argument(args, kwargs, 2, "count", Value(-1)), "count")));
    if (method == "find" || method == "count") {
      const std::string& needle = expect_string(argument(args, kwargs, 0, "sub"), "substring");
      if (method == "find") {
        const std::size_t at = text.find(needle);
        return Value(at == std::string::npos ? -1LL : static_cast<long long>(utf8_characters(text.substr(0, at)).size()));
      }
      if (needle.empty()) return Value(utf8_characters(text).size() + 1);
      long long count = 0;
      for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++count;
      return Value(count);
    }
    if (method == "join") {
      std::string out;
      bool first = true;
      for (const auto& item : as_list(argument(args, kwargs, 0, "iterable"))) {
        if (!item.is_string()) builtin_error("join() items must be strings");
        out += (first ? "" : text) + item.get<std::string>();
        first = false;
      }
      return Value(out);
    }
    if (method == "splitlines") {
      json lines = split(text, Value("\n"), -1);
      if (!lines.empty() && lines.back() == "") lines.erase(lines.end() - 1);
      return Value(lines);
    }
    if (method == "isdigit" || method == "isspace" || method == "isalpha") {
      int (*predicate)(int) = method == "isdigit" ? ::isdigit : method == "isspace" ? ::isspace : ::isalpha;
      return Value(!text.empty() && std::all_of(text.begin(), text.end(),
                                                [&](char c) { return predicate(static_cast<unsigned char>(c)) != 0; }));
    }
  } else if (data.is_object() && !object.is_namespace()) {
    if (method == "items") return apply_filter("items", object, {}, {});
    if (method == "keys" || method == "values") {
      json list = json::array();
      for (const auto& [key, value] : data.items()) list.push_back(method == "keys" ? json(key) : value);
      return Value(list);
    }
    if (method == "get") {
      const std::string& key = expect_string(argument(args, kwargs, 0, "key"), "key");
      return data.contains(key) ? Value(data[key]) : argument(args, kwargs, 1, "default", Value(nullptr));
    }
  }
  builtin_error("unknown method");
}

}  // namespace dsv3::jinja
