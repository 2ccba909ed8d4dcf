#pragma once
// Internal to the builtins (jinja_builtins.cpp and the jinja_values, _strings, _json, _filters_*,
// _tests and _methods files): the helpers more than one of them uses.
// Builtins follow Python's semantics (Jinja2 evaluates templates as Python: str() of True is "True",
// split() without a separator splits on runs of whitespace, negative indices count from the end).
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>

#include "tokenizer/jinja_ast.h"

namespace dsv3::jinja {

[[noreturn]] inline void builtin_error(const std::string& message) { throw BuiltinError{message}; }

inline void check_string_size(std::size_t size) {
  if (size > Limits::string_bytes)
    builtin_error("string longer than " + std::to_string(Limits::string_bytes) + " bytes");
}

// jinja_values.cpp
void check_list_size(const json& list);
std::string float_repr(double value);  // Python's repr(float)
json as_list(const Value& value);      // Python's list(value): a string's characters, a dict's keys

// jinja_strings.cpp
std::uint32_t next_code_point(const std::string& text, std::size_t& i);
std::uint32_t to_upper(std::uint32_t c);
std::uint32_t to_lower(std::uint32_t c);
bool is_cased_letter(std::uint32_t c);
enum class Case { upper, lower, title, capitalize, swap };
std::string change_case(const std::string& text, Case mode);
bool is_python_space(char c);
bool is_space_character(const std::string& c);  // str.isspace() of one character
std::string strip(const std::string& text, const Value& chars, bool left, bool right);
std::string replace(const std::string& text, const std::string& old, const std::string& replacement,
                    std::int64_t count);
std::string pad_center(const std::string& text, std::int64_t width, const std::string& fill, int where);
std::string percent_format_impl(const std::string& format, const Arguments& args, const KeywordArguments& kwargs);
std::string brace_format(const std::string& format, const Arguments& args, const KeywordArguments& kwargs);

// jinja_builtins.cpp: reading a builtin's arguments.
const json& expect_string(const Value& value, const char* what);
std::int64_t expect_integer(const Value& value, const char* what);
Value argument(const Arguments& args, const KeywordArguments& kwargs, std::size_t index, const char* name,
               Value fallback = Value::make_undefined("argument"));
void check_arguments(const Arguments& args, const KeywordArguments& kwargs, std::initializer_list<const char*> names);
double to_double(const Value& value, const char* what);

// The filters, in one table that each file of filters adds its own to.
using Filter = std::function<Value(Interpreter&, const Value&, const Arguments&, const KeywordArguments&)>;
using FilterTable = std::map<std::string, Filter>;
void add_text_filters(FilterTable& table);      // jinja_filters_text.cpp
void add_sequence_filters(FilterTable& table);  // jinja_filters_sequence.cpp
void add_json_filters(FilterTable& table);      // jinja_json.cpp: tojson

// The short names the tables' lambdas give their parameter types.
namespace filter_parameters {
using I = Interpreter;
using A = Arguments;
using K = KeywordArguments;
}  // namespace filter_parameters

}  // namespace dsv3::jinja
