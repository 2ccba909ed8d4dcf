// The DeepSeek-V3 tokenizer against Hugging Face's own encodings (../shared/fixtures).
#include <fmt/format.h>

#include "test_tokenizer_common.h"

namespace dsv3 {
namespace {

using testing::deepseek_tokenizer;
using testing::tokenizer_fixture;

std::vector<std::int32_t> ids_of(const nlohmann::json& array) { return array.get<std::vector<std::int32_t>>(); }

TEST(TokenizerFixture, EncodesEveryCaseExactly) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  const auto& cases = tokenizer_fixture().at("cases");
  ASSERT_GT(cases.size(), 100u);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::string text = cases[i].at("text");
    EXPECT_EQ(tokenizer.encode(text), ids_of(cases[i].at("ids"))) << "case " << i << ": " << text;
    EXPECT_EQ(tokenizer.encode(text, true), ids_of(cases[i].at("ids_bos"))) << "case " << i;
    EXPECT_EQ(tokenizer.encode_with_special_tokens(text), ids_of(cases[i].at("ids_bos"))) << "case " << i;
  }
}

TEST(TokenizerFixture, DecodesEveryCaseBackToItsText) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  for (const auto& c : tokenizer_fixture().at("cases")) {
    std::vector<std::int32_t> ids = ids_of(c.at("ids"));
    EXPECT_EQ(tokenizer.decode(ids), c.at("text").get<std::string>());
  }
}

TEST(TokenizerFixture, StreamingDecodeEqualsFullDecodeIdById) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  for (const auto& c : tokenizer_fixture().at("cases")) {
    for (bool skip_special : {false, true}) {
      std::vector<std::int32_t> ids = ids_of(c.at("ids_bos"));
      Tokenizer::StreamDecoder stream(tokenizer, skip_special);
      std::string streamed;
      for (std::int32_t id : ids) {
        std::string piece = stream.push(id);
        EXPECT_TRUE(testing::is_valid_utf8(piece)) << "invalid UTF-8 emitted for id " << id;
        streamed += piece;
      }
      streamed += stream.finish();
      EXPECT_EQ(streamed, tokenizer.decode(ids, skip_special));
    }
  }
}

TEST(TokenizerFixture, ChatTextsEncodeAsApplyChatTemplateDoes) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  const auto& chats = tokenizer_fixture().at("chats");
  ASSERT_FALSE(chats.empty());
  for (const auto& chat : chats)
    EXPECT_EQ(tokenizer.encode_chat(chat.at("text").get<std::string>()), ids_of(chat.at("ids")));
}

TEST(TokenizerFixture, ConfigGivesBosEosAndTemplate) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  EXPECT_EQ(tokenizer.bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tokenizer.eos_token(), "<｜end▁of▁sentence｜>");
  EXPECT_EQ(tokenizer.bos_id(), 0);
  EXPECT_EQ(tokenizer.eos_id(), 1);
  EXPECT_TRUE(tokenizer.add_bos_token());
  EXPECT_FALSE(tokenizer.add_eos_token());
  EXPECT_NE(tokenizer.chat_template().find("add_generation_prompt"), std::string::npos);
  EXPECT_EQ(tokenizer.vocab_size(), 128815u);
  EXPECT_TRUE(tokenizer.is_special(0));
  EXPECT_FALSE(tokenizer.is_special(128803));  // <｜User｜> is added but not special
}

TEST(TokenizerFixture, SkipSpecialDropsOnlySpecialTokens) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  std::vector<std::int32_t> ids = tokenizer.encode("<｜begin▁of▁sentence｜><｜User｜>Hi<｜end▁of▁sentence｜>");
  EXPECT_EQ(tokenizer.decode(ids, true), "<｜User｜>Hi");
  EXPECT_EQ(tokenizer.decode(ids, false), "<｜begin▁of▁sentence｜><｜User｜>Hi<｜end▁of▁sentence｜>");
}

}  // namespace
}  // namespace dsv3
