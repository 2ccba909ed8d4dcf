#pragma once
// Internal to the evaluator: the Renderer, its statements, loops and macros in jinja_eval.cpp, its
// expressions in jinja_eval_expr.cpp. Scoping follows Jinja2: a for loop opens a scope that `set`
// inside it cannot see out of (hence namespace() objects, which templates use to carry state out of
// loops); `if` opens none; a macro sees its arguments and the template's top level, not its caller's
// locals. Operations on undefined values fail with the variable's name, except where Jinja2's
// default Undefined is lenient: printing (empty), truth tests (false), iteration (empty).
// Integers are Python's within 64 bits: a result that does not fit is an error, never a wrap.
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja_ast.h"

namespace dsv3::jinja {

struct LoopState {
  std::vector<Value> items;
  std::size_t depth0 = 0;
  bool changed_seen = false;
  json changed_last;
};

using Scope = std::map<std::string, Value, std::less<>>;

class Renderer final : public Interpreter {
 public:
  Renderer(std::string_view source, const json& context, const RenderOptions& options);
  std::string run(const Body& body) {
    exec(body);
    return std::move(out_);
  }

  Value filter(const std::string& name, const Value& input, const Arguments& args,
               const KeywordArguments& kwargs) override;
  bool test(const std::string& name, const Value& input, const Arguments& args) override;
  std::time_t now() const override { return options_.now ? *options_.now : std::time(nullptr); }

 private:
  enum class Flow { normal, loop_break, loop_continue };

  // Counts evaluation depth (the C++ stack this render uses) and steps (its running time).
  class Depth {
   public:
    Depth(Renderer& renderer, Offset where) : renderer_(renderer) {
      renderer_.step(where);
      if (++renderer_.depth_ > kMaxDepth)
        renderer_.error(where, "evaluation nested more than " + std::to_string(kMaxDepth) + " levels deep");
    }
    ~Depth() { --renderer_.depth_; }
    Depth(const Depth&) = delete;
    Depth& operator=(const Depth&) = delete;

   private:
    Renderer& renderer_;
  };
  static constexpr std::size_t kMaxDepth = 1500;

  void step(Offset where) {
    if (++steps_ > steps_limit_)
      error(where, "the template ran for more than " + std::to_string(steps_limit_) + " evaluation steps");
  }

  [[noreturn]] void error(Offset where, const std::string& message) const { fail_at(source_, where, message); }

  void require_defined(const Value& value, Offset where) const {
    if (value.undefined) error(where, "'" + value.undefined_name + "' is undefined");
  }

  // Runs a builtin, turning its BuiltinError into an error at `where`.
  template <typename Function>
  auto guard(Offset where, Function function, const std::string& prefix = "") -> decltype(function()) {
    try {
      return function();
    } catch (const BuiltinError& e) {
      error(where, prefix + e.message);
    }
  }

  void set_variable(const std::string& name, Value value) { scopes_.back()[name] = std::move(value); }

  // jinja_eval.cpp: statements, loops, macros, and the limits on a render.
  void emit(const std::string& text, Offset where);
  std::string capture(const Body& body);
  Flow exec(const Body& body);
  Flow exec(const Node& node);
  std::string display(const Value& value, Offset where);
  json storable(const Value& value, Offset where);
  void assign(const std::vector<std::string>& targets, const Value& value, Offset where);
  std::vector<Value> items_of(const Value& iterable, Offset where);
  Flow exec_for(const Node& node);
  void count_iteration(Offset where);
  Value* find(const std::string& name);
  Value loop_attribute(const Value& loop, const std::string& name, Offset where);
  Value call_loop_method(const Value& loop, const std::string& name, const Arguments& args, Offset where);
  Value call_macro(const Value& function, const Arguments& args, const KeywordArguments& kwargs, Offset where,
                   const Value* caller = nullptr);
  Value call_caller(const Value& function, Scope scope);
  std::size_t check(const json& value, Offset where);
  void charge(std::size_t bytes, Offset where);
  void charge_scan(const Value& value, Offset where);
  void charge_result(const Value& result, Offset where);

  // jinja_eval_expr.cpp: expressions.
  Value eval(const Expr& expr);
  Value eval_filter(const Expr& expr, const Value& input);
  Value eval_filter_chain(const Expr& chain, const Value& input);
  Value get_attribute(const Value& object, const std::string& name, Offset where);
  Value get_item(const Value& object, const Value& key_value, Offset where);
  Value eval_slice(const Expr& expr);
  std::pair<Arguments, KeywordArguments> eval_arguments(const Expr& expr);
  Value eval_call(const Expr& expr);
  Value call_global(const std::string& name, const Arguments& args, const KeywordArguments& kwargs, Offset where);
  Value eval_unary(const Expr& expr);
  bool compare(const std::string& op, const Value& left, const Value& right, Offset where);
  Value eval_binary(const Expr& expr);
  std::string concatenate(const std::string& a, const std::string& b, Offset where);
  Value repeat(const json& sequence, const json& times, Offset where);
  bool contains(const Value& container, const Value& item, Offset where);

  std::string_view source_;
  RenderOptions options_;
  std::vector<Scope> scopes_;
  std::size_t scope_floor_ = 0;  // scopes below this belong to a macro's caller (except the top level)
  std::string out_;
  std::size_t captured_ = 0;
  std::size_t depth_ = 0;
  std::size_t steps_ = 0;
  std::size_t steps_limit_ = Limits::steps;
  std::size_t loop_limit_ = Limits::loop_iterations;
  std::size_t loop_iterations_ = 0;
  std::size_t call_depth_ = 0;
  std::size_t work_bytes_ = 0;
  std::size_t work_limit_ = Limits::work_bytes;
  Offset current_ = 0;
};

}  // namespace dsv3::jinja
