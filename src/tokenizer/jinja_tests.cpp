// Jinja2's tests (`x is defined`, `x is divisibleby(3)`, `x is in(y)`...).
#include <algorithm>
#include <functional>
#include <map>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
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

}  // namespace

bool has_test(const std::string& name) { return tests().count(test_key(name)) > 0; }

bool apply_test(Interpreter&, const std::string& name, const Value& input, const Arguments& args) {
  auto found = tests().find(test_key(name));
  if (found == tests().end()) builtin_error("no test named '" + name + "'");
  return found->second(input, args);
}

}  // namespace dsv3::jinja
