// Tree + context -> text: the Renderer's statements, loops, macros and the limits on a render.
#include <algorithm>
#include <iterator>

#include "core/error.h"
#include "tokenizer/jinja_renderer.h"

namespace dsv3::jinja {

Renderer::Renderer(std::string_view source, const json& context, const RenderOptions& options)
    : source_(source), options_(options) {
  if (!context.is_object()) fail("chat template context must be a JSON object, got {}", context.type_name());
  std::size_t context_bytes = 0;
  try {
    context_bytes = check_value_size(context);
  } catch (const BuiltinError& e) {
    fail("chat template context: {}", e.message);
  }
  // Rendering is linear in the conversation, so a long one earns steps in proportion; a hostile
  // template with a small context still stops after Limits::steps.
  steps_limit_ = Limits::steps + 4 * context_bytes;
  loop_limit_ = Limits::loop_iterations + context_bytes / 4;
  work_limit_ = Limits::work_bytes + 8 * context_bytes;
  scopes_.emplace_back();
  for (const auto& [key, value] : context.items()) scopes_.back()[key] = Value(value);
}

// Interpreter, for builtins that call filters and tests by name.
Value Renderer::filter(const std::string& name, const Value& input, const Arguments& args,
                       const KeywordArguments& kwargs) {
  step(current_);
  return apply_filter(*this, name, input, args, kwargs);
}

bool Renderer::test(const std::string& name, const Value& input, const Arguments& args) {
  step(current_);
  return apply_test(*this, name, input, args);
}

void Renderer::emit(const std::string& text, Offset where) {
  if (captured_ + out_.size() + text.size() > Limits::output_bytes)  // captured_: text held by enclosing captures
    error(where, "the rendered text would pass " + std::to_string(Limits::output_bytes) + " bytes");
  out_ += text;
}

// Renders `body` into a string of its own (macros, {% set %} blocks, {% filter %}).
std::string Renderer::capture(const Body& body) {
  std::string saved = std::move(out_);
  out_.clear();
  const std::size_t used_elsewhere = saved.size();
  captured_ += used_elsewhere;
  struct Restore {
    Renderer& r;
    std::string& saved;
    std::size_t used;
    ~Restore() {
      std::swap(r.out_, saved);
      r.captured_ -= used;
    }
  } restore{*this, saved, used_elsewhere};
  exec(body);
  return out_;
}

Renderer::Flow Renderer::exec(const Body& body) {
  for (const Node& node : body) {
    const Flow flow = exec(node);
    if (flow != Flow::normal) return flow;
  }
  return Flow::normal;
}

Renderer::Flow Renderer::exec(const Node& node) {
  Depth depth(*this, node.where);
  current_ = node.where;
  switch (node.kind) {
    case Node::Kind::text: emit(node.text, node.where); return Flow::normal;
    case Node::Kind::output: {
      const Value value = eval(*node.expr);
      emit(display(value, node.expr->where), node.expr->where);
      return Flow::normal;
    }
    case Node::Kind::if_chain:
      for (const auto& [condition, body] : node.branches)
        if (!condition || truthy(eval(*condition))) return exec(body);
      return Flow::normal;
    case Node::Kind::for_loop: return exec_for(node);
    case Node::Kind::set: assign(node.targets, eval(*node.expr), node.where); return Flow::normal;
    case Node::Kind::set_attr: {
      Value value = eval(*node.expr);
      Value* target = find(node.targets[0]);
      if (!target || target->undefined) error(node.where, "'" + node.targets[0] + "' is undefined");
      if (!target->is_namespace())
        error(node.where, "cannot set attribute '" + node.attribute + "' on " + type_name(*target) + " '" +
                              node.targets[0] + "': only namespace() objects take attribute assignment");
      json stored = storable(value, node.expr->where);
      json& attributes = *target->namespace_object;
      attributes[node.attribute] = std::move(stored);
      check(attributes, node.where);
      return Flow::normal;
    }
    case Node::Kind::set_block: {
      Value text(capture(node.body));
      if (node.expr) text = eval_filter_chain(*node.expr, text);
      assign(node.targets, text, node.where);
      return Flow::normal;
    }
    case Node::Kind::filter_block: {
      const Value text = eval_filter_chain(*node.expr, Value(capture(node.body)));
      emit(display(text, node.where), node.where);
      return Flow::normal;
    }
    case Node::Kind::with_block: {
      Scope scope;
      for (std::size_t i = 0; i < node.targets.size(); ++i) scope[node.targets[i]] = eval(*node.defaults[i]);
      scopes_.push_back(std::move(scope));
      const Flow flow = exec(node.body);
      scopes_.pop_back();
      return flow;
    }
    case Node::Kind::generation: return exec(node.body);
    case Node::Kind::macro: {
      Value macro;
      macro.macro = &node;
      set_variable(node.attribute, std::move(macro));
      return Flow::normal;
    }
    case Node::Kind::call_block: {
      // {% call m(args) %}body{% endcall %}: m runs with `caller` bound to the body, which sees
      // the scopes of this call site when m calls it.
      const Expr& call = *node.expr;
      const Value callee = eval(*call.args[0]);
      if (!callee.is_macro()) error(call.where, "{% call %} needs a macro, got " + type_name(callee));
      auto arguments = eval_arguments(call);
      Value caller;
      caller.macro = &node;
      caller.caller_scopes = scopes_.size();
      caller.caller_floor = scope_floor_;
      const Value text = call_macro(callee, arguments.first, arguments.second, call.where, &caller);
      emit(text.data().get<std::string>(), node.where);
      return Flow::normal;
    }
    case Node::Kind::loop_break: return Flow::loop_break;
    case Node::Kind::loop_continue: return Flow::loop_continue;
  }
  return Flow::normal;
}

// What {{ }} prints, with the sizes checked.
std::string Renderer::display(const Value& value, Offset where) {
  if (value.undefined) return "";
  std::string text = guard(where, [&] { return to_display_string(value); });
  charge(text.size(), where);
  return text;
}

// The JSON a value becomes when stored inside another value (a list item, a namespace attribute).
json Renderer::storable(const Value& value, Offset where) {
  if (value.is_macro() || value.is_loop())
    error(where, "a " + type_name(value) + " cannot be stored inside a list, dict or namespace");
  return value.to_json();
}

void Renderer::assign(const std::vector<std::string>& targets, const Value& value, Offset where) {
  if (targets.size() == 1) {
    set_variable(targets[0], value);
    return;
  }
  const std::vector<Value> items = items_of(value, where);
  if (items.size() != targets.size())
    error(where, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) +
                     " names");
  for (std::size_t i = 0; i < targets.size(); ++i) set_variable(targets[i], items[i]);
}

std::vector<Value> Renderer::items_of(const Value& iterable, Offset where) {
  std::vector<Value> items;
  if (iterable.undefined) return items;  // Jinja2's Undefined iterates as empty
  if (!iterable.is_data()) error(where, "cannot iterate over a " + type_name(iterable));
  const json& data = iterable.data();
  // A loop over more items than the iteration limit would only fail later, after building them.
  if (data.is_string()) charge(data.get_ref<const std::string&>().size(), where);
  const std::size_t count = data.is_string() ? utf8_length(data.get_ref<const std::string&>()) : data.size();
  if (count > loop_limit_)
    error(where, "cannot iterate over " + std::to_string(count) + " items: loops may run " +
                     std::to_string(loop_limit_) + " iterations in all");
  if (data.is_array()) {
    items.reserve(data.size());
    for (const auto& item : data) {
      items.push_back(Value::part_of(iterable, item));
      items.back().tuple = iterable.tuple_items && item.is_array();  // the pairs of dict.items()
    }
  } else if (data.is_object()) {
    for (const auto& [key, unused] : data.items()) items.emplace_back(key);  // dicts iterate keys
  } else if (data.is_string()) {
    for (auto& character : utf8_characters(data.get<std::string>())) items.emplace_back(std::move(character));
  } else {
    error(where, "'" + type_name(iterable) + "' object is not iterable");
  }
  return items;
}

Renderer::Flow Renderer::exec_for(const Node& node) {
  std::vector<Value> all = items_of(eval(*node.expr), node.expr->where);
  auto state = std::make_shared<LoopState>();
  state->depth0 = 0;  // loop.depth counts recursive loops only, which are not supported
  scopes_.emplace_back();
  if (node.filter) {
    for (Value& item : all) {
      count_iteration(node.where);
      assign(node.targets, item, node.where);
      if (truthy(eval(*node.filter))) state->items.push_back(std::move(item));
    }
  } else {
    state->items = std::move(all);
  }
  const std::size_t length = state->items.size();
  // The loop's scope is the last one between iterations (inner scopes are popped by then), and
  // std::map nodes stay put even when scopes_ reallocates, so the per-iteration work is two
  // assignments.
  Value* loop_slot = &scopes_.back()["loop"];
  Value* target_slot = node.targets.size() == 1 ? &scopes_.back()[node.targets[0]] : nullptr;
  const std::size_t scope_index = scopes_.size() - 1;  // by index: inner loops may grow scopes_
  for (std::size_t i = 0; i < length; ++i) {
    count_iteration(node.where);
    // Each iteration starts afresh, as in Jinja2: what the body set last time is gone.
    Scope& scope = scopes_[scope_index];
    if (scope.size() > node.targets.size() + 1) {
      for (auto it = scope.begin(); it != scope.end();) {
        const bool keep = it->first == "loop" ||
                          std::find(node.targets.begin(), node.targets.end(), it->first) != node.targets.end();
        it = keep ? std::next(it) : scope.erase(it);
      }
    }
    if (target_slot) {
      *target_slot = state->items[i];
    } else {
      assign(node.targets, state->items[i], node.where);
    }
    if (loop_slot->loop != state) {
      *loop_slot = Value();
      loop_slot->loop = state;
      loop_slot->loop_length = length;
    }
    loop_slot->loop_index0 = i;
    if (exec(node.body) == Flow::loop_break) break;
  }
  scopes_.pop_back();
  if (length == 0) return exec(node.else_body);
  return Flow::normal;
}

void Renderer::count_iteration(Offset where) {
  if (++loop_iterations_ > loop_limit_)
    error(where, "loops ran more than " + std::to_string(loop_limit_) + " iterations in all");
}

// Looks a name up: the innermost scopes down to the current macro's own, then the top level.
Value* Renderer::find(const std::string& name) {
  for (std::size_t i = scopes_.size(); i-- > scope_floor_;) {
    auto found = scopes_[i].find(name);
    if (found != scopes_[i].end()) return &found->second;
  }
  if (scope_floor_ > 0) {
    auto found = scopes_[0].find(name);
    if (found != scopes_[0].end()) return &found->second;
  }
  return nullptr;
}

Value Renderer::loop_attribute(const Value& loop, const std::string& name, Offset where) {
  const LoopState& state = *loop.loop;
  const std::size_t i = loop.loop_index0;
  const std::size_t length = state.items.size();
  if (name == "index") return Value(i + 1);
  if (name == "index0") return Value(i);
  if (name == "revindex") return Value(length - i);
  if (name == "revindex0") return Value(length - i - 1);
  if (name == "first") return Value(i == 0);
  if (name == "last") return Value(i + 1 == length);
  if (name == "length") return Value(length);
  if (name == "depth") return Value(state.depth0 + 1);
  if (name == "depth0") return Value(state.depth0);
  if (name == "previtem") return i > 0 ? state.items[i - 1] : Value::make_undefined("loop.previtem");
  if (name == "nextitem") return i + 1 < length ? state.items[i + 1] : Value::make_undefined("loop.nextitem");
  return Value::make_undefined("loop." + name);
}

Value Renderer::call_loop_method(const Value& loop, const std::string& name, const Arguments& args, Offset where) {
  LoopState& state = *loop.loop;
  if (name == "cycle") {
    if (args.empty()) error(where, "loop.cycle() needs at least one value");
    return args[loop.loop_index0 % args.size()];
  }
  if (name == "changed") {
    json current = json::array();
    for (const Value& arg : args) current.push_back(storable(arg, where));
    if (state.changed_seen && python_equal(state.changed_last, current)) return Value(false);
    state.changed_seen = true;
    state.changed_last = std::move(current);
    return Value(true);
  }
  error(where, "'loop." + name + "' is not callable");
}

Value Renderer::call_macro(const Value& function, const Arguments& args, const KeywordArguments& kwargs, Offset where,
                           const Value* caller) {
  const Node& macro = *function.macro;
  if (macro.kind == Node::Kind::call_block && function.caller_scopes > scopes_.size())
    error(where, "caller() is called outside the macro it was given to");
  if (call_depth_ >= Limits::call_depth)
    error(where, "macro '" + macro.attribute + "' called more than " + std::to_string(Limits::call_depth) +
                     " levels deep (recursion)");
  if (args.size() > macro.targets.size())
    error(where, "macro '" + macro.attribute + "' takes not more than " + std::to_string(macro.targets.size()) +
                     " argument(s)");
  Scope scope;
  for (std::size_t i = 0; i < args.size(); ++i) scope[macro.targets[i]] = args[i];
  for (const auto& [key, value] : kwargs) {
    const auto parameter = std::find(macro.targets.begin(), macro.targets.end(), key);
    if (parameter == macro.targets.end())
      error(where, "macro '" + macro.attribute + "' takes no keyword argument '" + key + "'");
    if (scope.count(key)) error(where, "macro '" + macro.attribute + "' got multiple values for argument '" + key + "'");
    scope[key] = value;
  }
  scope["varargs"] = Value::make_tuple(json::array());
  scope["kwargs"] = Value(json::object());
  if (caller) scope["caller"] = *caller;
  if (macro.kind == Node::Kind::call_block) return call_caller(function, std::move(scope));
  struct Frame {
    Renderer& r;
    std::size_t floor;
    std::vector<Scope> scopes;
    ~Frame() {
      r.scopes_.resize(r.scope_floor_);
      r.scope_floor_ = floor;
      --r.call_depth_;
    }
  } frame{*this, scope_floor_, {}};
  ++call_depth_;
  scope_floor_ = scopes_.size();
  scopes_.push_back(std::move(scope));
  // Defaults are evaluated at call time, in the macro's scope (they may use earlier parameters).
  for (std::size_t i = 0; i < macro.targets.size(); ++i) {
    if (scopes_.back().count(macro.targets[i])) continue;
    scopes_.back()[macro.targets[i]] =
        macro.defaults[i] ? eval(*macro.defaults[i]) : Value::make_undefined(macro.targets[i]);
  }
  return Value(capture(macro.body));
}

// Runs a {% call %} body: the scopes above its call site (the macro's) are set aside meanwhile.
Value Renderer::call_caller(const Value& function, Scope scope) {
  const Node& block = *function.macro;
  std::vector<Scope> set_aside(std::make_move_iterator(scopes_.begin() + static_cast<std::ptrdiff_t>(function.caller_scopes)),
                               std::make_move_iterator(scopes_.end()));
  scopes_.resize(function.caller_scopes);
  const std::size_t floor = scope_floor_;
  scope_floor_ = function.caller_floor;
  ++call_depth_;
  scopes_.push_back(std::move(scope));
  for (std::size_t i = 0; i < block.targets.size(); ++i) {
    if (scopes_.back().count(block.targets[i])) continue;
    scopes_.back()[block.targets[i]] =
        block.defaults[i] ? eval(*block.defaults[i]) : Value::make_undefined(block.targets[i]);
  }
  std::string text = capture(block.body);
  --call_depth_;
  scopes_.pop_back();
  scope_floor_ = floor;
  for (Scope& s : set_aside) scopes_.push_back(std::move(s));
  return Value(std::move(text));
}

std::size_t Renderer::check(const json& value, Offset where) {
  const std::size_t bytes = guard(where, [&] { return check_value_size(value); });
  charge(bytes, where);
  return bytes;
}

// Counts the bytes of strings and lists the render builds, copies or scans: each is bounded
// alone, and this bounds them together (a loop re-building or re-reading a large string is
// work, not output).
void Renderer::charge(std::size_t bytes, Offset where) {
  work_bytes_ += bytes;
  if (work_bytes_ > work_limit_)
    error(where, "the template built or scanned more than " + std::to_string(work_limit_) + " bytes of values");
}

// The size a builtin's result is charged at: string bytes, or 16 per list or dict entry.
// Scanning a string (a filter, a method, `in`, ==, an index) costs its length.
void Renderer::charge_scan(const Value& value, Offset where) {
  if (value.is_data() && value.data().is_string()) charge(value.data().get_ref<const std::string&>().size(), where);
}

void Renderer::charge_result(const Value& result, Offset where) {
  const json& data = result.view();
  if (data.is_string()) charge(data.get_ref<const std::string&>().size(), where);
  else if (data.is_array() || data.is_object()) charge(16 * data.size(), where);
}

std::string render(std::string_view source, const Body& body, const json& context, const RenderOptions& options) {
  return Renderer(source, context, options).run(body);
}

}  // namespace dsv3::jinja
