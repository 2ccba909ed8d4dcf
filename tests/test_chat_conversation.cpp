// The library half of `dsv3 chat`: the conversation rendered through DeepSeek-V3's own chat
// template, and the streaming split of an R1-style reply into thinking and answer.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "engine/conversation.h"
#include "engine/thinking.h"
#include "tokenizer/tokenizer.h"
#include "test_tokenizer_common.h"

namespace dsv3 {
namespace {

Conversation deepseek_conversation(const std::string& system_prompt) {
  const Tokenizer& tokenizer = testing::deepseek_tokenizer();
  return Conversation(tokenizer.chat_template(), tokenizer.bos_token(), tokenizer.eos_token(), system_prompt);
}

TEST(Conversation, RendersTheHistoryThroughTheDeepSeekTemplate) {
  Conversation conversation = deepseek_conversation("Be brief.");
  conversation.add_user("Hi");
  EXPECT_EQ(conversation.render_prompt(), "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>");
  conversation.add_assistant("Hello!");
  conversation.add_user("Again");
  EXPECT_EQ(conversation.render_prompt(),
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>Again"
            "<｜Assistant｜>");
}

TEST(Conversation, ResetKeepsOnlyTheSystemPrompt) {
  Conversation conversation = deepseek_conversation("Be brief.");
  conversation.add_user("Hi");
  conversation.add_assistant("Hello!");
  conversation.reset();
  ASSERT_EQ(conversation.messages().size(), 1u);
  EXPECT_EQ(conversation.messages()[0].role, "system");
  conversation.add_user("Hi");
  EXPECT_EQ(conversation.render_prompt(), "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>");

  Conversation without_system = deepseek_conversation("");
  without_system.add_user("Hi");
  without_system.drop_last();
  EXPECT_TRUE(without_system.messages().empty());
  EXPECT_THROW(without_system.drop_last(), Error);
}

TEST(Conversation, EmptyTemplateIsAnError) {
  try {
    Conversation conversation("", "<s>", "</s>");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat template is empty"), std::string::npos) << e.what();
  }
}

// Feeds `pieces` and returns the spans, with neighbours of the same kind joined.
std::vector<ReplySpan> split(const std::vector<std::string>& pieces, bool starts_thinking = false) {
  ThinkingSplitter splitter(starts_thinking);
  std::vector<ReplySpan> all;
  auto append = [&](const std::vector<ReplySpan>& spans) {
    for (const ReplySpan& span : spans) {
      EXPECT_FALSE(span.text.empty());
      if (!all.empty() && all.back().thinking == span.thinking)
        all.back().text += span.text;
      else
        all.push_back(span);
    }
  };
  for (const std::string& piece : pieces) append(splitter.add(piece));
  append(splitter.finish());
  return all;
}

// Every way of cutting `text` in two, so that each tag is split at each of its bytes once.
void expect_split_everywhere(const std::string& text, const std::vector<ReplySpan>& expected,
                             bool starts_thinking = false) {
  for (std::size_t cut = 0; cut <= text.size(); ++cut) {
    SCOPED_TRACE(cut);
    EXPECT_EQ(split({text.substr(0, cut), text.substr(cut)}, starts_thinking), expected);
  }
  std::vector<std::string> bytes;
  for (const char c : text) bytes.emplace_back(1, c);
  EXPECT_EQ(split(bytes, starts_thinking), expected);
}

TEST(ThinkingSplitter, SeparatesThinkingFromTheAnswerWhereverTheTagsAreCut) {
  expect_split_everywhere("<think>\nThe user greets me.\n</think>\n\nHello!",
                          {{"The user greets me.\n", true}, {"Hello!", false}});
}

TEST(ThinkingSplitter, ReplyWithoutThinkingIsAllAnswer) {
  expect_split_everywhere("Hello, world", {{"Hello, world", false}});
  // A tag after the start of the answer is text, not a thinking block.
  expect_split_everywhere("Use <think> and </think> tags.", {{"Use <think> and </think> tags.", false}});
  expect_split_everywhere("  <thinking", {{"  <thinking", false}});
}

TEST(ThinkingSplitter, PromptThatOpensTheBlockStartsInside) {
  expect_split_everywhere("\nStep one.</think>\n\nDone.", {{"Step one.", true}, {"Done.", false}}, true);
  EXPECT_TRUE(prompt_opens_thinking("<｜User｜>Hi<｜Assistant｜><think>\n"));
  EXPECT_FALSE(prompt_opens_thinking("<｜User｜>Hi<｜Assistant｜>"));
  EXPECT_FALSE(prompt_opens_thinking(""));
}

TEST(ThinkingSplitter, HeldBackTextIsReleasedAtTheEnd) {
  // Unfinished tags, at the end of a reply that was cut short, are text after all.
  EXPECT_EQ(split({"<th"}), (std::vector<ReplySpan>{{"<th", false}}));
  EXPECT_EQ(split({"<think>Hmm, a < b", " and b </thi"}), (std::vector<ReplySpan>{{"Hmm, a < b and b </thi", true}}));
  ThinkingSplitter splitter;
  EXPECT_TRUE(splitter.add("<think>x</").size() == 1);
  EXPECT_TRUE(splitter.thinking());
  EXPECT_TRUE(splitter.add("think>").empty());
  EXPECT_FALSE(splitter.thinking());
}

}  // namespace
}  // namespace dsv3
