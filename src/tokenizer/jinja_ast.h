#pragma once
// Internal to tokenizer/: the Jinja subset behind chat templates, in three stages.
//   jinja_lexer.cpp   template text -> tokens (text runs, tag delimiters, expression tokens)
//   jinja_parser.cpp  tokens -> a tree of statements and expressions
//   jinja_eval.cpp    tree + context -> output text; jinja_builtins.cpp holds filters, tests, methods
// Values are nlohmann::json, plus two things JSON cannot express: Jinja's `undefined`, and
// `namespace()` objects, which `{% set ns.attr = ... %}` mutates from inside loop scopes.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv3::jinja {

using json = nlohmann::json;

// A byte offset into the template; turned into line and column only when an error is reported.
using Offset = std::size_t;

// Throws dsv3::Error naming the line and column of `offset` in `source`.
[[noreturn]] void fail_at(std::string_view source, Offset offset, const std::string& message);

enum class TokenKind {
  text,           // literal template text (whitespace control already applied)
  block_begin,    // {%
  block_end,      // %}
  variable_begin, // {{
  variable_end,   // }}
  name,
  string,
  integer,
  floating,
  op,             // punctuation and operators: + - * / // % ** ~ == != < <= > >= = ( ) [ ] { } , . : |
  end_of_input,
};

struct Token {
  TokenKind kind;
  std::string text;  // decoded value for strings, spelling otherwise
  Offset where;
};

// HF renders chat templates with trim_blocks and lstrip_blocks on, so those are the defaults.
struct LexerOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

std::vector<Token> tokenize(std::string_view source, LexerOptions options = {});

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    literal,      // value
    name,         // name
    list,         // args
    dict,         // args: key0, value0, key1, value1, ...
    attribute,    // args[0].name
    subscript,    // args[0][args[1]]
    slice,        // args[0][args[1]:args[2]:args[3]], absent parts are null pointers
    call,         // args[0](args[1..], kwargs)
    filter,       // args[0] | name(args[1..], kwargs)
    test,         // args[0] is [not] name(args[1..])
    unary,        // name in {not, -, +} applied to args[0]
    binary,       // args[0] name args[1]; name is an operator, `and`, `or`, `in`, `not in`
    conditional,  // args[0] if args[1] else args[2] (args[2] may be null)
  };
  Kind kind;
  Offset where;
  json value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind {
    text,       // text
    output,     // {{ expr }}
    if_chain,   // branches: (condition, body)...; a null condition is the else branch
    for_loop,   // for targets in expr [if filter]: body [else: else_body]
    set,        // set targets = expr (several targets unpack a sequence)
    set_attr,   // set targets[0].attribute = expr
    loop_break,
    loop_continue,
  };
  Node(Kind kind, Offset where) : kind(kind), where(where) {}
  Kind kind;
  Offset where;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attribute;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

Body parse(std::string_view source, const std::vector<Token>& tokens);

// The runtime value: JSON data, Jinja's undefined, or a shared mutable namespace object.
struct Value {
  json data;
  std::shared_ptr<json> namespace_object;
  bool undefined = false;
  std::string undefined_name;  // what was looked up, for error messages

  Value() = default;
  Value(json value) : data(std::move(value)) {}  // NOLINT: values are built from json everywhere
  static Value make_undefined(std::string name) {
    Value value;
    value.undefined = true;
    value.undefined_name = std::move(name);
    return value;
  }
  bool is_namespace() const { return namespace_object != nullptr; }
  // The JSON view; a namespace becomes its attributes, undefined becomes null.
  json to_json() const;
};

// Helpers shared by the evaluator and the builtins.
bool truthy(const Value& value);
std::string to_display_string(const Value& value);  // Python's str(): what {{ }} prints
std::string python_repr(const json& value);         // Python's repr(), used inside lists and dicts
// HF's tojson: json.dumps(ensure_ascii=False), no key sorting beyond nlohmann's own order.
std::string to_json_text(const json& value, int indent);
std::vector<std::string> utf8_characters(const std::string& text);

// Raised by builtins; the evaluator adds the position of the call.
struct BuiltinError {
  std::string message;
};

using Arguments = std::vector<Value>;
using KeywordArguments = std::vector<std::pair<std::string, Value>>;

bool has_filter(const std::string& name);
Value apply_filter(const std::string& name, const Value& input, const Arguments& args,
                   const KeywordArguments& kwargs);
bool has_test(const std::string& name);
bool apply_test(const std::string& name, const Value& input, const Arguments& args);
Value call_method(const Value& object, const std::string& method, const Arguments& args,
                  const KeywordArguments& kwargs);

std::string render(std::string_view source, const Body& body, const json& context);

}  // namespace dsv3::jinja
