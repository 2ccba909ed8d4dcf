#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace dsv3 {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + " is missing: run scripts/setup.sh (data) or check ../shared (fixtures)");
  return json::parse(in);
}

const json& deepseek_config() {
  static const json config = read_json(std::string(DSV3_DATA_DIR) + "/tokenizer/deepseek-v3/tokenizer_config.json");
  return config;
}

std::string render_deepseek(const json& messages, bool add_generation_prompt) {
  const json& config = deepseek_config();
  return render_chat_template(config.at("chat_template").get<std::string>(),
                              chat_template_context(config, messages, add_generation_prompt));
}

std::string render(const std::string& source, const json& context = json::object()) {
  return render_chat_template(source, context);
}

// The error message a template produces, or a marker when it renders without one.
std::string error_of(const std::string& source, const json& context = json::object()) {
  try {
    render_chat_template(source, context);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

const std::string bos = "<｜begin▁of▁sentence｜>";
const std::string eos = "<｜end▁of▁sentence｜>";

TEST(ChatTemplate, RendersEveryFixtureChatLikeHuggingFace) {
  const json reference = read_json(std::string(DSV3_SHARED_DIR) + "/fixtures/tokenizer-ref.json");
  ASSERT_FALSE(reference.at("chats").empty()) << "tokenizer-ref.json has no chats";
  for (const auto& chat : reference.at("chats")) {
    EXPECT_EQ(render_deepseek(chat.at("messages"), chat.at("add_generation_prompt").get<bool>()),
              chat.at("text").get<std::string>())
        << chat.at("messages").dump();
  }
}

TEST(ChatTemplate, ContextTakesSpecialTokensAsStringsOrAddedTokenObjects) {
  const json as_object = {{"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}}}, {"eos_token", "</s>"}};
  const json context = chat_template_context(as_object, json::array(), true);
  EXPECT_EQ(context.at("bos_token"), "<s>");
  EXPECT_EQ(context.at("eos_token"), "</s>");
  EXPECT_EQ(context.at("add_generation_prompt"), true);
  EXPECT_THROW(chat_template_context({{"bos_token", 3}}, json::array(), false), Error);
}

// Expected strings below are written out by hand from the DeepSeek-V3 template's logic.
TEST(ChatTemplate, DeepSeekV3SystemPromptAndMultipleTurns) {
  const json messages = json::parse(R"([
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"}])");
  const std::string turns = bos + "You are a helpful assistant.<｜User｜>Hi<｜Assistant｜>Hello! How can I help?" +
                            eos + "<｜User｜>What is 2+2?";
  EXPECT_EQ(render_deepseek(messages, true), turns + "<｜Assistant｜>");
  EXPECT_EQ(render_deepseek(messages, false), turns);
}

TEST(ChatTemplate, DeepSeekV3SystemPromptsAreJoinedAndPlacedAfterBos) {
  const json messages = json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "x"},
    {"role": "system", "content": "Answer in French."}])");
  EXPECT_EQ(render_deepseek(messages, false), bos + "Be brief.\n\nAnswer in French.<｜User｜>x");
}

TEST(ChatTemplate, DeepSeekV3TwoToolCallsThenToolOutputsThenAnswer) {
  const json messages = json::parse(R"([
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
      {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
    {"role": "tool", "content": "18C"},
    {"role": "tool", "content": "21C"},
    {"role": "assistant", "content": "Paris 18C, Rome 21C."}])");
  const std::string expected =
      bos + "<｜User｜>Weather in Paris and Rome?" +
      "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
      "{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>" +
      "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Rome\"}\n```"
      "<｜tool▁call▁end｜><｜tool▁calls▁end｜>" + eos +
      "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜>" +
      "\n<｜tool▁output▁begin｜>21C<｜tool▁output▁end｜>" +
      "<｜tool▁outputs▁end｜>Paris 18C, Rome 21C." + eos;
  EXPECT_EQ(render_deepseek(messages, false), expected);
  EXPECT_EQ(render_deepseek(messages, true), expected + "<｜Assistant｜>");
}

TEST(ChatTemplate, DeepSeekV3EndingOnToolOutputClosesOutputsWithoutGenerationPrompt) {
  // With a single call the V3 template never writes <｜tool▁calls▁end｜> (only the second and later
  // calls do); we reproduce the template, quirks included.
  const json messages = json::parse(R"([
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "content": "out"}])");
  EXPECT_EQ(render_deepseek(messages, true),
            bos + "<｜User｜>q<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n"
                  "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>out"
                  "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
}

TEST(ChatTemplate, R1StyleTemplateDropsReasoningFromPastAnswers) {
  // The part of DeepSeek-R1's template that differs from V3: past answers keep only the text after
  // </think>, and the generation prompt opens a think block.
  const std::string r1 =
      "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
      "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
      "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
      "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}";
  const json context = {{"messages", json::parse(R"([{"role": "user", "content": "1+1?"},
      {"role": "assistant", "content": "<think>easy</think>2"}, {"role": "user", "content": "2+2?"}])")},
                        {"add_generation_prompt", true}};
  EXPECT_EQ(render(r1, context), "<｜User｜>1+1?<｜Assistant｜>2" + eos + "<｜User｜>2+2?<｜Assistant｜><think>\n");
}

TEST(ChatTemplate, WhitespaceControlStripsOnTheMarkedSide) {
  EXPECT_EQ(render("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(render("a  {{ 'b' -}}  c"), "a  bc");
  EXPECT_EQ(render("a \n {%- if true %}b{% endif %}"), "ab");
  EXPECT_EQ(render("a {#- note -#} b"), "ab");
  EXPECT_EQ(render("x {# a comment #}y"), "x y");
}

TEST(ChatTemplate, TrimBlocksAndLstripBlocksAsInTransformers) {
  // A block tag eats the newline after it; indentation before a block tag on its own line goes.
  EXPECT_EQ(render("{% if true %}\n  yes\n  {% endif %}\nafter"), "  yes\nafter");
  EXPECT_EQ(render("{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n"), "1\n2\n");
  // Expressions are neither trimmed nor lstripped; `{%+` keeps the indentation.
  EXPECT_EQ(render("  {{ 1 }}\n2"), "  1\n2");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("a  {% if true %}x{% endif %}"), "a  x");
}

TEST(ChatTemplate, ForLoopExposesLoopVariables) {
  EXPECT_EQ(render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ x }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}{{ loop.length }};{% endfor %}"),
            "10aF3;21b3;32cL3;");
  EXPECT_EQ(render("{% for x in [1, 2] %}{{ loop.revindex }}{{ loop.revindex0 }}{% endfor %}"), "2110");
}

TEST(ChatTemplate, ForLoopElseFilterBreakContinueAndUnpacking) {
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}"
                   "{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"a", 1}, {"b", 2}}}}),
            "a=1;b=2;");
  EXPECT_EQ(render("{% for k in d %}{{ k }}{% endfor %}", {{"d", {{"x", 1}, {"y", 2}}}}), "xy");
  EXPECT_EQ(render("{% for c in 'hé!' %}[{{ c }}]{% endfor %}"), "[h][é][!]");
  EXPECT_EQ(render("{% for x in missing %}x{% else %}none{% endfor %}"), "none");
}

TEST(ChatTemplate, SetInsideLoopStaysInLoopButNamespaceCarriesOut) {
  EXPECT_EQ(render("{% set n = 0 %}{% for x in [1, 2] %}{% set n = n + x %}{% endfor %}{{ n }}"), "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0, seen='') %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}"
                   "{% set ns.seen = ns.seen ~ x %}{% endfor %}{{ ns.n }} {{ ns.seen }}"),
            "6 123");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.y = 2 %}"),
            "chat template line 1, column 19: cannot set attribute 'y' on int 'x': only namespace() objects "
            "take attribute assignment");
}

TEST(ChatTemplate, IfElifElseChoosesTheFirstTrueBranch) {
  const std::string source =
      "{% if x is not defined %}none{% elif x > 2 %}big{% elif x == 2 %}two{% else %}small{% endif %}";
  EXPECT_EQ(render(source, {{"x", 3}}), "big");
  EXPECT_EQ(render(source, {{"x", 2}}), "two");
  EXPECT_EQ(render(source, {{"x", 1}}), "small");
  EXPECT_EQ(render(source), "none");
}

TEST(ChatTemplate, OperatorsFollowJinjaPrecedenceAndPythonSemantics) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }}"),
            "7 9 8 3 2 3.5");
  EXPECT_EQ(render("{{ 'a' + 'b' ~ 1 ~ none }}"), "ab1None");
  EXPECT_EQ(render("{{ 'ab' * 2 }} {{ [1] + [2] }}"), "abab [1, 2]");
  EXPECT_EQ(render("{{ not x is defined }} {{ 1 < 2 and 2 < 3 }} {{ 0 or 'y' }} {{ '' and 1 }}"), "True True y ");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}"),
            "True True True True");
  EXPECT_EQ(render("{{ 'yes' if 1 == 1.0 else 'no' }} {{ 'x' if false }}|"), "yes |");
  EXPECT_EQ(render("{{ [1, 'a', true, none, 1.5] }} {{ {'k': [1]} }}"), "[1, 'a', True, None, 1.5] {'k': [1]}");
}

TEST(ChatTemplate, SubscriptsAttributesAndSlices) {
  const json context = {{"m", {{"role", "user"}, {"parts", {10, 20, 30}}}}};
  EXPECT_EQ(render("{{ m['role'] }} {{ m.role }} {{ m.parts[-1] }} {{ m['parts'][0] }}", context), "user user 30 10");
  EXPECT_EQ(render("{{ m.parts[1:] }} {{ m.parts[:-1] }} {{ m.parts[::-1] }} {{ 'héllo'[1:3] }}", context),
            "[20, 30] [10, 20] [30, 20, 10] él");
  EXPECT_EQ(render("[{{ m.missing }}] {{ m.missing is defined }} {{ m.parts[7] is defined }}", context),
            "[] False False");
}

TEST(ChatTemplate, StringMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|"),
            "a b|a|a|a|");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a,b,c'.split(',', 1) }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b,c']");
  EXPECT_EQ(render("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(['x', 'h']) }}"),
            "True True True");
  EXPECT_EQ(render("{{ 'Ab'.upper() }} {{ 'Ab'.lower() }} {{ 'a-b'.replace('-', '+') }} {{ ', '.join(['a', 'b']) }}"),
            "AB ab a+b a, b");
  EXPECT_EQ(render("{{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }}"),
            "Hello World Hello 1 2");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z', 'none') }} {{ d.keys() }} {{ d.values() }}", {{"d", {{"a", 1}}}}),
            "1 none ['a'] [1]");
}

TEST(ChatTemplate, Filters) {
  EXPECT_EQ(render("{{ [1, 2, 3] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} {{ missing | length }}"),
            "3 5 1 0");
  EXPECT_EQ(render("[{{ '  x \n' | trim }}] {{ missing | default('d') }} {{ '' | default('e', true) }} {{ 0 | d(5) }}"),
            "[x] d e 0");
  EXPECT_EQ(render("{{ ['a', 'b'] | join('-') }} {{ 'abc' | upper }} {{ 'ABC' | lower }} {{ [3, 1] | first }} "
                   "{{ [3, 1] | last }} {{ [1, 2] | reverse | list }} {{ -3 | abs }} {{ '42' | int + 1 }}"),
            "a-b ABC abc 3 1 [2, 1] 3 43");
  EXPECT_EQ(render("{{ xs | selectattr('role', 'equalto', 'user') | map(attribute='c') | join(',') }}",
                   {{"xs", json::parse(R"([{"role": "user", "c": "u1"}, {"role": "bot", "c": "b"}, {"role": "user", "c": "u2"}])")}}),
            "u1,u2");
  EXPECT_EQ(render("{{ 'a\nb' | indent(2) }}|{{ [1, 1, 2] | unique | list }}|{{ 'a<b' | e }}"), "a\n  b|[1, 2]|a&lt;b");
}

TEST(ChatTemplate, ToJsonFollowsTransformersDumps) {
  // Python's json.dumps: ", " and ": " separators, non-ASCII kept, nested indentation.
  EXPECT_EQ(render("{{ v | tojson }}", {{"v", json::parse(R"({"a": [1, 2.5, "é\"\n"], "b": null, "c": true})")}}),
            R"({"a": [1, 2.5, "é\"\n"], "b": null, "c": true})");
  EXPECT_EQ(render("{{ v | tojson(indent=2) }}", {{"v", json::parse(R"({"a": [1, {}], "b": []})")}}),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
  EXPECT_EQ(render("{{ 'x' | tojson }}"), "\"x\"");
}

TEST(ChatTemplate, TypeTests) {
  EXPECT_EQ(render("{{ none is none }} {{ 1 is not none }} {{ 's' is string }} {{ 1 is string }} {{ x is defined }} "
                   "{{ x is undefined }} {{ 1 is number }} {{ {} is mapping }} {{ 3 is odd }} {{ 6 is divisibleby(3) }} "
                   "{{ 6 is divisibleby 4 }} {{ 'a' is in 'cat' }} {{ true is boolean }} {{ 1.0 is float }}"),
            "True True True False False True True True True True False True True True");
}

TEST(ChatTemplate, RaiseExceptionReportsTheTemplatesMessageAndPosition) {
  EXPECT_EQ(error_of("ok\n  {{ raise_exception('Roles must alternate') }}"),
            "chat template line 2, column 6: raise_exception: Roles must alternate");
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("{% if x %}\nabc {{ 1 + }}"), "chat template line 2, column 12: expected an expression, found '}}'");
  EXPECT_EQ(error_of("{% if x %}no end"), "chat template line 1, column 17: unexpected end of template, expected "
                                          "'elif' or 'else' or 'endif'");
  EXPECT_EQ(error_of("a\n{% endfor %}"), "chat template line 2, column 4: 'endfor' without a matching opening tag");
  EXPECT_EQ(error_of("x {{ 'abc }}"), "chat template line 1, column 6: string literal is never closed");
  EXPECT_EQ(error_of("{{ 1 "), "chat template line 1, column 1: expression '{{' is never closed with '}}'");
  EXPECT_EQ(error_of("{% frobnicate %}"), "chat template line 1, column 4: unknown statement 'frobnicate'");
  EXPECT_EQ(error_of("{% break %}"), "chat template line 1, column 4: 'break' outside a for loop");
}

TEST(ChatTemplate, UnknownFiltersAndTestsFailAtParseTimeWithPosition) {
  // Reported even when the branch would never run, like Jinja2's compile-time check.
  EXPECT_EQ(error_of("{% if false %}\n  {{ x | shout }}{% endif %}"),
            "chat template line 2, column 10: unknown filter 'shout'");
  EXPECT_EQ(error_of("{{ x is loud }}"), "chat template line 1, column 9: unknown test 'loud'");
}

TEST(ChatTemplate, RuntimeErrorsNameTheValueAndPosition) {
  EXPECT_EQ(error_of("{{ 1 + missing }}"), "chat template line 1, column 8: 'missing' is undefined");
  EXPECT_EQ(error_of("{{ missing.attr }}"), "chat template line 1, column 11: 'missing' is undefined");
  EXPECT_EQ(error_of("{{ 'a' + 1 }}"), "chat template line 1, column 8: unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "chat template line 1, column 6: integer division by zero");
  EXPECT_EQ(error_of("{{ 'x'.shout() }}"), "chat template line 1, column 7: str.shout(): 'str' object has no attribute 'shout'");
  EXPECT_THROW(render("{{ 1 }}", json::array()), Error);
}

TEST(ChatTemplate, ParsedTemplateRendersManyContexts) {
  const ChatTemplate parsed("{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}");
  EXPECT_EQ(parsed.render({{"bos_token", "<s>"}, {"messages", {{{"content", "a"}}}}}), "<s>[a]");
  EXPECT_EQ(parsed.render({{"messages", json::array()}}), "");
}

}  // namespace
}  // namespace dsv3
