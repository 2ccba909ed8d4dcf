#pragma once
// Internal to tokenizer/: the Jinja subset behind chat templates, in three stages.
//   jinja_lexer.cpp   template text -> tokens (text runs, tag delimiters, expression tokens)
//   jinja_parser.cpp  tokens -> a tree of statements and expressions
//   jinja_eval.cpp    tree + context -> output text: statements here, expressions in
//                     jinja_eval_expr.cpp, the Renderer they share in jinja_renderer.h
// The builtins (filters, tests, str/dict methods) are the other jinja_*.cpp files, sharing
// jinja_internal.h; jinja_builtins.cpp holds their argument helpers and the filter table.
// Values are nlohmann::ordered_json (Python dicts keep insertion order, and `tojson` of tool
// arguments must too), plus what JSON cannot express: Jinja's `undefined`, `namespace()` objects
// (which `{% set ns.attr = ... %}` mutates from inside loop scopes), the `loop` object and macros.
// Templates are untrusted (they come with model folders and from clients), so every resource a
// template can grow is bounded by a limit below, reported as an error naming line and column.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv3::jinja {

using json = nlohmann::ordered_json;

// Bounds on what a template may use. The range bound is Jinja2's sandbox MAX_RANGE; the others
// are far above what any published chat template needs and low enough that a hostile template
// fails in well under a second, without exhausting the stack or memory.
struct Limits {
  static constexpr std::size_t template_bytes = 256u << 10;  // the source (published ones are under 32 KiB)
  static constexpr std::size_t nesting = 100;            // parser: nested blocks/brackets/operators
  static constexpr std::size_t value_depth = 200;         // nested lists/dicts in one value
  static constexpr std::size_t call_depth = 64;           // macro calls inside macro calls
  // Work grows with the conversation, so these two grow with the context's size (estimated bytes,
  // as check_value_size counts them): a hostile template with a small context stops early, a
  // 16000-turn chat through a real template still renders.
  static constexpr std::size_t loop_iterations = 50'000;   // all loops of one render, plus 1 per 4 bytes of context
  static constexpr std::size_t steps = 100'000;            // evaluated nodes in one render, plus 4 per byte of context
  static constexpr std::size_t range = 100'000;           // items of one range()
  static constexpr std::size_t string_bytes = 16u << 20;  // one string value
  static constexpr std::size_t value_bytes = 64u << 20;   // one list or dict (estimated)
  static constexpr std::size_t output_bytes = 16u << 20;  // the rendered text (~4M tokens)
  static constexpr std::size_t work_bytes = 32u << 20;    // strings and lists built or scanned, together; plus 8 per byte of context
};

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
    tuple,        // args (a list that prints as a Python tuple)
    dict,         // args: key0, value0, key1, value1, ...
    attribute,    // args[0].name
    subscript,    // args[0][args[1]]
    slice,        // args[0][args[1]:args[2]:args[3]], absent parts are null pointers
    call,         // args[0](args[1..], kwargs)
    filter,       // args[0] | name(args[1..], kwargs)
    test,         // args[0] is [not] name(args[1..])
    unary,        // name in {not, -, +} applied to args[0]
    binary,       // args[0] name args[1]; name is an operator, `and`, `or`, `in`, `not in`
    compare,      // args[0] ops[0] args[1] ops[1] args[2]...: Python's chained comparison
    conditional,  // args[0] if args[1] else args[2] (args[2] may be null)
  };
  Kind kind;
  Offset where;
  json value;
  std::shared_ptr<const json> shared_value;  // literal: `value`, shared by every evaluation
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // compare: the operators between args
  bool negated = false;
  std::size_t depth = 1;  // of the tree below, bounded so evaluating and freeing it cannot overflow the stack
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
    set_block,  // set targets[0] [| filters in expr] %} body {% endset: the rendered body
    macro,      // macro name(targets..., with defaults in defaults) body
    call_block, // call expr (a macro call) with body as `caller()`
    filter_block,  // filter: expr applies filters to the rendered body (expr's innermost input is null)
    with_block,    // with targets = defaults...: body, in a scope of its own
    generation,    // transformers' {% generation %}: renders its body
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
  std::vector<ExprPtr> defaults;
  std::string attribute;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

Body parse(std::string_view source, const std::vector<Token>& tokens);

// A for loop's state that the `loop` object reads; shared by the iterations of one loop.
struct LoopState;

// The runtime value: JSON data, Jinja's undefined, a shared mutable namespace, a loop object, or
// a macro (a callable pointing into the parsed template, which outlives every render).
//
// JSON data is shared and immutable, as Python's values are references: looking a name up, taking
// an item or iterating copies a pointer, not the list (a template that reads `messages` inside a
// loop over messages stays linear).
struct Value {
  std::shared_ptr<json> namespace_object;
  std::shared_ptr<LoopState> loop;
  std::size_t loop_index0 = 0;
  std::size_t loop_length = 0;
  const Node* macro = nullptr;  // a macro, or a {% call %} block as `caller`
  std::size_t caller_scopes = 0;  // caller: how many scopes its call site had, and its macro floor
  std::size_t caller_floor = 0;
  bool undefined = false;
  bool tuple = false;          // a list that prints as a Python tuple: (1, 2)
  bool tuple_items = false;    // a list of pairs that print as tuples: dict.items(), dictsort
  std::string undefined_name;  // what was looked up, for error messages

  Value() = default;
  Value(json value) : shared_(std::make_shared<const json>(std::move(value))) {}  // NOLINT: built from json everywhere
  static Value from_shared(std::shared_ptr<const json> shared) {
    Value value;
    value.shared_ = std::move(shared);
    return value;
  }
  // A part of `parent`'s data (an item, an attribute), sharing its storage.
  static Value part_of(const Value& parent, const json& part) {
    Value value;
    value.shared_ = std::shared_ptr<const json>(parent.shared_, &part);
    return value;
  }
  const json& data() const { return shared_ ? *shared_ : null_json(); }
  static Value make_undefined(std::string name) {
    Value value;
    value.undefined = true;
    value.undefined_name = std::move(name);
    return value;
  }
  static Value make_tuple(json items) {
    Value value(std::move(items));
    value.tuple = true;
    return value;
  }
  bool is_namespace() const { return namespace_object != nullptr; }
  bool is_loop() const { return loop != nullptr; }
  bool is_macro() const { return macro != nullptr; }
  bool is_data() const { return !undefined && !namespace_object && !loop && !macro; }
  // The JSON view; a namespace becomes its attributes, undefined becomes null.
  json to_json() const;
  const json& view() const { return namespace_object ? *namespace_object : data(); }

 private:
  static const json& null_json() {
    static const json null;
    return null;
  }
  std::shared_ptr<const json> shared_;
};

// Helpers shared by the evaluator and the builtins.
bool truthy(const Value& value);
std::string to_display_string(const Value& value);  // Python's str(): what {{ }} prints
std::string python_repr(const json& value);         // Python's repr(), used inside lists and dicts
std::string type_name(const Value& value);          // Python's name for the type, for messages
// Python's == and <, on JSON values: numbers and booleans compare by value, lists element-wise;
// python_less throws BuiltinError where Python raises TypeError (e.g. 1 < 'a').
bool python_equal(const json& a, const json& b);
bool python_less(const json& a, const json& b);
// HF's tojson: json.dumps(ensure_ascii=False) keeping insertion order, with json.dumps's
// indent, separators and sort_keys.
struct JsonStyle {
  int indent = -1;  // -1: one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string to_json_text(const json& value, const JsonStyle& style = {});
std::vector<std::string> utf8_characters(const std::string& text);
std::size_t utf8_length(const std::string& text);                     // characters, without splitting
std::size_t utf8_offset(const std::string& text, std::size_t index);  // byte where character `index` starts
// Throws BuiltinError when `value` nests deeper than Limits::value_depth or its estimated size
// passes Limits::value_bytes; returns the estimated size in bytes.
std::size_t check_value_size(const json& value);
// Python int semantics on 64 bits: an integer (or boolean) view of a JSON number, and checked
// arithmetic that throws BuiltinError instead of overflowing.
bool integer_of(const json& value, std::int64_t& out);
std::int64_t checked_integer(const json& value, const char* what);

// Raised by builtins; the evaluator adds the position of the call.
struct BuiltinError {
  std::string message;
};

using Arguments = std::vector<Value>;
using KeywordArguments = std::vector<std::pair<std::string, Value>>;

// Filters and tests that need to call back into the renderer (map with a filter name, select with
// a test) get it through this.
class Interpreter {
 public:
  virtual ~Interpreter() = default;
  virtual Value filter(const std::string& name, const Value& input, const Arguments& args,
                       const KeywordArguments& kwargs) = 0;
  virtual bool test(const std::string& name, const Value& input, const Arguments& args) = 0;
  virtual std::time_t now() const = 0;
};

bool has_filter(const std::string& name);
Value apply_filter(Interpreter& interpreter, const std::string& name, const Value& input, const Arguments& args,
                   const KeywordArguments& kwargs);
bool has_test(const std::string& name);
bool apply_test(Interpreter& interpreter, const std::string& name, const Value& input, const Arguments& args);
Value call_method(Interpreter& interpreter, const Value& object, const std::string& method, const Arguments& args,
                  const KeywordArguments& kwargs);
std::string strftime_text(const std::string& format, std::time_t now);
// Python's `format % args`, also the `format` filter.
std::string percent_format(const std::string& format, const Arguments& args, const KeywordArguments& kwargs);

struct RenderOptions {
  std::optional<std::time_t> now;  // the clock strftime_now reads; the current time when absent
};

std::string render(std::string_view source, const Body& body, const json& context, const RenderOptions& options);

}  // namespace dsv3::jinja
