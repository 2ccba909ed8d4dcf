// Tokens -> statement tree. Operator precedence follows Jinja2's parser, loosest first:
//   x if c else y  <  or  <  and  <  not  <  comparisons, in, not in  <  + -  <  ~  <  * / // %
//   <  **  <  unary - +  <  primary with postfix (.attr, [index], (call)), filters | and tests `is`
// so `not x is defined` is `not (x is defined)` and `a + b | length` filters only b, as in Jinja2.
#include <charconv>
#include <cstdlib>
#include <limits>
#include <set>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace dsv3::jinja {
namespace {

class Parser {
 public:
  Parser(std::string_view source, const std::vector<Token>& tokens) : source_(source), tokens_(tokens) {}

  Body parse_template() {
    std::string end_tag;
    Body body = parse_body({}, end_tag);
    return body;
  }

 private:
  // Bounds the parser's recursion, so a hostile template fails with an error instead of
  // overflowing the stack: counted once per statement block, once per expression (so once per
  // bracket, call or subscript, which hold expressions), and per `not` and unary sign.
  class Nesting {
   public:
    Nesting(Parser& parser, Offset where) : parser_(parser) {
      if (++parser_.nesting_ > Limits::nesting)
        fail_at(parser_.source_, where,
                "nested more than " + std::to_string(Limits::nesting) + " levels deep (blocks, brackets or operators)");
    }
    ~Nesting() { --parser_.nesting_; }
    Nesting(const Nesting&) = delete;
    Nesting& operator=(const Nesting&) = delete;

   private:
    Parser& parser_;
  };

  const Token& peek(std::size_t ahead = 0) const {
    const std::size_t index = std::min(position_ + ahead, tokens_.size() - 1);
    return tokens_[index];
  }
  const Token& next() {
    const Token& token = peek();
    if (position_ < tokens_.size() - 1) ++position_;
    return token;
  }
  bool at_op(const char* op) const { return peek().kind == TokenKind::op && peek().text == op; }
  bool at_name(const char* name) const { return peek().kind == TokenKind::name && peek().text == name; }
  bool accept_op(const char* op) {
    if (!at_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* name) {
    if (!at_name(name)) return false;
    next();
    return true;
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    const Token& token = peek();
    std::string found;
    switch (token.kind) {
      case TokenKind::end_of_input: found = "end of template"; break;
      case TokenKind::block_end: found = "'%}'"; break;
      case TokenKind::variable_end: found = "'}}'"; break;
      case TokenKind::text: found = "template text"; break;
      case TokenKind::string: found = "string '" + token.text + "'"; break;
      default: found = "'" + token.text + "'";
    }
    fail_at(source_, token.where, "expected " + expected + ", found " + found);
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) unexpected(std::string("'") + op + "'");
  }
  std::string expect_name() {
    if (peek().kind != TokenKind::name) unexpected("a name");
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != TokenKind::block_end) unexpected("'%}'");
    next();
  }

  // Parses nodes until a block tag whose keyword is in `stops`; leaves that keyword in `stopped`
  // and the parser just after it (the rest of that tag is the caller's to read).
  Body parse_body(const std::set<std::string>& stops, std::string& stopped) {
    Body body;
    while (true) {
      const Token& token = peek();
      if (token.kind == TokenKind::end_of_input) {
        if (!stops.empty()) {
          std::string wanted;
          for (const auto& stop : stops) wanted += (wanted.empty() ? "'" : " or '") + stop + "'";
          fail_at(source_, token.where, "unexpected end of template, expected " + wanted);
        }
        return body;
      }
      if (token.kind == TokenKind::text) {
        body.push_back(Node{Node::Kind::text, token.where});
        body.back().text = next().text;
      } else if (token.kind == TokenKind::variable_begin) {
        next();
        Node node{Node::Kind::output, token.where};
        node.expr = parse_expression();
        if (peek().kind != TokenKind::variable_end) unexpected("'}}'");
        next();
        body.push_back(std::move(node));
      } else if (token.kind == TokenKind::block_begin) {
        next();
        const Token& keyword = peek();
        if (keyword.kind != TokenKind::name) unexpected("a statement keyword");
        if (stops.count(keyword.text)) {
          stopped = next().text;
          return body;
        }
        Nesting nesting(*this, keyword.where);
        body.push_back(parse_statement());
      } else {
        unexpected("template text or a tag");
      }
    }
  }

  Node parse_statement() {
    const Token& keyword = next();
    if (keyword.text == "if") return parse_if(keyword.where);
    if (keyword.text == "for") return parse_for(keyword.where);
    if (keyword.text == "set") return parse_set(keyword.where);
    if (keyword.text == "macro") return parse_macro(keyword.where);
    if (keyword.text == "call") return parse_call_block(keyword.where);
    if (keyword.text == "filter") return parse_filter_block(keyword.where);
    if (keyword.text == "with") return parse_with(keyword.where);
    if (keyword.text == "generation") {
      Node node{Node::Kind::generation, keyword.where};
      expect_block_end();
      node.body = parse_until("endgeneration");
      return node;
    }
    if (keyword.text == "break" || keyword.text == "continue") {
      if (loop_depth_ == 0) fail_at(source_, keyword.where, "'" + keyword.text + "' outside a for loop");
      expect_block_end();
      return Node{keyword.text == "break" ? Node::Kind::loop_break : Node::Kind::loop_continue, keyword.where};
    }
    static const std::set<std::string> closers = {"endif", "endfor", "else", "elif", "endset", "endmacro",
                                                  "endcall", "endfilter", "endwith", "endgeneration", "endraw"};
    if (closers.count(keyword.text))
      fail_at(source_, keyword.where, "'" + keyword.text + "' without a matching opening tag");
    fail_at(source_, keyword.where, "unknown statement '" + keyword.text + "'");
  }

  // The body of a block closed by `{% end %}` with nothing else in that closing tag.
  Body parse_until(const std::string& end) {
    std::string stopped;
    Body body = parse_body({end}, stopped);
    expect_block_end();
    return body;
  }

  // `{% macro name(a, b=default) %}`; macros may be called from inside themselves (recursion is
  // bounded at render time), so loop_depth_ restarts: a loop outside does not hold the body.
  Node parse_macro(Offset where) {
    Node node{Node::Kind::macro, where};
    node.attribute = expect_name();
    parse_parameters(node);
    expect_block_end();
    const int outer_loops = loop_depth_;
    loop_depth_ = 0;
    node.body = parse_until("endmacro");
    loop_depth_ = outer_loops;
    return node;
  }

  void parse_parameters(Node& node) {
    expect_op("(");
    while (!at_op(")")) {
      node.targets.push_back(expect_name());
      if (accept_op("=")) {
        node.defaults.push_back(parse_expression());
      } else {
        if (!node.defaults.empty() && node.defaults.back())
          fail_at(source_, peek().where, "a parameter without a default follows one with a default");
        node.defaults.push_back(nullptr);
      }
      if (!accept_op(",")) break;
    }
    expect_op(")");
  }

  Node parse_call_block(Offset where) {
    Node node{Node::Kind::call_block, where};
    node.attribute = "caller";
    if (at_op("(")) parse_parameters(node);
    node.expr = parse_expression();
    if (node.expr->kind != Expr::Kind::call) fail_at(source_, node.expr->where, "{% call %} needs a macro call");
    expect_block_end();
    const int outer_loops = loop_depth_;
    loop_depth_ = 0;
    node.body = parse_until("endcall");
    loop_depth_ = outer_loops;
    return node;
  }

  // `{% filter upper | trim %}`: the filters are parsed onto a null literal that stands for the body.
  Node parse_filter_block(Offset where) {
    Node node{Node::Kind::filter_block, where};
    ExprPtr body_value = make(Expr::Kind::literal, where);
    node.expr = parse_filter_chain(std::move(body_value), false);
    expect_block_end();
    node.body = parse_until("endfilter");
    return node;
  }

  Node parse_with(Offset where) {
    Node node{Node::Kind::with_block, where};
    while (peek().kind != TokenKind::block_end) {
      node.targets.push_back(expect_name());
      expect_op("=");
      node.defaults.push_back(parse_expression());
      if (!accept_op(",")) break;
    }
    expect_block_end();
    node.body = parse_until("endwith");
    return node;
  }

  Node parse_if(Offset where) {
    Node node{Node::Kind::if_chain, where};
    ExprPtr condition = parse_expression();
    expect_block_end();
    while (true) {
      std::string stopped;
      Body body = parse_body({"elif", "else", "endif"}, stopped);
      node.branches.emplace_back(std::move(condition), std::move(body));
      if (stopped == "endif") break;
      if (stopped == "elif") {
        condition = parse_expression();
        expect_block_end();
        continue;
      }
      expect_block_end();
      Body else_body = parse_body({"endif"}, stopped);
      node.branches.emplace_back(nullptr, std::move(else_body));
      break;
    }
    expect_block_end();
    return node;
  }

  Node parse_for(Offset where) {
    Node node{Node::Kind::for_loop, where};
    node.targets = parse_targets();
    if (!accept_name("in")) unexpected("'in'");
    node.expr = parse_or_tuple();  // not parse_expression: `if` here filters the loop, it is no ternary
    if (accept_name("if")) node.filter = parse_or();
    if (accept_name("recursive")) fail_at(source_, where, "recursive for loops are not supported");
    expect_block_end();
    ++loop_depth_;
    std::string stopped;
    node.body = parse_body({"else", "endfor"}, stopped);
    --loop_depth_;
    if (stopped == "else") {
      expect_block_end();
      node.else_body = parse_body({"endfor"}, stopped);
    }
    expect_block_end();
    return node;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> targets;
    const bool parenthesised = accept_op("(");
    do {
      targets.push_back(expect_name());
    } while (accept_op(","));
    if (parenthesised) expect_op(")");
    return targets;
  }

  Node parse_set(Offset where) {
    Node node{Node::Kind::set, where};
    if (peek().kind == TokenKind::name && peek(1).kind == TokenKind::op && peek(1).text == ".") {
      node.kind = Node::Kind::set_attr;
      node.targets.push_back(next().text);
      next();
      node.attribute = expect_name();
    } else {
      node.targets = parse_targets();
    }
    if (node.kind == Node::Kind::set && node.targets.size() == 1 && (peek().kind == TokenKind::block_end || at_op("|"))) {
      node.kind = Node::Kind::set_block;  // {% set x %}...{% endset %}, optionally {% set x | filter %}
      if (at_op("|")) node.expr = parse_filter_chain(make(Expr::Kind::literal, where), true);
      expect_block_end();
      node.body = parse_until("endset");
      return node;
    }
    expect_op("=");
    node.expr = parse_or_tuple_expression();
    expect_block_end();
    return node;
  }

  // `a, b` without brackets is a tuple where Jinja2 allows one: after `in` and `=`.
  ExprPtr parse_or_tuple() { return parse_bare_tuple([this] { return parse_or(); }); }
  ExprPtr parse_or_tuple_expression() { return parse_bare_tuple([this] { return parse_expression(); }); }
  template <typename Parse>
  ExprPtr parse_bare_tuple(Parse parse_item) {
    ExprPtr first = parse_item();
    if (!at_op(",")) return first;
    ExprPtr tuple = make(Expr::Kind::tuple, first->where);
    tuple->args.push_back(std::move(first));
    while (accept_op(",") && peek().kind != TokenKind::block_end && !at_name("if")) tuple->args.push_back(parse_item());
    return finish(std::move(tuple));
  }

  ExprPtr make(Expr::Kind kind, Offset where, std::string name = {}) {
    auto expr = std::make_unique<Expr>();
    expr->kind = kind;
    expr->where = where;
    expr->name = std::move(name);
    return expr;
  }
  // Records the depth of a finished node; chains like `a + b + c ...` or `x | f | f ...` are
  // built by loops, not recursion, so the depth bound is checked here as well.
  ExprPtr finish(ExprPtr expr) {
    if (expr->kind == Expr::Kind::literal) expr->shared_value = std::make_shared<const json>(expr->value);
    std::size_t depth = 0;
    for (const auto& arg : expr->args)
      if (arg) depth = std::max(depth, arg->depth);
    for (const auto& [unused, arg] : expr->kwargs) depth = std::max(depth, arg->depth);
    expr->depth = depth + 1;
    if (expr->depth > 3 * Limits::nesting)
      fail_at(source_, expr->where, "expression nested more than " + std::to_string(3 * Limits::nesting) +
                                        " levels deep (operator, filter or attribute chains)");
    return expr;
  }
  ExprPtr make_binary(const std::string& op, Offset where, ExprPtr left, ExprPtr right) {
    ExprPtr expr = make(Expr::Kind::binary, where, op);
    expr->args.push_back(std::move(left));
    expr->args.push_back(std::move(right));
    return finish(std::move(expr));
  }

  ExprPtr parse_expression() {
    Nesting nesting(*this, peek().where);
    ExprPtr value = parse_or();
    if (!at_name("if")) return value;
    const Offset where = next().where;
    ExprPtr expr = make(Expr::Kind::conditional, where);
    expr->args.push_back(std::move(value));
    expr->args.push_back(parse_or());
    expr->args.push_back(accept_name("else") ? parse_expression() : nullptr);
    return finish(std::move(expr));
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (at_name("or")) {
      const Offset where = next().where;
      left = make_binary("or", where, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (at_name("and")) {
      const Offset where = next().where;
      left = make_binary("and", where, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (at_name("not")) {
      const Offset where = next().where;
      Nesting nesting(*this, where);
      ExprPtr expr = make(Expr::Kind::unary, where, "not");
      expr->args.push_back(parse_not());
      return finish(std::move(expr));
    }
    return parse_compare();
  }

  // Python chains comparisons: `a < b < c` is `a < b and b < c`, with b evaluated once.
  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    ExprPtr chain;
    while (true) {
      const Token& token = peek();
      std::string op;
      if (token.kind == TokenKind::op &&
          (token.text == "==" || token.text == "!=" || token.text == "<" || token.text == "<=" ||
           token.text == ">" || token.text == ">=")) {
        op = token.text;
        next();
      } else if (at_name("in")) {
        op = "in";
        next();
      } else if (at_name("not") && peek(1).kind == TokenKind::name && peek(1).text == "in") {
        op = "not in";
        next();
        next();
      } else {
        break;
      }
      if (!chain) {
        chain = make(Expr::Kind::compare, token.where);
        chain->args.push_back(std::move(first));
      }
      chain->ops.push_back(op);
      chain->args.push_back(parse_math1());
      if (chain->args.size() > 3 * Limits::nesting)
        fail_at(source_, token.where, "more than " + std::to_string(3 * Limits::nesting) + " chained comparisons");
    }
    return chain ? finish(std::move(chain)) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (at_op("+") || at_op("-")) {
      const Token& token = next();
      left = make_binary(token.text, token.where, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (at_op("~")) {
      const Offset where = next().where;
      left = make_binary("~", where, std::move(left), parse_math2());
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const Token& token = next();
      left = make_binary(token.text, token.where, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary();
    while (at_op("**")) {
      const Offset where = next().where;
      left = make_binary("**", where, std::move(left), parse_unary());
    }
    return left;
  }

  // As in Jinja2, filters after a negation apply to the negated value: `-3 | abs` is 3.
  ExprPtr parse_unary(bool with_filters = true) {
    ExprPtr expr;
    if (at_op("-") || at_op("+")) {
      const Token& token = next();
      Nesting nesting(*this, token.where);
      expr = make(Expr::Kind::unary, token.where, token.text);
      expr->args.push_back(parse_unary(false));
      expr = finish(std::move(expr));
    } else {
      expr = parse_postfix(parse_primary());
    }
    return with_filters ? parse_filters_and_tests(std::move(expr)) : std::move(expr);
  }

  ExprPtr parse_primary() {
    const Token& token = next();
    switch (token.kind) {
      case TokenKind::string: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        std::string value = token.text;
        while (peek().kind == TokenKind::string) value += next().text;  // 'a' 'b' concatenates
        expr->value = value;
        return finish(std::move(expr));
      }
      case TokenKind::integer: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        // Up to 2^64 - 1, the range JSON integers arrive in; arithmetic beyond 64 signed bits fails.
        std::uint64_t value = 0;
        const auto [end, error] = std::from_chars(token.text.data(), token.text.data() + token.text.size(), value);
        if (error != std::errc() || end != token.text.data() + token.text.size())
          fail_at(source_, token.where, "integer " + token.text + " does not fit in 64 bits");
        if (value <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          expr->value = static_cast<std::int64_t>(value);
        else
          expr->value = value;
        return finish(std::move(expr));
      }
      case TokenKind::floating: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        expr->value = std::strtod(token.text.c_str(), nullptr);  // overflow gives inf, as in Python
        return finish(std::move(expr));
      }
      case TokenKind::name: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        if (token.text == "true" || token.text == "True") {
          expr->value = true;
        } else if (token.text == "false" || token.text == "False") {
          expr->value = false;
        } else if (token.text == "none" || token.text == "None") {
          expr->value = nullptr;
        } else {
          expr->kind = Expr::Kind::name;
          expr->name = token.text;
        }
        return finish(std::move(expr));
      }
      case TokenKind::op:
        if (token.text == "(") {
          if (accept_op(")")) return finish(make(Expr::Kind::tuple, token.where));
          ExprPtr inner = parse_expression();
          if (at_op(",")) {  // a tuple
            ExprPtr tuple = make(Expr::Kind::tuple, token.where);
            tuple->args.push_back(std::move(inner));
            while (accept_op(",") && !at_op(")")) tuple->args.push_back(parse_expression());
            inner = finish(std::move(tuple));
          }
          expect_op(")");
          return inner;
        }
        if (token.text == "[") {
          ExprPtr list = make(Expr::Kind::list, token.where);
          while (!at_op("]")) {
            list->args.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("]");
          return finish(std::move(list));
        }
        if (token.text == "{") {
          ExprPtr dict = make(Expr::Kind::dict, token.where);
          while (!at_op("}")) {
            dict->args.push_back(parse_expression());
            expect_op(":");
            dict->args.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("}");
          return finish(std::move(dict));
        }
        break;
      default:
        break;
    }
    --position_;
    unexpected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr expr) {
    while (true) {
      if (at_op(".")) {
        const Offset where = next().where;
        ExprPtr attribute = make(Expr::Kind::attribute, where, expect_name());
        attribute->args.push_back(std::move(expr));
        expr = finish(std::move(attribute));
      } else if (at_op("[")) {
        expr = parse_subscript(std::move(expr));
      } else if (at_op("(")) {
        expr = parse_call(std::move(expr), Expr::Kind::call, "");
      } else {
        return expr;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object) {
    const Offset where = next().where;
    ExprPtr parts[3];
    int part = 0;
    bool is_slice = false;
    while (!at_op("]")) {
      if (at_op(":")) {
        next();
        is_slice = true;
        if (++part > 2) unexpected("']'");
        continue;
      }
      if (parts[part]) unexpected("':' or ']'");
      parts[part] = parse_expression();
    }
    next();
    if (!is_slice) {
      if (!parts[0]) fail_at(source_, where, "empty subscript '[]'");
      ExprPtr expr = make(Expr::Kind::subscript, where);
      expr->args.push_back(std::move(object));
      expr->args.push_back(std::move(parts[0]));
      return finish(std::move(expr));
    }
    ExprPtr expr = make(Expr::Kind::slice, where);
    expr->args.push_back(std::move(object));
    for (auto& p : parts) expr->args.push_back(std::move(p));
    return finish(std::move(expr));
  }

  // Reads `(positional..., key=value...)` into a call, filter or test node whose args[0] is `callee`.
  ExprPtr parse_call(ExprPtr callee, Expr::Kind kind, std::string name) {
    ExprPtr expr = make(kind, callee->where, std::move(name));
    expr->args.push_back(std::move(callee));
    expect_op("(");
    while (!at_op(")")) {
      if (peek().kind == TokenKind::name && peek(1).kind == TokenKind::op && peek(1).text == "=") {
        std::string key = next().text;
        next();
        expr->kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!expr->kwargs.empty()) unexpected("a keyword argument after keyword arguments");
        expr->args.push_back(parse_expression());
      }
      if (!accept_op(",")) break;
    }
    expect_op(")");
    return finish(std::move(expr));
  }

  // `| name` or `| name(args)`, repeated; with `only_filters`, stops at anything else.
  // `expect_bar`: a `|` comes first (after an expression); a {% filter %} tag starts with the name.
  ExprPtr parse_filter_chain(ExprPtr expr, bool expect_bar) {
    if (expect_bar) expect_op("|");
    while (true) {
      const Token& name = peek();
      const std::string filter = expect_name();
      if (!has_filter(filter)) fail_at(source_, name.where, "unknown filter '" + filter + "'");
      if (at_op("(")) {
        expr = parse_call(std::move(expr), Expr::Kind::filter, filter);
      } else {
        ExprPtr node = make(Expr::Kind::filter, name.where, filter);
        node->args.push_back(std::move(expr));
        expr = finish(std::move(node));
      }
      expr->where = name.where;
      if (!at_op("|")) return expr;
      next();
    }
  }

  ExprPtr parse_filters_and_tests(ExprPtr expr) {
    while (true) {
      if (at_op("|")) {
        expr = parse_filter_chain(std::move(expr), true);
      } else if (at_name("is")) {
        next();
        const bool negated = accept_name("not");
        const Token& name = peek();
        std::string test = expect_name();
        if (!has_test(test)) fail_at(source_, name.where, "unknown test '" + test + "'");
        ExprPtr node;
        if (at_op("(")) {
          node = parse_call(std::move(expr), Expr::Kind::test, test);
        } else {
          node = make(Expr::Kind::test, name.where, test);
          node->args.push_back(std::move(expr));
          // `is sameas x` / `is divisibleby 3`: one argument without parentheses, as Jinja allows
          const Token& after = peek();
          if (after.kind == TokenKind::string || after.kind == TokenKind::integer ||
              after.kind == TokenKind::floating || (after.kind == TokenKind::op && (after.text == "[" || after.text == "{")) ||
              (after.kind == TokenKind::name && after.text != "and" && after.text != "or" &&
               after.text != "if" && after.text != "else" && after.text != "is" && after.text != "in" &&
               after.text != "not"))
            node->args.push_back(parse_postfix(parse_primary()));
          node = finish(std::move(node));
        }
        node->where = name.where;
        node->negated = negated;
        expr = std::move(node);
      } else {
        return expr;
      }
    }
  }

  std::string_view source_;
  const std::vector<Token>& tokens_;
  std::size_t position_ = 0;
  int loop_depth_ = 0;
  std::size_t nesting_ = 0;
};

}  // namespace

Body parse(std::string_view source, const std::vector<Token>& tokens) {
  return Parser(source, tokens).parse_template();
}

}  // namespace dsv3::jinja
