// How builtins read their arguments; the one table of filters (jinja_filters_*.cpp and jinja_json.cpp fill it).
#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {

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
               Value fallback) {
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

double to_double(const Value& value, const char* what) {
  if (!value.is_data() || !(value.data().is_number() || value.data().is_boolean()))
    builtin_error(std::string(what) + " must be a number, not " + type_name(value));
  if (value.data().is_boolean()) return value.data().get<bool>() ? 1.0 : 0.0;
  return value.data().get<double>();
}

namespace {

const FilterTable& filters() {
  static const FilterTable all = [] {
    FilterTable table;
    add_text_filters(table);
    add_sequence_filters(table);
    add_json_filters(table);
    return table;
  }();
  return all;
}

std::string filter_key(const std::string& name) {
  if (name == "d") return "default";
  if (name == "count") return "length";
  if (name == "e") return "escape";
  return name;
}

}  // namespace

bool has_filter(const std::string& name) { return filters().count(filter_key(name)) > 0; }

Value apply_filter(Interpreter& interpreter, const std::string& name, const Value& input, const Arguments& args,
                   const KeywordArguments& kwargs) {
  auto found = filters().find(filter_key(name));
  if (found == filters().end()) builtin_error("no filter named '" + name + "'");
  return found->second(interpreter, input, args, kwargs);
}

}  // namespace dsv3::jinja
