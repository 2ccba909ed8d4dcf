// StopChecker: stop tokens, max tokens, and stop strings over streamed text, with held-back text
// that could still become a stop string.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "engine/stop.h"

namespace dsv3 {
namespace {

SamplingParams with_stops(std::vector<std::string> stops, std::optional<std::int32_t> max_tokens = {}) {
  SamplingParams params;
  params.stop = std::move(stops);
  params.max_tokens = max_tokens;
  return params;
}

// Feeds pieces as tokens 100, 101, ...; returns each update's text.
std::vector<std::string> feed(StopChecker& checker, const std::vector<std::string>& pieces) {
  std::vector<std::string> emitted;
  std::int32_t token = 100;
  for (const auto& piece : pieces) {
    const StopUpdate update = checker.add(token++, piece);
    emitted.push_back(update.text);
    EXPECT_EQ(update.finished, checker.finished());
  }
  return emitted;
}

TEST(Stop, StopTokenEndsWithoutEmittingItsText) {
  SamplingParams params;
  params.stop_token_ids = {7};
  const std::vector<std::int32_t> end_of_sequence{1};
  StopChecker checker(params, end_of_sequence);
  EXPECT_EQ(checker.add(5, "Hello").text, "Hello");
  const StopUpdate update = checker.add(1, "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(update.finished);
  EXPECT_EQ(update.text, "");
  EXPECT_EQ(checker.reason(), FinishReason::stop_token);
  EXPECT_EQ(checker.generated_tokens(), 2);

  StopChecker user_stop(params, end_of_sequence);
  EXPECT_TRUE(user_stop.add(7, "x").finished);
}

TEST(Stop, StopStringSpanningPiecesIsNeverShown) {
  StopChecker checker(with_stops({"###"}));
  EXPECT_EQ(feed(checker, {"Hello #", "#", "# world"}), (std::vector<std::string>{"Hello ", "", ""}));
  EXPECT_TRUE(checker.finished());
  EXPECT_EQ(checker.reason(), FinishReason::stop_string);
  EXPECT_EQ(checker.matched_stop_string(), "###");
  EXPECT_THROW(checker.add(1, "more"), Error);
}

TEST(Stop, HeldBackPrefixIsReleasedOnceItCannotBeAStop) {
  StopChecker checker(with_stops({"</end>"}));
  EXPECT_EQ(feed(checker, {"a<", "/e", "x", "y"}), (std::vector<std::string>{"a", "", "</ex", "y"}));
  EXPECT_FALSE(checker.finished());
}

TEST(Stop, TextBeforeAStopInsideOnePieceIsEmittedAndTheRestDropped) {
  StopChecker checker(with_stops({"STOP"}));
  EXPECT_EQ(feed(checker, {"foo STOP bar"}), (std::vector<std::string>{"foo "}));
  EXPECT_TRUE(checker.finished());
}

TEST(Stop, EarliestStopStringWins) {
  StopChecker checker(with_stops({"world", "lo w"}));
  // The trailing "l" of "hel" could start "lo w", so it waits for the next piece.
  EXPECT_EQ(feed(checker, {"hel", "lo world"}), (std::vector<std::string>{"he", "l"}));
  EXPECT_EQ(checker.matched_stop_string(), "lo w");
}

TEST(Stop, OverlappingPrefixesHoldOnlyWhatCouldStillMatch) {
  // "aaab" with stop "aab": the first "a" can be released once a third "a" arrives.
  StopChecker checker(with_stops({"aab"}));
  EXPECT_EQ(feed(checker, {"a", "a", "a", "b"}), (std::vector<std::string>{"", "", "a", ""}));
  EXPECT_EQ(checker.reason(), FinishReason::stop_string);
}

TEST(Stop, MaxTokensReleasesHeldText) {
  StopChecker checker(with_stops({"ab"}, 2));
  EXPECT_EQ(feed(checker, {"xa", "a"}), (std::vector<std::string>{"x", "aa"}));
  EXPECT_EQ(checker.reason(), FinishReason::max_tokens);
}

TEST(Stop, StopStringCompletedByTheLastAllowedTokenStillCuts) {
  StopChecker checker(with_stops({"ab"}, 2));
  EXPECT_EQ(feed(checker, {"xa", "b"}), (std::vector<std::string>{"x", ""}));
  EXPECT_EQ(checker.reason(), FinishReason::stop_string);
}

TEST(Stop, FinishReturnsHeldTextForExternalStops) {
  StopChecker checker(with_stops({"\n\nUser:"}));
  EXPECT_EQ(feed(checker, {"Answer.\n"}), (std::vector<std::string>{"Answer."}));
  EXPECT_EQ(checker.finish(), "\n");
  EXPECT_EQ(checker.reason(), FinishReason::external);
}

TEST(Stop, MultiByteStopStringsMatchAcrossPieces) {
  StopChecker checker(with_stops({"。\n"}));
  // "。" is three bytes; the decoder hands over whole characters, here split from the newline.
  EXPECT_EQ(feed(checker, {"好", "。", "\n"}), (std::vector<std::string>{"好", "", ""}));
  EXPECT_TRUE(checker.finished());
}

}  // namespace
}  // namespace dsv3
