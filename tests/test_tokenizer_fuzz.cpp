// Random inputs against the DeepSeek-V3 tokenizer: no crash on any bytes, exact round trips on
// valid UTF-8, streaming that never emits broken UTF-8, and the fast BPE merge loops against
// their slow twin.
#include <nlohmann/json.hpp>

#include <fstream>
#include <random>

#include "core/error.h"
#include "test_tokenizer_common.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv3 {
namespace {

using testing::deepseek_tokenizer;
using testing::is_valid_utf8;

TEST(TokenizerFuzz, RandomBytesEncodeOrFailWithTheOffset) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  std::mt19937 random(1234);
  int invalid = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes(random() % 40, '\0');
    // Mostly high bytes, so that both valid and invalid sequences come up often.
    for (char& b : bytes) b = static_cast<char>(random() % 3 == 0 ? random() % 128 : 0x80 + random() % 128);
    if (is_valid_utf8(bytes)) {
      EXPECT_EQ(tokenizer.decode(tokenizer.encode(bytes)), bytes);
    } else {
      ++invalid;
      try {
        tokenizer.encode(bytes);
        ADD_FAILURE() << "invalid UTF-8 was accepted";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("byte offset"), std::string::npos) << e.what();
      }
    }
  }
  EXPECT_GT(invalid, 100);
}

TEST(TokenizerFuzz, InvalidUtf8ErrorNamesTheOffset) {
  try {
    deepseek_tokenizer().encode("abc\xE4\xB8");  // a 3-byte character cut short at offset 3
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
}

std::string random_text(std::mt19937& random) {
  static const std::vector<std::string> parts = {
      "the", " quick", "Brown", " fox", "'s", "I'm", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", " ",
      "12", "3456789", "0", "3.14", "中文", "分词", "日本語", "カタカナ", "ひらがな", "한국어", "مرحبا",
      "हिन्दी", "Привет", "👍", "🏽", "👩\u200d👩\u200d👧", "🇨🇭", "e\u0301", "\u0308", "\u0300\u0301",
      "\u00a0", "\u3000", "\u200b", "\u2028", "!!", "?", "...", "--", "(", ")", "[", "]", "<", ">", "|",
      "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>",
      "</think>", "<｜", "｜>", "▁", "Ġ", "\x7f", "\x01", "\u180e", "\U0001F9EA"};
  std::string text;
  int count = random() % 24;
  for (int i = 0; i < count; ++i) text += parts[random() % parts.size()];
  return text;
}

TEST(TokenizerFuzz, DecodeOfEncodeIsTheText) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  std::mt19937 random(42);
  for (int i = 0; i < 3000; ++i) {
    std::string text = random_text(random);
    std::vector<std::int32_t> ids = tokenizer.encode(text, i % 2 == 0);
    ASSERT_EQ(tokenizer.decode(ids), (i % 2 == 0 ? tokenizer.bos_token() : "") + text);
    if (text.find("<｜") == std::string::npos) {
      EXPECT_EQ(tokenizer.decode(ids, true), text);
    }
  }
}

TEST(TokenizerFuzz, StreamingNeverEmitsInvalidUtf8) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  std::mt19937 random(7);
  for (int i = 0; i < 2000; ++i) {
    // Random ids split characters between tokens and produce byte sequences that are not UTF-8.
    std::vector<std::int32_t> ids(random() % 16);
    for (auto& id : ids) id = static_cast<std::int32_t>(random() % 128000);
    Tokenizer::StreamDecoder stream(tokenizer);
    std::string streamed;
    for (std::int32_t id : ids) {
      std::string piece = stream.push(id);
      ASSERT_TRUE(is_valid_utf8(piece));
      streamed += piece;
    }
    std::string rest = stream.finish();
    ASSERT_TRUE(is_valid_utf8(rest));
    EXPECT_EQ(streamed + rest, tokenizer.decode(ids));
  }
}

TEST(TokenizerFuzz, DecodeReplacesBrokenUtf8LikeHuggingFace) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  // "中" is E4 B8 AD; byte tokens: the byte-level characters of each byte.
  auto byte_id = [&](unsigned char b) { return *tokenizer.token_to_id(byte_level_encode(std::string(1, b))); };
  std::vector<std::int32_t> cut = {byte_id(0xE4), byte_id(0xB8)};
  EXPECT_EQ(tokenizer.decode(cut), "\xEF\xBF\xBD");  // one U+FFFD for the unfinished character
  std::vector<std::int32_t> broken = {byte_id(0xE4), byte_id('a'), byte_id(0xFF)};
  EXPECT_EQ(tokenizer.decode(broken), "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD");
  Tokenizer::StreamDecoder stream(tokenizer);
  EXPECT_EQ(stream.push(byte_id(0xE4)), "");
  EXPECT_EQ(stream.push(byte_id(0xB8)), "");
  EXPECT_EQ(stream.push(byte_id(0xAD)), "中");
  EXPECT_EQ(stream.push(byte_id(0xE4)), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
}

TEST(TokenizerFuzz, FastMergeLoopsEqualTheSlowTwin) {
  std::ifstream in(testing::deepseek_tokenizer_dir() / "tokenizer.json");
  ASSERT_TRUE(in) << "run scripts/setup.sh first";
  auto model = tokenizer_internal::BpeModel::from_json(nlohmann::json::parse(in).at("model"));
  auto ranks = model.reference_ranks();
  tokenizer_internal::BpeScratch scratch;
  std::mt19937 random(99);
  const std::string alphabet = "aeinrst ";
  for (int i = 0; i < 400; ++i) {
    // Short words take the linear loop, long ones (over 96 bytes) the heap.
    std::string word;
    std::size_t length = i % 4 == 0 ? 97 + random() % 300 : 1 + random() % 40;
    if (i % 3 == 0) {
      word = random_text(random).substr(0, length);
    } else {
      for (std::size_t k = 0; k < length; ++k) word += alphabet[random() % alphabet.size()];
    }
    std::vector<std::int32_t> fast;
    model.encode_piece(word, fast, scratch);
    EXPECT_EQ(fast, model.encode_piece_reference(word, ranks)) << "word: " << word;
  }
}

}  // namespace
}  // namespace dsv3
