// Tokens -> statement tree. Operator precedence follows Jinja2's parser, loosest first:
//   x if c else y  <  or  <  and  <  not  <  comparisons, in, not in  <  + -  <  ~  <  * / // %
//   <  **  <  unary - +  <  primary with postfix (.attr, [index], (call)), filters | and tests `is`
// so `not x is defined` is `not (x is defined)` and `a + b | length` filters only b, as in Jinja2.
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
    if (keyword.text == "break" || keyword.text == "continue") {
      if (loop_depth_ == 0) fail_at(source_, keyword.where, "'" + keyword.text + "' outside a for loop");
      expect_block_end();
      return Node{keyword.text == "break" ? Node::Kind::loop_break : Node::Kind::loop_continue, keyword.where};
    }
    static const std::set<std::string> closers = {"endif", "endfor", "else", "elif", "endset"};
    if (closers.count(keyword.text))
      fail_at(source_, keyword.where, "'" + keyword.text + "' without a matching opening tag");
    fail_at(source_, keyword.where, "unknown statement '" + keyword.text + "'");
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
    node.expr = parse_or();  // not parse_expression: `if` here filters the loop, it is no ternary
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
    if (peek().kind == TokenKind::block_end)
      fail_at(source_, where, "block assignments ({% set x %}...{% endset %}) are not supported");
    expect_op("=");
    node.expr = parse_expression();
    expect_block_end();
    return node;
  }

  ExprPtr make(Expr::Kind kind, Offset where, std::string name = {}) {
    auto expr = std::make_unique<Expr>();
    expr->kind = kind;
    expr->where = where;
    expr->name = std::move(name);
    return expr;
  }
  ExprPtr make_binary(const std::string& op, Offset where, ExprPtr left, ExprPtr right) {
    ExprPtr expr = make(Expr::Kind::binary, where, op);
    expr->args.push_back(std::move(left));
    expr->args.push_back(std::move(right));
    return expr;
  }

  ExprPtr parse_expression() {
    ExprPtr value = parse_or();
    if (!at_name("if")) return value;
    const Offset where = next().where;
    ExprPtr expr = make(Expr::Kind::conditional, where);
    expr->args.push_back(std::move(value));
    expr->args.push_back(parse_or());
    expr->args.push_back(accept_name("else") ? parse_expression() : nullptr);
    return expr;
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
      ExprPtr expr = make(Expr::Kind::unary, where, "not");
      expr->args.push_back(parse_not());
      return expr;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr left = parse_math1();
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
        return left;
      }
      left = make_binary(op, token.where, std::move(left), parse_math1());
    }
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
      expr = make(Expr::Kind::unary, token.where, token.text);
      expr->args.push_back(parse_unary(false));
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
        return expr;
      }
      case TokenKind::integer: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        expr->value = std::stoll(token.text);
        return expr;
      }
      case TokenKind::floating: {
        ExprPtr expr = make(Expr::Kind::literal, token.where);
        expr->value = std::stod(token.text);
        return expr;
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
        return expr;
      }
      case TokenKind::op:
        if (token.text == "(") {
          ExprPtr inner = parse_expression();
          if (at_op(",")) {  // a tuple: Jinja's tuples behave as lists here
            ExprPtr list = make(Expr::Kind::list, token.where);
            list->args.push_back(std::move(inner));
            while (accept_op(",") && !at_op(")")) list->args.push_back(parse_expression());
            inner = std::move(list);
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
          return list;
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
          return dict;
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
        expr = std::move(attribute);
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
      return expr;
    }
    ExprPtr expr = make(Expr::Kind::slice, where);
    expr->args.push_back(std::move(object));
    for (auto& p : parts) expr->args.push_back(std::move(p));
    return expr;
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
    return expr;
  }

  ExprPtr parse_filters_and_tests(ExprPtr expr) {
    while (true) {
      if (at_op("|")) {
        next();
        const Token& name = peek();
        const std::string filter = expect_name();
        if (!has_filter(filter)) fail_at(source_, name.where, "unknown filter '" + filter + "'");
        if (at_op("(")) {
          expr = parse_call(std::move(expr), Expr::Kind::filter, filter);
        } else {
          ExprPtr node = make(Expr::Kind::filter, name.where, filter);
          node->args.push_back(std::move(expr));
          expr = std::move(node);
        }
        expr->where = name.where;
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
              after.kind == TokenKind::floating ||
              (after.kind == TokenKind::name && after.text != "and" && after.text != "or" &&
               after.text != "if" && after.text != "else" && after.text != "is" && after.text != "in" &&
               after.text != "not"))
            node->args.push_back(parse_postfix(parse_primary()));
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
};

}  // namespace

Body parse(std::string_view source, const std::vector<Token>& tokens) {
  return Parser(source, tokens).parse_template();
}

}  // namespace dsv3::jinja
