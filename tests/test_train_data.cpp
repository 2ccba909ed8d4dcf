// Corpus reading, document packing, the validation split and the seeded sequence order; the
// training config's validation.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "train_support.h"

namespace dsv3 {
namespace {

TEST(Data, PackingSeparatesDocumentsWithEosAndDropsTheTail) {
  const std::vector<std::vector<std::int32_t>> docs = {{10, 11, 12}, {20}, {30, 31, 32, 33}};
  const auto packed = train::pack_documents(docs, 1, 4);
  // 10 11 12 EOS | 20 EOS 30 31 | 32 33 EOS  (3 tokens left over: dropped)
  ASSERT_EQ(packed.count(), 2);
  EXPECT_EQ(std::vector<std::int64_t>(packed[0].begin(), packed[0].end()), (std::vector<std::int64_t>{10, 11, 12, 1}));
  EXPECT_EQ(std::vector<std::int64_t>(packed[1].begin(), packed[1].end()), (std::vector<std::int64_t>{20, 1, 30, 31}));
  EXPECT_THROW(packed[2], Error);
  EXPECT_THROW(train::pack_documents(docs, 1, 1), Error);
}

TEST(Data, SamplerIsASeededPermutationPerEpochAndResumesExactly) {
  train::SequenceSampler a(10, 42), b(10, 42), c(10, 43);
  std::vector<std::int64_t> first, second, other;
  for (int i = 0; i < 20; ++i) {
    first.push_back(a.next());
    second.push_back(b.next());
    other.push_back(c.next());
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, other);
  // Each epoch visits every sequence once, in a new order.
  const std::set<std::int64_t> epoch0(first.begin(), first.begin() + 10), epoch1(first.begin() + 10, first.end());
  EXPECT_EQ(epoch0.size(), 10u);
  EXPECT_EQ(epoch1.size(), 10u);
  EXPECT_NE(std::vector<std::int64_t>(first.begin(), first.begin() + 10),
            std::vector<std::int64_t>(first.begin() + 10, first.end()));
  // A sampler restored mid-epoch continues the same sequence.
  train::SequenceSampler d(10, 42);
  for (int i = 0; i < 13; ++i) d.next();
  train::SequenceSampler e(10, 999);
  e.restore(nlohmann::json::parse(d.state().dump()));
  for (int i = 13; i < 20; ++i) EXPECT_EQ(e.next(), first[i]) << i;
  train::SequenceSampler wrong(11, 42);
  EXPECT_THROW(wrong.restore(d.state()), Error);
}

TEST(Data, ReadsTextJsonlJsonAndDirectories) {
  const auto dir = test::temp_dir("corpus");
  std::ofstream(dir / "a.txt") << "plain text\nover two lines";
  std::ofstream(dir / "b.jsonl") << R"({"text": "first"})" << "\n\n" << R"({"text": "second", "year": 1790})" << "\n";
  std::ofstream(dir / "c.json") << R"({"text": "a JSON document"})";
  std::ofstream(dir / "bad.jsonl") << R"({"words": "no text"})" << "\n";
  auto docs = train::read_documents({(dir / "a.txt").string(), (dir / "b.jsonl").string(), (dir / "c.json").string()});
  std::vector<std::string> texts, origins;
  for (const auto& d : docs) {
    texts.push_back(d.text);
    origins.push_back(d.origin);
  }
  EXPECT_EQ(texts, (std::vector<std::string>{"plain text\nover two lines", "first", "second", "a JSON document"}));
  EXPECT_EQ(origins, (std::vector<std::string>{(dir / "a.txt").string(), (dir / "b.jsonl").string() + ":1",
                                               (dir / "b.jsonl").string() + ":3", (dir / "c.json").string()}));
  try {
    train::read_documents({(dir / "bad.jsonl").string()});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:1"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir / "bad.jsonl");
  docs = train::read_documents({dir.string()});  // the directory: a.txt, b.jsonl (sorted), not .json
  EXPECT_EQ(docs.size(), 3u);
  EXPECT_THROW(train::read_documents({(dir / "missing.txt").string()}), Error);
}

TEST(Data, ValidationSplitIsByDocumentAndSeeded) {
  const auto dir = test::temp_dir("split");
  BpeTrainerOptions options;
  options.vocab_size = 300;
  const auto files = test::sotu_files(6);
  write_tokenizer_files(train_bpe(files, options), (dir / "tok").string());
  const Tokenizer tokenizer = Tokenizer::load(dir / "tok");
  const auto docs = train::read_documents(files);
  const auto a = train::build_corpus(tokenizer, docs, 64, 0.3, 5);
  const auto b = train::build_corpus(tokenizer, docs, 64, 0.3, 5);
  const auto c = train::build_corpus(tokenizer, docs, 64, 0.3, 6);
  EXPECT_EQ(a.documents, 6);
  EXPECT_EQ(a.validation_documents, 2);  // ceil(0.3 * 6)
  EXPECT_EQ(a.train.tokens, b.train.tokens);
  EXPECT_EQ(a.validation.tokens, b.validation.tokens);
  EXPECT_NE(a.validation.tokens, c.validation.tokens);
  // Whole documents: the EOS count of each split is its document count (up to the dropped tail).
  const std::int32_t eos = tokenizer.eos_id();
  auto eos_count = [&](const train::PackedSequences& p) { return std::count(p.tokens.begin(), p.tokens.end(), eos); };
  EXPECT_GE(eos_count(a.validation), 1);
  EXPECT_LE(eos_count(a.validation), 2);
  EXPECT_GE(eos_count(a.train), 3);
  EXPECT_LE(eos_count(a.train), 4);
  const std::int64_t packed = (a.train.count() + a.validation.count()) * 64;
  EXPECT_GT(packed, a.tokens - 2 * 64);  // only the two splits' tails are dropped
  EXPECT_THROW(train::build_corpus(tokenizer, docs, 64, 1.0, 5), Error);
}

// A small tokenizer trained on the first SOTU speeches, written under `dir`.
Tokenizer small_tokenizer(const std::filesystem::path& dir) {
  BpeTrainerOptions options;
  options.vocab_size = 300;
  write_tokenizer_files(train_bpe(test::sotu_files(2), options), (dir / "tok").string());
  return Tokenizer::load(dir / "tok");
}

// build_corpus encodes on the thread pool; a document the tokenizer refuses must come back as one
// clear error naming the file and the byte offset (the first such file in corpus order, however
// the threads ran), or be skipped and listed.
TEST(Data, InvalidUtf8NamesTheFileAndOffsetOrIsSkipped) {
  const auto dir = test::temp_dir("utf8");
  const Tokenizer tokenizer = small_tokenizer(dir);
  std::vector<std::string> files = test::sotu_files(6);
  // Two bad files among good ones: b-bad.txt (bad byte at offset 17) comes first in corpus order.
  std::ofstream(dir / "a-bad.txt", std::ios::binary) << std::string(1000, 'x') << "\xC3(";  // a broken 2-byte character
  std::ofstream(dir / "b-bad.txt", std::ios::binary) << "Fellow citizens, \xFF and more";
  files.insert(files.begin() + 2, (dir / "b-bad.txt").string());
  files.push_back((dir / "a-bad.txt").string());
  const auto docs = train::read_documents(files);
  for (int round = 0; round < 5; ++round) {
    const std::string message = test::error_message([&] { train::build_corpus(tokenizer, docs, 64, 0.2, 5); });
    EXPECT_NE(message.find((dir / "b-bad.txt").string() + ": "), std::string::npos) << message;
    EXPECT_NE(message.find("0xFF at byte offset 17"), std::string::npos) << message;
    EXPECT_NE(message.find("1 more"), std::string::npos) << message;
    EXPECT_NE(message.find("skip_invalid_documents"), std::string::npos) << message;
  }
  const auto corpus = train::build_corpus(tokenizer, docs, 64, 0.2, 5, /*skip_invalid=*/true);
  EXPECT_EQ(corpus.documents, 6);
  ASSERT_EQ(corpus.skipped.size(), 2u);
  EXPECT_NE(corpus.skipped[0].find("b-bad.txt: "), std::string::npos) << corpus.skipped[0];
  EXPECT_NE(corpus.skipped[1].find("a-bad.txt: "), std::string::npos) << corpus.skipped[1];
  EXPECT_NE(corpus.skipped[1].find("byte offset 1000"), std::string::npos) << corpus.skipped[1];
  // Skipping leaves exactly the corpus the good documents make.
  std::vector<train::Document> good;
  for (const auto& d : docs)
    if (d.origin.find("-bad.txt") == std::string::npos) good.push_back(d);
  const auto clean = train::build_corpus(tokenizer, good, 64, 0.2, 5);
  EXPECT_EQ(corpus.train.tokens, clean.train.tokens);
  EXPECT_EQ(corpus.validation.tokens, clean.validation.tokens);
  EXPECT_TRUE(clean.skipped.empty());
}

TEST(Data, AJsonlLineWithInvalidUtf8NamesTheLineAndFileOffset) {
  const auto dir = test::temp_dir("jsonl-utf8");
  std::ofstream(dir / "c.jsonl", std::ios::binary) << R"({"text": "fine"})" << "\n" << "{\"text\": \"ab\xFE\"}\n";
  const std::string message = test::error_message([&] { train::read_documents({(dir / "c.jsonl").string()}); });
  // Line 1 is 17 bytes with its newline; the bad byte is the 13th of line 2.
  EXPECT_NE(message.find("c.jsonl:2: not valid JSON at byte offset 29 of the file"), std::string::npos) << message;
  EXPECT_NE(message.find("ill-formed UTF-8 byte"), std::string::npos) << message;
  EXPECT_EQ(message.find('\xFE'), std::string::npos) << "the bad byte itself is not echoed";
}

TEST(Train, ConfigKeysAreCheckedByName) {
  const nlohmann::json base = {{"model_config", "m/config.json"}, {"tokenizer", "tok"}, {"corpus", {"a.txt"}}};
  const auto c = train::TrainConfig::from_json(base);
  EXPECT_EQ(c.seq_len, 128);
  EXPECT_EQ(c.adamw.moment_dtype, train::MomentDType::bf16);
  EXPECT_DOUBLE_EQ(c.adamw.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.adamw.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.clip, 1.0);
  // Round trip through to_json.
  const auto again = train::TrainConfig::from_json(c.to_json());
  EXPECT_EQ(again.to_json(), c.to_json());
  auto expect_error = [&](nlohmann::json j, const std::string& needle) {
    try {
      train::TrainConfig::from_json(j, "TRAIN.json");
      ADD_FAILURE() << "no error for " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto with = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = base;
    j[key] = std::move(value);
    return j;
  };
  expect_error(with("learning_rate", 0.1), "unknown key \"learning_rate\"");
  expect_error(with("seq_len", "long"), "\"seq_len\" must be an integer");
  expect_error(with("moment_dtype", "fp16"), "\"moment_dtype\"");
  expect_error(with("beta2", 1.0), "\"beta2\"");
  expect_error(with("fp8", 1), "\"fp8\" must be true or false");
  expect_error(nlohmann::json{{"tokenizer", "t"}, {"corpus", "c"}}, "\"model_config\"");
  // Named held-out documents replace the random split, so both cannot be asked for.
  expect_error(with("validation_corpus", {"h.txt"}), "\"validation_fraction\"");
  nlohmann::json named = with("validation_corpus", {"h.txt"});
  named["validation_fraction"] = 0.0;
  EXPECT_EQ(train::TrainConfig::from_json(named).validation_corpus, std::vector<std::string>{"h.txt"});
}

TEST(Train, ValidationCorpusIsTheHeldOutSplit) {
  auto setup = test::training_setup("held-out", 6);
  train::TrainConfig c = setup.config;
  c.corpus = {setup.corpus.begin(), setup.corpus.end() - 2};
  c.validation_corpus = {setup.corpus.end() - 2, setup.corpus.end()};
  c.validation_fraction = 0.0;
  c.steps = 0;
  const train::Trainer trainer(c);
  const Tokenizer tokenizer = Tokenizer::load(c.tokenizer);
  std::vector<std::vector<std::int32_t>> held_out, trained;
  for (const train::Document& d : train::read_documents(c.validation_corpus)) held_out.push_back(tokenizer.encode(d.text));
  for (const train::Document& d : train::read_documents(c.corpus)) trained.push_back(tokenizer.encode(d.text));
  EXPECT_EQ(trainer.corpus().validation_documents, 2);
  EXPECT_EQ(trainer.corpus().documents, 6);
  // The held-out speeches, packed whole (in some order): as many sequences as they fill alone.
  EXPECT_EQ(trainer.corpus().validation.count(),
            train::pack_documents(held_out, tokenizer.eos_id(), c.seq_len).count());
  EXPECT_EQ(trainer.corpus().train.count(), train::pack_documents(trained, tokenizer.eos_id(), c.seq_len).count());
  std::filesystem::remove_all(setup.dir);
}

}  // namespace
}  // namespace dsv3
