// The DeepSeek-V3 tool-call parser on replies written for the purpose, fed whole, split at every
// byte position, and one byte at a time: the same content and calls every way.
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

Parsed feed(const std::vector<std::string>& pieces) {
  ToolCallParser parser;
  Parsed parsed;
  auto take = [&](const ToolCallUpdate& update) {
    parsed.content += update.content;
    parsed.calls.insert(parsed.calls.end(), update.calls.begin(), update.calls.end());
  };
  for (const std::string& piece : pieces) take(parser.add(piece));
  take(parser.finish());
  return parsed;
}

void expect_every_split(const std::string& reply, const std::string& content, const std::vector<ToolCall>& calls) {
  const Parsed whole = feed({reply});
  EXPECT_EQ(whole.content, content);
  EXPECT_EQ(whole.calls, calls);
  for (std::size_t at = 0; at <= reply.size(); ++at) {
    const Parsed split = feed({reply.substr(0, at), reply.substr(at)});
    EXPECT_EQ(split.content, content) << "split at " << at;
    EXPECT_EQ(split.calls, calls) << "split at " << at;
  }
  std::vector<std::string> bytes;
  for (const char c : reply) bytes.emplace_back(1, c);
  const Parsed one_by_one = feed(bytes);
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

}  // namespace
}  // namespace dsv3::serve
