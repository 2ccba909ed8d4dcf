// Tree + context -> text. Scoping follows Jinja2: a for loop opens a scope that `set` inside it
// cannot see out of (hence namespace() objects, which templates use to carry state out of loops);
// `if` opens none. Operations on undefined values fail with the variable's name, except where
// Jinja2's default Undefined is lenient: printing (empty), truth tests (false), iteration (empty).
#include <cmath>
#include <map>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace dsv3::jinja {
namespace {

using Scope = std::map<std::string, Value>;

std::string type_name(const Value& value) {
  if (value.undefined) return "undefined";
  if (value.is_namespace()) return "namespace";
  switch (value.data.type()) {
    case json::value_t::null: return "none";
    case json::value_t::boolean: return "boolean";
    case json::value_t::string: return "string";
    case json::value_t::array: return "list";
    case json::value_t::object: return "dict";
    case json::value_t::number_float: return "float";
    default: return "integer";
  }
}

// Python's index normalisation: negative indices count from the end.
bool normalise_index(long long& index, std::size_t size) {
  if (index < 0) index += static_cast<long long>(size);
  return index >= 0 && index < static_cast<long long>(size);
}

class Renderer {
 public:
  Renderer(std::string_view source, const json& context) : source_(source) {
    if (!context.is_object()) fail("chat template context must be a JSON object, got {}", context.type_name());
    scopes_.emplace_back();
    for (const auto& [key, value] : context.items()) scopes_.back()[key] = Value(value);
  }

  std::string run(const Body& body) {
    exec(body);
    return std::move(out_);
  }

 private:
  enum class Flow { normal, loop_break, loop_continue };

  [[noreturn]] void error(Offset where, const std::string& message) const { fail_at(source_, where, message); }

  void require_defined(const Value& value, Offset where) const {
    if (value.undefined) error(where, "'" + value.undefined_name + "' is undefined");
  }

  Flow exec(const Body& body) {
    for (const Node& node : body) {
      const Flow flow = exec(node);
      if (flow != Flow::normal) return flow;
    }
    return Flow::normal;
  }

  Flow exec(const Node& node) {
    switch (node.kind) {
      case Node::Kind::text: out_ += node.text; return Flow::normal;
      case Node::Kind::output: out_ += to_display_string(eval(*node.expr)); return Flow::normal;
      case Node::Kind::if_chain:
        for (const auto& [condition, body] : node.branches)
          if (!condition || truthy(eval(*condition))) return exec(body);
        return Flow::normal;
      case Node::Kind::for_loop: exec_for(node); return Flow::normal;
      case Node::Kind::set: assign(node.targets, eval(*node.expr), node.where); return Flow::normal;
      case Node::Kind::set_attr: {
        Value value = eval(*node.expr);
        Value* target = find(node.targets[0]);
        if (!target) error(node.where, "'" + node.targets[0] + "' is undefined");
        if (!target->is_namespace())
          error(node.where, "cannot set attribute '" + node.attribute + "' on " + type_name(*target) + " '" +
                                node.targets[0] + "': only namespace() objects take attribute assignment");
        (*target->namespace_object)[node.attribute] = value.to_json();
        return Flow::normal;
      }
      case Node::Kind::loop_break: return Flow::loop_break;
      case Node::Kind::loop_continue: return Flow::loop_continue;
    }
    return Flow::normal;
  }

  void assign(const std::vector<std::string>& targets, const Value& value, Offset where) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = value;
      return;
    }
    const json data = value.to_json();
    if (!data.is_array() || data.size() != targets.size())
      error(where, "cannot unpack " + type_name(value) + " into " + std::to_string(targets.size()) + " names");
    for (std::size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = Value(data[i]);
  }

  std::vector<Value> items_of(const Value& iterable, Offset where) {
    std::vector<Value> items;
    if (iterable.undefined) return items;  // Jinja2's Undefined iterates as empty
    if (iterable.is_namespace()) error(where, "cannot iterate over a namespace");
    const json& data = iterable.data;
    if (data.is_array()) {
      for (const auto& item : data) items.emplace_back(item);
    } else if (data.is_object()) {
      for (const auto& [key, unused] : data.items()) items.emplace_back(key);  // dicts iterate keys
    } else if (data.is_string()) {
      for (auto& character : utf8_characters(data.get<std::string>())) items.emplace_back(character);
    } else {
      error(where, "cannot iterate over " + type_name(iterable));
    }
    return items;
  }

  void exec_for(const Node& node) {
    const std::vector<Value> all = items_of(eval(*node.expr), node.expr->where);
    scopes_.emplace_back();
    std::vector<Value> items;
    for (const Value& item : all) {
      if (node.filter) {
        assign(node.targets, item, node.where);
        if (!truthy(eval(*node.filter))) continue;
      }
      items.push_back(item);
    }
    const std::size_t length = items.size();
    for (std::size_t i = 0; i < length; ++i) {
      assign(node.targets, items[i], node.where);
      json loop = {{"index", i + 1},        {"index0", i},
                   {"revindex", length - i}, {"revindex0", length - i - 1},
                   {"first", i == 0},        {"last", i + 1 == length},
                   {"length", length}};
      if (i > 0) loop["previtem"] = items[i - 1].to_json();
      if (i + 1 < length) loop["nextitem"] = items[i + 1].to_json();
      scopes_.back()["loop"] = Value(std::move(loop));
      if (exec(node.body) == Flow::loop_break) break;
    }
    scopes_.pop_back();
    if (length == 0) exec(node.else_body);
  }

  Value* find(const std::string& name) {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      auto found = scope->find(name);
      if (found != scope->end()) return &found->second;
    }
    return nullptr;
  }

  Value eval(const Expr& expr) {
    switch (expr.kind) {
      case Expr::Kind::literal: return Value(expr.value);
      case Expr::Kind::name: {
        const Value* value = find(expr.name);
        return value ? *value : Value::make_undefined(expr.name);
      }
      case Expr::Kind::list: {
        json list = json::array();
        for (const auto& item : expr.args) list.push_back(eval(*item).to_json());
        return Value(std::move(list));
      }
      case Expr::Kind::dict: {
        json dict = json::object();
        for (std::size_t i = 0; i + 1 < expr.args.size(); i += 2) {
          const Value key = eval(*expr.args[i]);
          if (!key.data.is_string() || key.undefined) error(expr.args[i]->where, "dict keys must be strings");
          dict[key.data.get<std::string>()] = eval(*expr.args[i + 1]).to_json();
        }
        return Value(std::move(dict));
      }
      case Expr::Kind::attribute: return get_item(eval(*expr.args[0]), json(expr.name), expr.where);
      case Expr::Kind::subscript: {
        Value object = eval(*expr.args[0]);
        const Value key = eval(*expr.args[1]);
        require_defined(key, expr.args[1]->where);
        return get_item(object, key.data, expr.where);
      }
      case Expr::Kind::slice: return eval_slice(expr);
      case Expr::Kind::call: return eval_call(expr);
      case Expr::Kind::filter: {
        const Value input = eval(*expr.args[0]);
        auto [args, kwargs] = eval_arguments(expr);
        try {
          return apply_filter(expr.name, input, args, kwargs);
        } catch (const BuiltinError& e) {
          error(expr.where, "filter '" + expr.name + "': " + e.message);
        }
      }
      case Expr::Kind::test: {
        const Value input = eval(*expr.args[0]);
        auto [args, kwargs] = eval_arguments(expr);
        try {
          return Value(apply_test(expr.name, input, args) != expr.negated);
        } catch (const BuiltinError& e) {
          error(expr.where, "test '" + expr.name + "': " + e.message);
        }
      }
      case Expr::Kind::unary: return eval_unary(expr);
      case Expr::Kind::binary: return eval_binary(expr);
      case Expr::Kind::conditional:
        if (truthy(eval(*expr.args[1]))) return eval(*expr.args[0]);
        return expr.args[2] ? eval(*expr.args[2]) : Value::make_undefined("conditional without else");
    }
    error(expr.where, "unsupported expression");
  }

  // Jinja2's getattr/getitem: a missing key or index gives undefined rather than an error.
  Value get_item(const Value& object, const json& key, Offset where) {
    require_defined(object, where);
    const std::string name = key.is_string() ? key.get<std::string>() : key.dump();
    if (object.is_namespace()) {
      if (key.is_string() && object.namespace_object->contains(key.get<std::string>()))
        return Value((*object.namespace_object)[key.get<std::string>()]);
      return Value::make_undefined(name);
    }
    const json& data = object.data;
    if (data.is_object() && key.is_string()) {
      auto found = data.find(key.get<std::string>());
      return found != data.end() ? Value(*found) : Value::make_undefined(name);
    }
    if ((data.is_array() || data.is_string()) && key.is_number_integer()) {
      long long index = key.get<long long>();
      if (data.is_array()) {
        return normalise_index(index, data.size()) ? Value(data[index]) : Value::make_undefined(name);
      }
      const auto characters = utf8_characters(data.get<std::string>());
      return normalise_index(index, characters.size()) ? Value(characters[index]) : Value::make_undefined(name);
    }
    return Value::make_undefined(name);
  }

  Value eval_slice(const Expr& expr) {
    const Value object = eval(*expr.args[0]);
    require_defined(object, expr.where);
    long long bounds[3] = {0, 0, 1};
    bool present[3] = {false, false, false};
    for (int i = 0; i < 3; ++i) {
      if (!expr.args[i + 1]) continue;
      const Value part = eval(*expr.args[i + 1]);
      if (part.data.is_null() && !part.undefined) continue;
      if (!part.data.is_number_integer()) error(expr.args[i + 1]->where, "slice bounds must be integers");
      bounds[i] = part.data.get<long long>();
      present[i] = true;
    }
    const long long step = bounds[2];
    if (step == 0) error(expr.where, "slice step cannot be zero");
    std::vector<json> elements;
    const bool is_string = object.data.is_string();
    if (is_string) {
      for (auto& c : utf8_characters(object.data.get<std::string>())) elements.emplace_back(c);
    } else if (object.data.is_array()) {
      elements.assign(object.data.begin(), object.data.end());
    } else {
      error(expr.where, "cannot slice " + type_name(object));
    }
    // Python's slice.indices(): clamp each bound into range, defaults depending on the step's sign.
    const long long size = static_cast<long long>(elements.size());
    auto clamp = [&](long long value, bool given, long long fallback) {
      if (!given) return fallback;
      if (value < 0) value += size;
      if (step > 0) return std::clamp(value, 0LL, size);
      return std::clamp(value, -1LL, size - 1);
    };
    const long long start = clamp(bounds[0], present[0], step > 0 ? 0 : size - 1);
    const long long stop = clamp(bounds[1], present[1], step > 0 ? size : -1);
    json result = is_string ? json("") : json::array();
    for (long long i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (is_string) {
        result.get_ref<std::string&>() += elements[i].get<std::string>();
      } else {
        result.push_back(elements[i]);
      }
    }
    return Value(std::move(result));
  }

  std::pair<Arguments, KeywordArguments> eval_arguments(const Expr& expr) {
    Arguments args;
    for (std::size_t i = 1; i < expr.args.size(); ++i) args.push_back(eval(*expr.args[i]));
    KeywordArguments kwargs;
    for (const auto& [key, value] : expr.kwargs) kwargs.emplace_back(key, eval(*value));
    return {std::move(args), std::move(kwargs)};
  }

  Value eval_call(const Expr& expr) {
    const Expr& callee = *expr.args[0];
    auto [args, kwargs] = eval_arguments(expr);
    if (callee.kind == Expr::Kind::attribute) {
      const Value object = eval(*callee.args[0]);
      require_defined(object, callee.where);
      try {
        return call_method(object, callee.name, args, kwargs);
      } catch (const BuiltinError& e) {
        error(callee.where, type_name(object) + "." + callee.name + "(): " + e.message);
      }
    }
    if (callee.kind != Expr::Kind::name || find(callee.name))
      error(expr.where, "this value is not callable");
    return call_global(callee.name, args, kwargs, expr.where);
  }

  Value call_global(const std::string& name, const Arguments& args, const KeywordArguments& kwargs, Offset where) {
    if (name == "raise_exception") {
      error(where, "raise_exception: " + (args.empty() ? std::string() : to_display_string(args[0])));
    }
    if (name == "namespace" || name == "dict") {
      json attributes = json::object();
      for (const Value& arg : args) {  // namespace(existing_dict, key=value...)
        if (!arg.data.is_object()) error(where, name + "() takes a dict and keyword arguments");
        attributes.update(arg.data);
      }
      for (const auto& [key, value] : kwargs) attributes[key] = value.to_json();
      Value result(attributes);
      if (name == "namespace") result.namespace_object = std::make_shared<json>(std::move(attributes));
      return result;
    }
    if (name == "range") {
      long long bounds[3] = {0, 0, 1};
      if (args.empty() || args.size() > 3) error(where, "range() takes 1 to 3 integers");
      for (std::size_t i = 0; i < args.size(); ++i) {
        if (!args[i].data.is_number_integer()) error(where, "range() takes integers");
        bounds[args.size() == 1 ? 1 : i] = args[i].data.get<long long>();
      }
      if (bounds[2] == 0) error(where, "range() step cannot be zero");
      json result = json::array();
      for (long long i = bounds[0]; bounds[2] > 0 ? i < bounds[1] : i > bounds[1]; i += bounds[2])
        result.push_back(i);
      return Value(std::move(result));
    }
    error(where, "unknown function '" + name + "'");
  }

  Value eval_unary(const Expr& expr) {
    const Value operand = eval(*expr.args[0]);
    if (expr.name == "not") return Value(!truthy(operand));
    require_defined(operand, expr.args[0]->where);
    if (!operand.data.is_number()) error(expr.where, "unary " + expr.name + " needs a number, got " + type_name(operand));
    if (expr.name == "+") return operand;
    if (operand.data.is_number_float()) return Value(-operand.data.get<double>());
    return Value(-operand.data.get<long long>());
  }

  Value eval_binary(const Expr& expr) {
    const std::string& op = expr.name;
    if (op == "and" || op == "or") {  // Python semantics: the deciding operand itself is the result
      Value left = eval(*expr.args[0]);
      if (truthy(left) == (op == "or")) return left;
      return eval(*expr.args[1]);
    }
    const Value left = eval(*expr.args[0]);
    const Value right = eval(*expr.args[1]);
    if (op == "==" || op == "!=") {
      bool equal;
      if (left.undefined || right.undefined) {
        equal = left.undefined && right.undefined;
      } else {
        equal = left.to_json() == right.to_json();
      }
      return Value(equal == (op == "=="));
    }
    if (op == "~") return Value(to_display_string(left) + to_display_string(right));
    require_defined(left, expr.args[0]->where);
    require_defined(right, expr.args[1]->where);
    if (op == "in" || op == "not in") return Value(contains(right, left, expr.where) == (op == "in"));
    const json& a = left.data;
    const json& b = right.data;
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      const bool comparable = (a.is_number() && b.is_number()) || (a.is_string() && b.is_string()) ||
                              (a.is_array() && b.is_array());
      if (!comparable) error(expr.where, "cannot compare " + type_name(left) + " " + op + " " + type_name(right));
      if (op == "<") return Value(a < b);
      if (op == "<=") return Value(a <= b);
      if (op == ">") return Value(a > b);
      return Value(a >= b);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.get<std::string>() + b.get<std::string>());
      if (a.is_array() && b.is_array()) {
        json joined = a;
        joined.insert(joined.end(), b.begin(), b.end());
        return Value(std::move(joined));
      }
    }
    if (op == "*" && ((a.is_string() && b.is_number_integer()) || (a.is_number_integer() && b.is_string()))) {
      const std::string& text = a.is_string() ? a.get_ref<const std::string&>() : b.get_ref<const std::string&>();
      std::string repeated;
      for (long long i = 0, n = a.is_string() ? b.get<long long>() : a.get<long long>(); i < n; ++i) repeated += text;
      return Value(repeated);
    }
    if (!a.is_number() || !b.is_number())
      error(expr.where, "unsupported operand types for " + op + ": " + type_name(left) + " and " + type_name(right));
    return arithmetic(op, a, b, expr.where);
  }

  Value arithmetic(const std::string& op, const json& a, const json& b, Offset where) {
    const bool integers = !a.is_number_float() && !b.is_number_float() && !a.is_boolean() && !b.is_boolean();
    const double x = a.get<double>();
    const double y = b.get<double>();
    if ((op == "/" || op == "//" || op == "%") && y == 0) error(where, "division by zero");
    if (integers && op != "/") {
      const long long i = a.get<long long>();
      const long long j = b.get<long long>();
      if (op == "+") return Value(i + j);
      if (op == "-") return Value(i - j);
      if (op == "*") return Value(i * j);
      if (op == "//") return Value(static_cast<long long>(std::floor(x / y)));
      if (op == "%") return Value(((i % j) + j) % j);  // Python's modulo takes the divisor's sign
      if (op == "**" && j >= 0) return Value(static_cast<long long>(std::llround(std::pow(x, y))));
    }
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "/") return Value(x / y);
    if (op == "//") return Value(std::floor(x / y));
    if (op == "%") return Value(x - y * std::floor(x / y));
    return Value(std::pow(x, y));
  }

  bool contains(const Value& container, const Value& item, Offset where) {
    if (container.is_namespace()) error(where, "'in' cannot search a namespace");
    const json& data = container.data;
    const json needle = item.to_json();
    if (data.is_string()) {
      if (!needle.is_string()) error(where, "'in <string>' requires a string on the left, got " + type_name(item));
      return data.get_ref<const std::string&>().find(needle.get<std::string>()) != std::string::npos;
    }
    if (data.is_array()) {
      for (const auto& element : data)
        if (element == needle) return true;
      return false;
    }
    if (data.is_object()) return needle.is_string() && data.contains(needle.get<std::string>());
    error(where, "'in' needs a string, list or dict on the right, got " + type_name(container));
  }

  std::string_view source_;
  std::vector<Scope> scopes_;
  std::string out_;
};

}  // namespace

std::string render(std::string_view source, const Body& body, const json& context) {
  return Renderer(source, context).run(body);
}

}  // namespace dsv3::jinja
