// Training data: documents from text / JSONL files, tokenized, split into train and validation by
// document, packed into fixed-length sequences separated by EOS, and read in a seeded order.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the corpus file", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string text_field(const nlohmann::json& object, const std::string& where) {
  if (!object.is_object() || !object.contains("text") || !object["text"].is_string())
    fail("{}: expected an object with a string \"text\"", where);
  return object["text"].get<std::string>();
}

void read_file_documents(const std::filesystem::path& path, std::vector<Document>& documents) {
  const std::string extension = path.extension().string();
  if (extension == ".jsonl") {
    std::istringstream lines(read_file(path));
    std::string line;
    std::int64_t line_offset = 0;  // of the line's first byte in the file
    for (std::int64_t number = 1; std::getline(lines, line); ++number, line_offset += std::ssize(line) + 1) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = fmt::format("{}:{}", path.string(), number);
      nlohmann::json parsed;
      try {
        parsed = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& error) {
        // nlohmann's message names the line and column within the one line it was given, and
        // ends by echoing what it read (the bad bytes included): keep only its reason.
        std::string what = error.what();
        const std::size_t detail = what.find(": ");
        if (detail != std::string::npos) what = what.substr(detail + 2);
        what = what.substr(0, what.find("; last read"));
        fail("{}: not valid JSON at byte offset {} of the file: {}", where,
             line_offset + static_cast<std::int64_t>(std::max<std::size_t>(error.byte, 1)) - 1, what);
      }
      documents.push_back({text_field(parsed, where), where});
    }
  } else if (extension == ".json") {
    const auto parsed = nlohmann::json::parse(read_file(path), nullptr, false);
    if (parsed.is_discarded()) fail("{}: not valid JSON", path.string());
    documents.push_back({text_field(parsed, path.string()), path.string()});
  } else {
    documents.push_back({read_file(path), path.string()});
  }
}

// Fisher-Yates with the generator's raw output: the same order on every standard library
// (std::shuffle and the distributions are implementation-defined).
template <typename T>
void shuffle(std::vector<T>& items, std::mt19937_64& rng) {
  for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[rng() % i]);
}

}  // namespace

std::vector<Document> read_documents(const std::vector<std::string>& paths) {
  std::vector<Document> documents;
  for (const std::string& path : paths) {
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        const std::string extension = entry.path().extension().string();
        if (entry.is_regular_file() && (extension == ".txt" || extension == ".jsonl")) files.push_back(entry.path());
      }
      if (files.empty()) fail("{}: no .txt or .jsonl files in this corpus directory", path);
      std::sort(files.begin(), files.end());
      for (const auto& file : files) read_file_documents(file, documents);
    } else if (std::filesystem::is_regular_file(path)) {
      read_file_documents(path, documents);
    } else {
      fail("{}: corpus path is neither a file nor a directory", path);
    }
  }
  return documents;
}

std::span<const std::int64_t> PackedSequences::operator[](std::int64_t i) const {
  if (i < 0 || i >= count()) fail("sequence {} of {}", i, count());
  return std::span(tokens).subspan(static_cast<std::size_t>(i * seq_len), static_cast<std::size_t>(seq_len));
}

PackedSequences pack_documents(const std::vector<std::vector<std::int32_t>>& documents, std::int32_t eos,
                               std::int64_t seq_len) {
  if (seq_len < 2) fail("seq_len = {}: sequences need at least 2 tokens", seq_len);
  PackedSequences packed;
  packed.seq_len = seq_len;
  for (const auto& document : documents) {
    packed.tokens.insert(packed.tokens.end(), document.begin(), document.end());
    packed.tokens.push_back(eos);
  }
  packed.tokens.resize(packed.tokens.size() - packed.tokens.size() % static_cast<std::size_t>(seq_len));
  return packed;
}

Corpus build_corpus(const Tokenizer& tokenizer, const std::vector<Document>& documents, std::int64_t seq_len,
                    double validation_fraction, std::uint64_t seed, bool skip_invalid) {
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0))
    fail("validation_fraction = {} must lie in [0, 1)", validation_fraction);
  std::vector<std::vector<std::int32_t>> encoded(documents.size());
  // A document the tokenizer refuses is noted in its own slot rather than thrown out of the loop,
  // so that the error (or the list of skipped documents) follows the corpus order, not the
  // order in which threads happen to reach them.
  std::vector<std::string> refused(documents.size());
  ThreadPool::global().parallel_for(static_cast<std::int64_t>(documents.size()), 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      try {
        encoded[i] = tokenizer.encode(documents[i].text);
      } catch (const Error& error) {
        refused[i] = fmt::format("{}: {}", documents[i].origin, error.what());
      }
    }
  });
  Corpus corpus;
  std::vector<std::vector<std::int32_t>> kept;
  kept.reserve(documents.size());
  for (std::size_t i = 0; i < documents.size(); ++i) {
    if (refused[i].empty())
      kept.push_back(std::move(encoded[i]));
    else
      corpus.skipped.push_back(std::move(refused[i]));
  }
  if (!corpus.skipped.empty() && !skip_invalid)
    fail("{}{} (\"skip_invalid_documents\": true leaves such documents out)", corpus.skipped.front(),
         corpus.skipped.size() > 1 ? fmt::format("; {} more documents cannot be encoded either", corpus.skipped.size() - 1)
                                   : "");
  encoded = std::move(kept);
  corpus.documents = static_cast<std::int64_t>(encoded.size());
  for (const auto& d : encoded) corpus.tokens += static_cast<std::int64_t>(d.size()) + 1;

  std::mt19937_64 rng(seed);
  shuffle(encoded, rng);
  corpus.validation_documents = static_cast<std::int64_t>(std::ceil(validation_fraction * corpus.documents));
  if (validation_fraction > 0.0 && corpus.validation_documents >= corpus.documents)
    fail("validation_fraction = {} leaves none of the {} documents for training", validation_fraction,
         corpus.documents);
  const auto split = encoded.begin() + corpus.validation_documents;
  const std::int32_t eos = tokenizer.eos_id();
  corpus.validation = pack_documents({encoded.begin(), split}, eos, seq_len);
  corpus.train = pack_documents({split, encoded.end()}, eos, seq_len);
  if (corpus.train.count() == 0)
    fail("the corpus ({} tokens in {} training documents) fills no sequence of {} tokens", corpus.tokens,
         corpus.documents - corpus.validation_documents, seq_len);
  if (validation_fraction > 0.0 && corpus.validation.count() == 0)
    fail("the validation split ({} documents) fills no sequence of {} tokens; raise validation_fraction",
         corpus.validation_documents, seq_len);
  return corpus;
}

SequenceSampler::SequenceSampler(std::int64_t count, std::uint64_t seed) : count_(count), rng_(seed) {
  if (count <= 0) fail("SequenceSampler: no sequences to sample");
}

void SequenceSampler::start_epoch() {
  std::ostringstream state;
  state << rng_;
  epoch_rng_state_ = state.str();
  order_.resize(static_cast<std::size_t>(count_));
  for (std::int64_t i = 0; i < count_; ++i) order_[i] = i;
  shuffle(order_, rng_);
  ++epoch_;
  cursor_ = 0;
}

std::int64_t SequenceSampler::next() {
  if (epoch_ < 0 || cursor_ == count_) start_epoch();
  return order_[cursor_++];
}

nlohmann::json SequenceSampler::state() const {
  return {{"sequences", count_}, {"epoch", epoch_}, {"cursor", cursor_}, {"epoch_rng_state", epoch_rng_state_}};
}

void SequenceSampler::restore(const nlohmann::json& state) {
  if (state.at("sequences").get<std::int64_t>() != count_)
    fail("data state: {} training sequences recorded, the corpus now packs {} (different corpus, tokenizer or "
         "seq_len?)", state.at("sequences").get<std::int64_t>(), count_);
  const auto epoch = state.at("epoch").get<std::int64_t>();
  if (epoch < 0) return;  // nothing read yet
  std::istringstream saved(state.at("epoch_rng_state").get<std::string>());
  saved >> rng_;
  if (!saved) fail("data state: unreadable epoch_rng_state");
  start_epoch();
  epoch_ = epoch;
  cursor_ = state.at("cursor").get<std::int64_t>();
  if (cursor_ < 0 || cursor_ > count_) fail("data state: cursor {} outside [0, {}]", cursor_, count_);
}

}  // namespace dsv3::train
