// The filters on lists and dicts (length, join, sort, map, select, unique, groupby...).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <unordered_set>
#include <utility>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

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

}  // namespace

void add_sequence_filters(FilterTable& table) {
  using namespace filter_parameters;
  table.insert({
      {"length", [](I&, const Value& in, const A&, const K&) {
         if (in.undefined) return Value(0);
         if (!in.is_data() && !in.is_namespace()) builtin_error("object of type '" + type_name(in) + "' has no len()");
         const json& data = in.view();
         if (data.is_string()) return Value(utf8_length(data.get_ref<const std::string&>()));
         if (data.is_array() || data.is_object()) return Value(data.size());
         builtin_error("object of type '" + type_name(in) + "' has no len()");
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
  });
}

}  // namespace dsv3::jinja
