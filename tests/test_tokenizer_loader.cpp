// The tokenizer.json loader on a small hand-written byte-level BPE: pair-form merges, added tokens
// with lstrip/rstrip/single_word, every Split behavior, and refusals that name what is wrong.
// Expected values were worked out by hand from Hugging Face's rules (and agree with `tokenizers`).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {
namespace {

using nlohmann::json;

// Bytes 0..255 are ids 0..255; then "ab" 256, "abc" 257, "Ġa" 258, "cc" 259; added tokens
// "<sep>" 260 (special, lstrip + rstrip) and "[w]" 261 (single_word, normalized).
json small_tokenizer(const std::string& behavior, bool invert = false, bool add_prefix_space = false,
                     bool use_regex = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_encode(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["Ġa"] = 258;
  vocab["cc"] = 259;
  return json{
      {"version", "1.0"},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array()}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", "-"}}}, {"behavior", behavior}, {"invert", invert}},
          {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", use_regex}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens",
       {{{"id", 260}, {"content", "<sep>"}, {"single_word", false}, {"lstrip", true}, {"rstrip", true},
         {"normalized", false}, {"special", true}},
        {{"id", 261}, {"content", "[w]"}, {"single_word", true}, {"lstrip", false}, {"rstrip", false},
         {"normalized", true}, {"special", false}}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab},
        {"merges", json::array({json::array({"a", "b"}), json::array({"ab", "c"}), json::array({"Ġ", "a"}),
                               json::array({"c", "c"})})}}},
  };
}

std::vector<std::string> pieces(const std::string& behavior, bool invert, const std::string& text) {
  return PreTokenizer::from_json(small_tokenizer(behavior, invert)["pre_tokenizer"]).split(text);
}

using Pieces = std::vector<std::string>;

TEST(TokenizerLoader, SplitBehaviors) {
  EXPECT_EQ(pieces("Isolated", false, "a-b--c"), (Pieces{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(pieces("Removed", false, "a-b--c"), (Pieces{"a", "b", "c"}));
  EXPECT_EQ(pieces("MergedWithPrevious", false, "a-b--c"), (Pieces{"a-", "b-", "-", "c"}));
  EXPECT_EQ(pieces("MergedWithNext", false, "a-b--c"), (Pieces{"a", "-b", "-", "-c"}));
  EXPECT_EQ(pieces("Contiguous", false, "a-b--c"), (Pieces{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(pieces("Removed", true, "x-abc--cc-"), (Pieces{"-", "-", "-", "-"}));
  EXPECT_EQ(pieces("MergedWithNext", false, "x-abc--cc-"), (Pieces{"x", "-abc", "-", "-cc", "-"}));
}

TEST(TokenizerLoader, ByteLevelPrefixSpaceAndGpt2Regex) {
  json config = small_tokenizer("Isolated", false, true, true)["pre_tokenizer"];
  EXPECT_EQ(PreTokenizer::from_json(config).split("a-b"), (Pieces{"Ġa", "Ġ-", "Ġb"}));
  EXPECT_EQ(PreTokenizer::from_json(config).split("hi you"), (Pieces{"Ġhi", "Ġyou"}));
  Tokenizer tokenizer = Tokenizer::from_json(small_tokenizer("Isolated", false, true, true), nullptr);
  EXPECT_EQ(tokenizer.encode("a-b"), (std::vector<std::int32_t>{258, 32, 45, 32, 98}));
  EXPECT_EQ(tokenizer.encode("abc  <sep>  abccc"), (std::vector<std::int32_t>{32, 257, 260, 32, 257, 259}));
}

TEST(TokenizerLoader, MergesAndAddedTokens) {
  Tokenizer tokenizer = Tokenizer::from_json(small_tokenizer("Isolated"), nullptr);
  using Ids = std::vector<std::int32_t>;
  EXPECT_EQ(tokenizer.encode("abc  <sep>  abccc"), (Ids{257, 260, 257, 259}));  // lstrip + rstrip
  EXPECT_EQ(tokenizer.encode("x<sep>y"), (Ids{120, 260, 121}));
  EXPECT_EQ(tokenizer.encode("<sep><sep>"), (Ids{260, 260}));
  EXPECT_EQ(tokenizer.encode("abcabc ab"), (Ids{257, 257, 32, 256}));
  // single_word: "[w]" counts only where no word character touches it.
  EXPECT_EQ(tokenizer.encode("[w] a[w] [w]b ([w])"),
            (Ids{261, 258, 91, 119, 93, 32, 91, 119, 93, 98, 32, 40, 261, 41}));
  EXPECT_EQ(tokenizer.decode(Ids{97, 260, 98, 261, 99}), "a<sep>b[w]c");
  EXPECT_EQ(tokenizer.decode(Ids{97, 260, 98, 261, 99}, true), "ab[w]c");
  EXPECT_EQ(tokenizer.vocab_size(), 262u);
  EXPECT_THROW(tokenizer.decode(Ids{262}), Error);
  EXPECT_THROW(tokenizer.bos_id(), Error);  // no tokenizer_config.json
}

TEST(TokenizerLoader, MergesInStringFormEqualPairForm) {
  json document = small_tokenizer("Isolated");
  document["model"]["merges"] = json::array({"a b", "ab c", "Ġ a", "c c"});
  Tokenizer strings = Tokenizer::from_json(document, nullptr);
  Tokenizer pairs = Tokenizer::from_json(small_tokenizer("Isolated"), nullptr);
  for (std::string text : {"abccc cab", "aaa bbb abc", "-c-c-"}) EXPECT_EQ(strings.encode(text), pairs.encode(text));
}

TEST(TokenizerLoader, ConfigTokensAsStringsOrObjects) {
  json config = {{"add_bos_token", true}, {"bos_token", {{"content", "<sep>"}}}, {"eos_token", "[w]"},
                 {"chat_template", "{{ messages }}"}};
  Tokenizer tokenizer = Tokenizer::from_json(small_tokenizer("Isolated"), config);
  EXPECT_EQ(tokenizer.bos_id(), 260);
  EXPECT_EQ(tokenizer.eos_id(), 261);
  EXPECT_EQ(tokenizer.chat_template(), "{{ messages }}");
  EXPECT_EQ(tokenizer.encode_with_special_tokens("ab"), (std::vector<std::int32_t>{260, 256}));
}

void expect_error(const json& document, const std::string& needle) {
  try {
    Tokenizer::from_json(document, nullptr);
    ADD_FAILURE() << "expected an error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerLoader, RefusesWhatItDoesNotSupportByName) {
  json document = small_tokenizer("Isolated");
  document["normalizer"] = {{"type", "NFKC"}};
  expect_error(document, "NFKC");
  document = small_tokenizer("Isolated");
  document["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Lowercase"}}}}};
  expect_error(document, "normalizer.normalizers[0]: normalizer type 'Lowercase'");
  document = small_tokenizer("Sideways");
  expect_error(document, "Sideways");
  document = small_tokenizer("Isolated");
  document["model"]["merges"].push_back(json::array({"a", "zz"}));
  expect_error(document, "model.merges[4]: \"zz\" is not in model.vocab");
  document = small_tokenizer("Isolated");
  document["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_error(document, "pre_tokenizer.pretokenizers[0].pattern");
  document = small_tokenizer("Isolated");
  document["model"]["type"] = "WordPiece";
  expect_error(document, "WordPiece");
}

TEST(TokenizerLoader, MissingFolderSaysWhere) {
  try {
    Tokenizer::load("/nonexistent/tokenizer-folder");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer-folder"), std::string::npos);
  }
}

}  // namespace
}  // namespace dsv3
