// The DeepSeek-V3 tool-call parser on replies written for the purpose, fed whole, split at every
// byte position, and one byte at a time: the same content and calls every way; also replies whose
// start the server forced into a call (tool_choice "required" or a named function).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "serve/tool_calls.h"

namespace dsv3::serve {
namespace {

struct Parsed {
  std::string content;
  std::vector<ToolCall> calls;
};

// `forced`: the text the server forced the reply to start with ("" for none).
Parsed feed(const std::vector<std::string>& pieces, const std::string& forced = "") {
  ToolCallParser parser;
  if (!forced.empty()) parser.force(forced);
  Parsed parsed;
  auto take = [&](const ToolCallUpdate& update) {
    parsed.content += update.content;
    parsed.calls.insert(parsed.calls.end(), update.calls.begin(), update.calls.end());
  };
  for (const std::string& piece : pieces) take(parser.add(piece));
  take(parser.finish());
  return parsed;
}

void expect_every_split(const std::string& reply, const std::string& content, const std::vector<ToolCall>& calls,
                        const std::string& forced = "") {
  const Parsed whole = feed({reply}, forced);
  EXPECT_EQ(whole.content, content);
  EXPECT_EQ(whole.calls, calls);
  for (std::size_t at = 0; at <= reply.size(); ++at) {
    const Parsed split = feed({reply.substr(0, at), reply.substr(at)}, forced);
    EXPECT_EQ(split.content, content) << "split at " << at;
    EXPECT_EQ(split.calls, calls) << "split at " << at;
  }
  std::vector<std::string> bytes;
  for (const char c : reply) bytes.emplace_back(1, c);
  const Parsed one_by_one = feed(bytes, forced);
  EXPECT_EQ(one_by_one.content, content);
  EXPECT_EQ(one_by_one.calls, calls);
}

const std::string kBegin = "<｜tool▁calls▁begin｜>";
const std::string kEnd = "<｜tool▁calls▁end｜>";
const std::string kCall = "<｜tool▁call▁begin｜>";
const std::string kCallEnd = "<｜tool▁call▁end｜>";
const std::string kSep = "<｜tool▁sep｜>";

TEST(ToolCalls, TwoCallsInTheTemplatesFormatAfterSomeText) {
  const std::string reply = "Let me check. " + kBegin + kCall + "function" + kSep + "get_weather\n```json\n{\"city\": \"Paris\"}\n```" +
                            kCallEnd + "\n" + kCall + "function" + kSep + "get_time\n```json\n{}\n```" + kCallEnd + kEnd;
  expect_every_split(reply, "Let me check. ", {{"get_weather", "{\"city\": \"Paris\"}"}, {"get_time", "{}"}});
}

TEST(ToolCalls, TheNameSeparatorArgumentsForm) {
  const std::string reply = kBegin + kCall + "search" + kSep + "{\"q\": \"dsv3\", \"n\": [1, 2]}" + kCallEnd + kEnd;
  expect_every_split(reply, "", {{"search", "{\"q\": \"dsv3\", \"n\": [1, 2]}"}});
}

TEST(ToolCalls, ACallThatDoesNotParseIsKeptAsText) {
  const std::string bad = kCall + "function" + kSep + "f\n```json\n{not json\n```" + kCallEnd;
  const std::string good = kCall + "function" + kSep + "g\n```json\n{\"x\": 1}\n```" + kCallEnd;
  expect_every_split(kBegin + bad + good + kEnd, bad, {{"g", "{\"x\": 1}"}});
  const std::string no_name = kCall + "function" + kSep + "\n```json\n{}\n```" + kCallEnd;
  expect_every_split(kBegin + no_name + kEnd, no_name, {});
}

TEST(ToolCalls, AnUnfinishedCallIsKeptAsText) {
  const std::string unfinished = kCall + "function" + kSep + "f\n```json\n{\"a\":";
  expect_every_split("Hi " + kBegin + unfinished, "Hi " + unfinished, {});
}

TEST(ToolCalls, TextWithoutCallsPassesThroughIncludingMarkerLookalikes) {
  expect_every_split("plain <｜User｜> text <｜tool", "plain <｜User｜> text <｜tool", {});
  expect_every_split("", "", {});
  // After the block, further text is text.
  const std::string reply = kBegin + kCall + "f" + kSep + "{}" + kCallEnd + kEnd + " done";
  expect_every_split(reply, " done", {{"f", "{}"}});
}

TEST(ToolCalls, TheForcedPrefixIsTheTemplatesFormatCutAfterTheNameOrTheSeparator) {
  EXPECT_EQ(forced_tool_call_prefix("get_weather"), kBegin + kCall + "function" + kSep + "get_weather\n```json\n");
  EXPECT_EQ(forced_tool_call_prefix(""), kBegin + kCall + "function" + kSep);
  EXPECT_EQ(forced_tool_call_tokens(), (std::vector<std::string_view>{kBegin, kCall, kSep}));
}

TEST(ToolCalls, AForcedNamedCallThatTheModelFinishesIsThatCall) {
  const std::string forced = forced_tool_call_prefix("get_weather");
  expect_every_split("{\"city\": \"Paris\"}\n```" + kCallEnd + kEnd, "", {{"get_weather", "{\"city\": \"Paris\"}"}},
                     forced);
  // A second call after it is parsed as usual; text after the block is content.
  const std::string second = kCall + "function" + kSep + "get_time\n```json\n{}\n```" + kCallEnd;
  expect_every_split("{}\n```" + kCallEnd + "\n" + second + kEnd + " ok", " ok", {{"get_weather", "{}"}, {"get_time", "{}"}},
                     forced);
}

TEST(ToolCalls, AForcedCallIsACallEvenCutShortOrNotJson) {
  const std::string forced = forced_tool_call_prefix("get_weather");
  // Cut by max_tokens: the arguments so far, as OpenAI returns a forced call cut short.
  expect_every_split("{\"city\": \"Pa", "", {{"get_weather", "{\"city\": \"Pa"}}, forced);
  expect_every_split("", "", {{"get_weather", ""}}, forced);
  // Ended, but not JSON: still the forced call, its arguments as written (without the fence).
  expect_every_split("not json\n```" + kCallEnd + kEnd, "", {{"get_weather", "not json"}}, forced);
  // Only the forced call is kept whatever it holds: a second call that does not parse is text.
  const std::string bad = kCall + "function" + kSep + "f\n```json\n{oops\n```" + kCallEnd;
  expect_every_split("{}\n```" + kCallEnd + bad + kEnd, bad, {{"get_weather", "{}"}}, forced);
}

TEST(ToolCalls, ARequiredCallTakesTheNameTheModelWrites) {
  const std::string forced = forced_tool_call_prefix("");
  expect_every_split("get_time\n```json\n{\"zone\": \"UTC\"}\n```" + kCallEnd + kEnd, "",
                     {{"get_time", "{\"zone\": \"UTC\"}"}}, forced);
  // Cut short in the name or the arguments; or a name that is no function at all: still a call,
  // as written (the client checks the name, as with OpenAI's).
  expect_every_split("get_ti", "", {{"get_ti", ""}}, forced);
  expect_every_split("get_time\n```json\n{\"zo", "", {{"get_time", "{\"zo"}}, forced);
  expect_every_split("no such tool here\n{}" + kCallEnd, "", {{"no such tool here", "{}"}}, forced);
}

}  // namespace
}  // namespace dsv3::serve
