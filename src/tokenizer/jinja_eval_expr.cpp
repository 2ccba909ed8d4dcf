// The Renderer's expressions: names, literals, operators with Python's integer and float rules, items, slices, calls.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tokenizer/jinja_renderer.h"

namespace dsv3::jinja {
namespace {

// Python's index normalisation: negative indices count from the end.
bool normalise_index(std::int64_t& index, std::size_t size) {
  if (index < 0) index += static_cast<std::int64_t>(size);
  return index >= 0 && index < static_cast<std::int64_t>(size);
}

[[noreturn]] void overflow() {
  throw BuiltinError{"integer result does not fit in 64 bits (dsv3 does not have Python's big integers)"};
}

// Python's divmod on floats (Objects/floatobject.c), so `//` and `%` agree with Jinja2 in sign.
void float_divmod(double x, double y, double& floor_quotient, double& modulo) {
  modulo = std::fmod(x, y);
  double quotient = (x - modulo) / y;
  if (modulo != 0) {
    if ((y < 0) != (modulo < 0)) {
      modulo += y;
      quotient -= 1.0;
    }
  } else {
    modulo = std::copysign(0.0, y);
  }
  if (quotient != 0) {
    floor_quotient = std::floor(quotient);
    if (quotient - floor_quotient > 0.5) floor_quotient += 1.0;
  } else {
    floor_quotient = std::copysign(0.0, x / y);
  }
}

Value integer_arithmetic(const std::string& op, std::int64_t i, std::int64_t j) {
  std::int64_t result = 0;
  if (op == "+") {
    if (__builtin_add_overflow(i, j, &result)) overflow();
    return Value(result);
  }
  if (op == "-") {
    if (__builtin_sub_overflow(i, j, &result)) overflow();
    return Value(result);
  }
  if (op == "*") {
    if (__builtin_mul_overflow(i, j, &result)) overflow();
    return Value(result);
  }
  if (op == "//" || op == "%") {
    if (j == 0) throw BuiltinError{op == "%" ? "integer modulo by zero" : "integer division by zero"};
    if (j == -1) {  // INT64_MIN / -1 overflows in C++; Python's answers are -i and 0
      if (op == "%") return Value(std::int64_t{0});
      if (i == std::numeric_limits<std::int64_t>::min()) overflow();
      return Value(-i);
    }
    std::int64_t quotient = i / j;
    std::int64_t remainder = i % j;
    if (remainder != 0 && ((remainder < 0) != (j < 0))) {
      quotient -= 1;
      remainder += j;
    }
    return Value(op == "//" ? quotient : remainder);
  }
  // op == "**" with j >= 0: square and multiply, every step checked.
  std::int64_t base = i;
  result = 1;
  for (std::int64_t exponent = j; exponent > 0; exponent >>= 1) {
    if (exponent & 1)
      if (__builtin_mul_overflow(result, base, &result)) overflow();
    if (exponent > 1 && __builtin_mul_overflow(base, base, &base)) overflow();
  }
  return Value(result);
}

Value float_arithmetic(const std::string& op, double x, double y) {
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "/") {
    if (y == 0) throw BuiltinError{"float division by zero"};
    return Value(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) throw BuiltinError{op == "%" ? "float modulo by zero" : "float floor division by zero"};
    double quotient, modulo;
    float_divmod(x, y, quotient, modulo);
    return Value(op == "//" ? quotient : modulo);
  }
  if (x == 0 && y < 0) throw BuiltinError{"0.0 cannot be raised to a negative power"};
  if (x < 0 && std::isfinite(y) && y != std::floor(y))
    throw BuiltinError{"a negative number to a fractional power is complex, which templates cannot hold"};
  const double result = std::pow(x, y);
  if (std::isinf(result) && std::isfinite(x) && std::isfinite(y)) throw BuiltinError{"float result too large"};
  return Value(result);
}

}  // namespace

Value Renderer::eval(const Expr& expr) {
  Depth depth(*this, expr.where);
  switch (expr.kind) {
    case Expr::Kind::literal: return expr.shared_value ? Value::from_shared(expr.shared_value) : Value(expr.value);
    case Expr::Kind::name: {
      const Value* value = find(expr.name);
      return value ? *value : Value::make_undefined(expr.name);
    }
    case Expr::Kind::list:
    case Expr::Kind::tuple: {
      json list = json::array();
      std::size_t bytes = 0;
      for (const auto& item : expr.args) {
        list.push_back(storable(eval(*item), item->where));
        bytes += check(list.back(), item->where);
        if (bytes > Limits::value_bytes) error(expr.where, "list larger than " + std::to_string(Limits::value_bytes) + " bytes");
      }
      return expr.kind == Expr::Kind::tuple ? Value::make_tuple(std::move(list)) : Value(std::move(list));
    }
    case Expr::Kind::dict: {
      json dict = json::object();
      std::size_t bytes = 0;
      for (std::size_t i = 0; i + 1 < expr.args.size(); i += 2) {
        const Value key = eval(*expr.args[i]);
        if (!key.is_data() || !key.data().is_string())
          error(expr.args[i]->where, "dict keys must be strings here (JSON objects), got " + type_name(key));
        json& slot = dict[key.data().get<std::string>()];
        slot = storable(eval(*expr.args[i + 1]), expr.args[i + 1]->where);
        bytes += check(slot, expr.where);
        if (bytes > Limits::value_bytes) error(expr.where, "dict larger than " + std::to_string(Limits::value_bytes) + " bytes");
      }
      return Value(std::move(dict));
    }
    case Expr::Kind::attribute: return get_attribute(eval(*expr.args[0]), expr.name, expr.where);
    case Expr::Kind::subscript: {
      Value object = eval(*expr.args[0]);
      const Value key = eval(*expr.args[1]);
      require_defined(key, expr.args[1]->where);
      return get_item(object, key, expr.where);
    }
    case Expr::Kind::slice: return eval_slice(expr);
    case Expr::Kind::call: return eval_call(expr);
    case Expr::Kind::filter: {
      const Value input = eval(*expr.args[0]);
      return eval_filter(expr, input);
    }
    case Expr::Kind::test: {
      const Value input = eval(*expr.args[0]);
      auto arguments = eval_arguments(expr);  // no structured binding: clang 14 cannot capture one
      Arguments& args = arguments.first;
      KeywordArguments& kwargs = arguments.second;
      if (!kwargs.empty()) error(expr.where, "test '" + expr.name + "' takes no keyword arguments");
      current_ = expr.where;
      return Value(guard(expr.where, [&] { return apply_test(*this, expr.name, input, args); },
                         "test '" + expr.name + "': ") != expr.negated);
    }
    case Expr::Kind::unary: return eval_unary(expr);
    case Expr::Kind::binary: return eval_binary(expr);
    case Expr::Kind::compare: {
      Value left = eval(*expr.args[0]);
      for (std::size_t i = 0; i < expr.ops.size(); ++i) {
        Value right = eval(*expr.args[i + 1]);
        if (!compare(expr.ops[i], left, right, expr.where)) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::Kind::conditional:
      if (truthy(eval(*expr.args[1]))) return eval(*expr.args[0]);
      return expr.args[2] ? eval(*expr.args[2]) : Value::make_undefined("conditional without else");
  }
  error(expr.where, "unsupported expression");
}

Value Renderer::eval_filter(const Expr& expr, const Value& input) {
  auto arguments = eval_arguments(expr);  // no structured binding: clang 14 cannot capture one
  Arguments& args = arguments.first;
  KeywordArguments& kwargs = arguments.second;
  current_ = expr.where;
  charge_scan(input, expr.where);
  Value result = guard(expr.where, [&] { return apply_filter(*this, expr.name, input, args, kwargs); },
                       "filter '" + expr.name + "': ");
  charge_result(result, expr.where);
  return result;
}

// A {% filter %} or {% set x | filter %} chain: filters applied to `input` (the rendered body),
// which stands in for the chain's innermost literal.
Value Renderer::eval_filter_chain(const Expr& chain, const Value& input) {
  if (chain.kind != Expr::Kind::filter) return input;
  const Value inner = eval_filter_chain(*chain.args[0], input);
  return eval_filter(chain, inner);
}

// Jinja2's `x.name`: a namespace's attribute, the loop object's, or else the item `name`.
Value Renderer::get_attribute(const Value& object, const std::string& name, Offset where) {
  require_defined(object, where);
  if (object.is_loop()) return loop_attribute(object, name, where);
  return get_item(object, Value(json(name)), where);
}

// Jinja2's getattr/getitem: a missing key or index gives undefined rather than an error.
Value Renderer::get_item(const Value& object, const Value& key_value, Offset where) {
  require_defined(object, where);
  const json& key = key_value.data();
  const std::string name = key.is_string() ? key.get<std::string>() : python_repr(key);
  if (object.is_loop()) {
    if (key.is_string()) return loop_attribute(object, key.get<std::string>(), where);
    return Value::make_undefined(name);
  }
  if (object.is_namespace()) {
    if (key.is_string() && object.namespace_object->contains(key.get<std::string>()))
      return Value((*object.namespace_object)[key.get<std::string>()]);
    return Value::make_undefined(name);
  }
  if (!object.is_data()) return Value::make_undefined(name);
  const json& data = object.data();
  if (data.is_object() && key.is_string()) {
    auto found = data.find(key.get<std::string>());
    return found != data.end() ? Value::part_of(object, *found) : Value::make_undefined(name);
  }
  std::int64_t index = 0;
  if ((data.is_array() || data.is_string()) && (key.is_number_integer() || key.is_boolean()) && integer_of(key, index)) {
    if (data.is_array()) {
      if (!normalise_index(index, data.size())) return Value::make_undefined(name);
      Value item = Value::part_of(object, data[static_cast<std::size_t>(index)]);
      item.tuple = object.tuple_items && item.data().is_array();  // a pair of dict.items()
      return item;
    }
    const std::string& text = data.get_ref<const std::string&>();
    charge(text.size(), where);
    if (!normalise_index(index, utf8_length(text))) return Value::make_undefined(name);
    const std::size_t begin = utf8_offset(text, static_cast<std::size_t>(index));
    return Value(text.substr(begin, utf8_offset(text.substr(begin), 1)));
  }
  return Value::make_undefined(name);
}

Value Renderer::eval_slice(const Expr& expr) {
  const Value object = eval(*expr.args[0]);
  require_defined(object, expr.where);
  std::int64_t bounds[3] = {0, 0, 1};
  bool present[3] = {false, false, false};
  for (int i = 0; i < 3; ++i) {
    if (!expr.args[i + 1]) continue;
    const Value part = eval(*expr.args[i + 1]);
    if (part.is_data() && part.data().is_null()) continue;
    if (!part.is_data() || !integer_of(part.data(), bounds[i]) || part.data().is_number_float())
      error(expr.args[i + 1]->where, "slice indices must be integers or none");
    present[i] = true;
  }
  const std::int64_t step = bounds[2];
  if (step == 0) error(expr.where, "slice step cannot be zero");
  if (step == std::numeric_limits<std::int64_t>::min()) error(expr.where, "slice step out of range");
  // Strings are sliced by characters through their byte offsets; lists by item.
  const bool is_string = object.is_data() && object.data().is_string();
  const bool is_list = object.is_data() && object.data().is_array();
  if (!is_string && !is_list) error(expr.where, "cannot slice a " + type_name(object));
  const json& sequence = object.data();
  std::vector<std::size_t> offsets;  // strings: where each character starts, then the end
  if (is_string) {
    const std::string& text = sequence.get_ref<const std::string&>();
    charge(8 * text.size(), expr.where);
    offsets.reserve(text.size() + 1);
    for (std::size_t i = 0; i < text.size(); ++i)
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) offsets.push_back(i);
    offsets.push_back(text.size());
  }
  // Python's slice.indices(): clamp each bound into range, defaults depending on the step's sign.
  const std::int64_t size = static_cast<std::int64_t>(is_string ? offsets.size() - 1 : sequence.size());
  auto clamp = [&](std::int64_t value, bool given, std::int64_t fallback) {
    if (!given) return fallback;
    if (value < 0) value = value < -size ? -1 : value + size;
    if (step > 0) return std::clamp<std::int64_t>(value, 0, size);
    return std::clamp<std::int64_t>(value, -1, size - 1);
  };
  const std::int64_t start = clamp(bounds[0], present[0], step > 0 ? 0 : size - 1);
  const std::int64_t stop = clamp(bounds[1], present[1], step > 0 ? size : -1);
  json result = is_string ? json("") : json::array();
  // 128 bits, so a step near the 64-bit limits cannot overflow the index.
  for (__int128 i = start; step > 0 ? i < stop : i > stop; i += step) {
    const auto at = static_cast<std::size_t>(i);
    if (is_string) {
      result.get_ref<std::string&>().append(sequence.get_ref<const std::string&>(), offsets[at], offsets[at + 1] - offsets[at]);
    } else {
      result.push_back(sequence[at]);
    }
  }
  return Value(std::move(result));
}

std::pair<Arguments, KeywordArguments> Renderer::eval_arguments(const Expr& expr) {
  Arguments args;
  for (std::size_t i = 1; i < expr.args.size(); ++i) args.push_back(eval(*expr.args[i]));
  KeywordArguments kwargs;
  for (const auto& [key, value] : expr.kwargs) kwargs.emplace_back(key, eval(*value));
  return {std::move(args), std::move(kwargs)};
}

Value Renderer::eval_call(const Expr& expr) {
  const Expr& callee = *expr.args[0];
  if (callee.kind == Expr::Kind::attribute) {
    const Value object = eval(*callee.args[0]);
    require_defined(object, callee.where);
    auto arguments = eval_arguments(expr);  // no structured binding: clang 14 cannot capture one
    Arguments& args = arguments.first;
    KeywordArguments& kwargs = arguments.second;
    current_ = callee.where;
    if (object.is_loop()) return call_loop_method(object, callee.name, args, callee.where);
    // A namespace or dict may hold a macro under that name; otherwise it is a method.
    if (object.is_namespace() || (object.is_data() && object.data().is_object())) {
      const Value member = get_item(object, Value(json(callee.name)), callee.where);
      if (member.is_macro()) return call_macro(member, args, kwargs, expr.where);
    }
    charge_scan(object, callee.where);
    Value result = guard(callee.where, [&] { return call_method(*this, object, callee.name, args, kwargs); },
                         type_name(object) + "." + callee.name + "(): ");
    charge_result(result, callee.where);
    return result;
  }
  const Value function = eval(callee);
  auto arguments = eval_arguments(expr);  // no structured binding: clang 14 cannot capture one
  Arguments& args = arguments.first;
  KeywordArguments& kwargs = arguments.second;
  if (function.is_macro()) return call_macro(function, args, kwargs, expr.where);
  if (callee.kind == Expr::Kind::name && function.undefined) return call_global(callee.name, args, kwargs, expr.where);
  if (function.undefined) error(callee.where, "'" + function.undefined_name + "' is undefined");
  error(expr.where, "'" + type_name(function) + "' object is not callable");
}

Value Renderer::call_global(const std::string& name, const Arguments& args, const KeywordArguments& kwargs,
                            Offset where) {
  if (name == "raise_exception") {
    error(where, "raise_exception: " + (args.empty() ? std::string() : display(args[0], where)));
  }
  if (name == "strftime_now") {
    if (args.size() != 1 || !args[0].is_data() || !args[0].data().is_string())
      error(where, "strftime_now() takes one format string");
    return Value(guard(where, [&] { return strftime_text(args[0].data().get<std::string>(), now()); },
                       "strftime_now(): "));
  }
  if (name == "namespace" || name == "dict") {
    json attributes = json::object();
    for (const Value& arg : args) {  // namespace(existing_dict, key=value...)
      if (!arg.is_data() || !arg.data().is_object()) error(where, name + "() takes a dict and keyword arguments");
      for (const auto& [key, value] : arg.data().items()) attributes[key] = value;
    }
    for (const auto& [key, value] : kwargs) attributes[key] = storable(value, where);
    guard(where, [&] { check_value_size(attributes); });
    Value result(attributes);
    if (name == "namespace") result.namespace_object = std::make_shared<json>(std::move(attributes));
    return result;
  }
  if (name == "range") {
    std::int64_t bounds[3] = {0, 0, 1};
    if (args.empty() || args.size() > 3 || !kwargs.empty()) error(where, "range() takes 1 to 3 integers");
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (!args[i].is_data() || args[i].data().is_number_float() || !integer_of(args[i].data(), bounds[args.size() == 1 ? 1 : i]))
        error(where, "range() takes integers, got " + type_name(args[i]));
    }
    const std::int64_t start = bounds[0], stop = bounds[1], step = bounds[2];
    if (step == 0) error(where, "range() step must not be zero");
    // The count in 128 bits, so no bound can overflow it.
    __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
    const __int128 magnitude = step > 0 ? static_cast<__int128>(step) : -static_cast<__int128>(step);
    const __int128 count = span <= 0 ? 0 : (span + magnitude - 1) / magnitude;
    if (count > static_cast<__int128>(Limits::range))
      error(where, "range() of more than " + std::to_string(Limits::range) + " items (the sandbox's limit)");
    json result = json::array();
    for (__int128 i = 0; i < count; ++i) result.push_back(static_cast<std::int64_t>(start + i * step));
    return Value(std::move(result));
  }
  error(where, "'" + name + "' is undefined");
}

Value Renderer::eval_unary(const Expr& expr) {
  const Value operand = eval(*expr.args[0]);
  if (expr.name == "not") return Value(!truthy(operand));
  require_defined(operand, expr.args[0]->where);
  const json& data = operand.data();
  if (!operand.is_data() || !(data.is_number() || data.is_boolean()))
    error(expr.where, "bad operand type for unary " + expr.name + ": '" + type_name(operand) + "'");
  if (data.is_number_float()) return Value(expr.name == "-" ? -data.get<double>() : data.get<double>());
  std::int64_t value = 0;
  if (!integer_of(data, value)) error(expr.where, "integer does not fit in 64 bits");
  if (expr.name == "+") return Value(value);
  if (value == std::numeric_limits<std::int64_t>::min()) guard(expr.where, [] { overflow(); });
  return Value(-value);
}

bool Renderer::compare(const std::string& op, const Value& left, const Value& right, Offset where) {
  charge_scan(left, where);
  charge_scan(right, where);
  if (op == "==" || op == "!=") {
    bool equal;
    if (left.undefined || right.undefined) {
      equal = left.undefined && right.undefined;
    } else if (!left.is_data() || !right.is_data()) {
      equal = (left.is_namespace() && left.namespace_object == right.namespace_object) ||
              (left.is_macro() && left.macro == right.macro) || (left.is_loop() && left.loop == right.loop);
    } else {
      equal = python_equal(left.data(), right.data());
    }
    return equal == (op == "==");
  }
  require_defined(left, where);
  require_defined(right, where);
  if (op == "in" || op == "not in") return contains(right, left, where) == (op == "in");
  if (!left.is_data() || !right.is_data())
    error(where, "'" + op + "' not supported between instances of '" + type_name(left) + "' and '" + type_name(right) + "'");
  const json& a = left.data();
  const json& b = right.data();
  return guard(where, [&] {
    try {
      if (op == "<") return python_less(a, b);
      if (op == "<=") return !python_less(b, a);
      if (op == ">") return python_less(b, a);
      return !python_less(a, b);
    } catch (const BuiltinError&) {
      throw BuiltinError{"'" + op + "' not supported between instances of '" + type_name(left) + "' and '" +
                         type_name(right) + "'"};
    }
  });
}

Value Renderer::eval_binary(const Expr& expr) {
  const std::string& op = expr.name;
  if (op == "and" || op == "or") {  // Python semantics: the deciding operand itself is the result
    Value left = eval(*expr.args[0]);
    if (truthy(left) == (op == "or")) return left;
    return eval(*expr.args[1]);
  }
  const Value left = eval(*expr.args[0]);
  const Value right = eval(*expr.args[1]);
  if (op == "~") {
    const std::string a = display(left, expr.args[0]->where);
    const std::string b = display(right, expr.args[1]->where);
    return Value(concatenate(a, b, expr.where));
  }
  require_defined(left, expr.args[0]->where);
  require_defined(right, expr.args[1]->where);
  auto unsupported = [&]() {
    error(expr.where, "unsupported operand type(s) for " + op + ": '" + type_name(left) + "' and '" +
                          type_name(right) + "'");
  };
  if (!left.is_data() || !right.is_data()) unsupported();
  const json& a = left.data();
  const json& b = right.data();
  if (op == "+") {
    if (a.is_string() && b.is_string())
      return Value(concatenate(a.get_ref<const std::string&>(), b.get_ref<const std::string&>(), expr.where));
    if (a.is_array() && b.is_array()) {
      if (check(a, expr.where) + check(b, expr.where) > Limits::value_bytes)
        error(expr.where, "list larger than " + std::to_string(Limits::value_bytes) + " bytes");
      json joined = a;
      joined.insert(joined.end(), b.begin(), b.end());
      return Value(std::move(joined));
    }
  }
  const bool a_int = a.is_number_integer() || a.is_boolean();
  const bool b_int = b.is_number_integer() || b.is_boolean();
  if (op == "*" && ((a.is_string() || a.is_array()) && b_int)) return repeat(a, b, expr.where);
  if (op == "*" && ((b.is_string() || b.is_array()) && a_int)) return repeat(b, a, expr.where);
  if (op == "%" && a.is_string()) {  // Python's printf-style formatting
    return guard(expr.where, [&] {
      Arguments args;
      KeywordArguments kwargs;
      if (right.tuple) {
        for (const auto& item : b) args.emplace_back(item);
      } else if (b.is_object()) {
        for (const auto& [key, value] : b.items()) kwargs.emplace_back(key, Value(value));
      } else {
        args.push_back(right);
      }
      return Value(percent_format(a.get<std::string>(), args, kwargs));
    });
  }
  if (!(a.is_number() || a.is_boolean()) || !(b.is_number() || b.is_boolean())) unsupported();
  return guard(expr.where, [&] {
    std::int64_t i = 0, j = 0;
    if (a_int && b_int) {
      if (!integer_of(a, i) || !integer_of(b, j)) overflow();
      if (op != "/" && !(op == "**" && j < 0)) return integer_arithmetic(op, i, j);
    }
    auto number = [](const json& v) { return v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>(); };
    return float_arithmetic(op, number(a), number(b));
  });
}

std::string Renderer::concatenate(const std::string& a, const std::string& b, Offset where) {
  if (a.size() + b.size() > Limits::string_bytes)
    error(where, "string longer than " + std::to_string(Limits::string_bytes) + " bytes");
  charge(a.size() + b.size(), where);
  return a + b;
}

// Python's sequence * n: n <= 0 gives an empty sequence.
Value Renderer::repeat(const json& sequence, const json& times, Offset where) {
  std::int64_t n = 0;
  if (!integer_of(times, n)) error(where, "repeat count does not fit in 64 bits");
  if (n <= 0) return Value(sequence.is_string() ? json("") : json::array());
  const std::size_t unit = sequence.is_string() ? sequence.get_ref<const std::string&>().size() : check(sequence, where);
  const std::size_t limit = sequence.is_string() ? Limits::string_bytes : Limits::value_bytes;
  if (unit > 0 && static_cast<std::uint64_t>(n) > limit / unit)
    error(where, std::string(sequence.is_string() ? "string" : "list") + " longer than " + std::to_string(limit) +
                     " bytes");
  if (sequence.is_array() && sequence.size() * static_cast<std::uint64_t>(n) > Limits::range * 10)
    error(where, "list of more than " + std::to_string(Limits::range * 10) + " items");
  charge(unit * static_cast<std::size_t>(n), where);
  if (sequence.is_string()) {  // by doubling: log2(n) appends
    const std::size_t total = unit * static_cast<std::size_t>(n);
    std::string repeated = sequence.get<std::string>();
    repeated.reserve(total);
    while (repeated.size() < total) repeated.append(repeated, 0, std::min(repeated.size(), total - repeated.size()));
    return Value(std::move(repeated));
  }
  json repeated = json::array();
  for (std::int64_t i = 0; i < n; ++i) repeated.insert(repeated.end(), sequence.begin(), sequence.end());
  return Value(std::move(repeated));
}

bool Renderer::contains(const Value& container, const Value& item, Offset where) {
  if (container.is_namespace()) error(where, "argument of type 'Namespace' is not iterable");
  if (!container.is_data()) error(where, "argument of type '" + type_name(container) + "' is not iterable");
  const json& data = container.data();
  if (data.is_string()) {
    charge_scan(container, where);
    if (!item.is_data() || !item.data().is_string())
      error(where, "'in <string>' requires string as left operand, not " + type_name(item));
    return data.get_ref<const std::string&>().find(item.data().get_ref<const std::string&>()) != std::string::npos;
  }
  if (!item.is_data()) return false;
  const json& needle = item.data();
  if (data.is_array()) {
    for (const auto& element : data)
      if (python_equal(element, needle)) return true;
    return false;
  }
  if (data.is_object()) return needle.is_string() && data.contains(needle.get<std::string>());
  error(where, "argument of type '" + type_name(container) + "' is not iterable");
}

}  // namespace dsv3::jinja
