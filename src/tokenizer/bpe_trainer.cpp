#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv3 {

const std::vector<SpecialToken>& deepseek_leading_special_tokens() {
  static const std::vector<SpecialToken> tokens = {
      {"<｜begin▁of▁sentence｜>", true, false},
      {"<｜end▁of▁sentence｜>", true, false},
      {"<｜▁pad▁｜>", true, false},
  };
  return tokens;
}

const std::vector<SpecialToken>& deepseek_trailing_special_tokens() {
  // DeepSeek marks these as not special (they survive skip_special_tokens) except <|EOT|>.
  static const std::vector<SpecialToken> tokens = {
      {"<｜fim▁hole｜>", false, true},         {"<｜fim▁begin｜>", false, true},
      {"<｜fim▁end｜>", false, true},          {"<｜User｜>", false, true},
      {"<｜Assistant｜>", false, true},        {"<|EOT|>", true, true},
      {"<｜tool▁calls▁begin｜>", false, true}, {"<｜tool▁calls▁end｜>", false, true},
      {"<｜tool▁call▁begin｜>", false, true},  {"<｜tool▁call▁end｜>", false, true},
      {"<｜tool▁outputs▁begin｜>", false, true}, {"<｜tool▁outputs▁end｜>", false, true},
      {"<｜tool▁output▁begin｜>", false, true}, {"<｜tool▁output▁end｜>", false, true},
      {"<｜tool▁sep｜>", false, true},
  };
  return tokens;
}

const nlohmann::json& deepseek_pre_tokenizer() {
  // Digits in runs of at most three; runs of CJK ideographs and kana; then a GPT-style split of
  // letters, punctuation and whitespace. Copied verbatim (as data) from the released tokenizer.json.
  static const nlohmann::json pre_tokenizer = nlohmann::json::parse(R"json(
    {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})json");
  return pre_tokenizer;
}

namespace {

using Symbol = std::uint32_t;
using PairKey = std::uint64_t;  // (left << 32) | right, so integer order is (left, right) order

PairKey pair_key(Symbol left, Symbol right) { return (static_cast<PairKey>(left) << 32) | right; }
Symbol left_of(PairKey pair) { return static_cast<Symbol>(pair >> 32); }
Symbol right_of(PairKey pair) { return static_cast<Symbol>(pair & 0xFFFFFFFFu); }

struct Word {
  std::vector<Symbol> symbols;
  std::int64_t count;
};

struct Candidate {
  std::int64_t count;
  PairKey pair;
};

// The priority queue's order: the higher count first; on a tie the smaller (left, right) pair.
struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.count != b.count ? a.count < b.count : a.pair > b.pair;
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("corpus file '{}': cannot open: {}", path, std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("corpus file '{}': read error: {}", path, std::strerror(errno));
  return text;
}

void validate(const BpeTrainerOptions& options) {
  const std::size_t specials = options.leading_special_tokens.size() + options.trailing_special_tokens.size();
  const std::size_t minimum = specials + 256;
  if (options.vocab_size < minimum)
    fail("vocab size {} is too small: the 256 byte symbols and {} special tokens need at least {}",
         options.vocab_size, specials, minimum);
  if (!options.chat_template.empty()) {
    try {
      ChatTemplate parsed(options.chat_template);
    } catch (const Error& e) {
      fail("chat template: {}", e.what());
    }
  }
  if (options.vocab_size > 0xFFFFFFF0u) fail("vocab size {} is too large", options.vocab_size);
  std::vector<std::string> contents;
  for (const auto* list : {&options.leading_special_tokens, &options.trailing_special_tokens})
    for (const auto& token : *list) contents.push_back(token.content);
  std::sort(contents.begin(), contents.end());
  for (std::size_t i = 0; i < contents.size(); ++i) {
    if (contents[i].empty()) fail("special tokens must not be empty");
    if (i > 0 && contents[i] == contents[i - 1]) fail("special token '{}' is listed twice", contents[i]);
  }
}

class Trainer {
 public:
  explicit Trainer(const BpeTrainerOptions& options)
      : options_(options), pre_tokenizer_(PreTokenizer::from_json(options.pre_tokenizer)) {
    // Byte symbols are numbered in code-point order of their byte-level spelling, as HF's
    // trainer sorts its alphabet; this numbering decides ties, so it must match HF's.
    const auto& table = bytes_to_unicode();
    std::vector<int> bytes(256);
    for (int b = 0; b < 256; ++b) bytes[b] = b;
    std::sort(bytes.begin(), bytes.end(), [&](int x, int y) { return table[x] < table[y]; });
    for (int b : bytes) {
      byte_symbol_[b] = static_cast<Symbol>(strings_.size());
      add_token(byte_level_encode(std::string(1, static_cast<char>(b))));
    }
  }

  void count_file(const std::string& path) {
    const std::string text = read_file(path);
    result_.corpus_bytes += text.size();
    std::size_t line_number = 1;
    // Line by line with the line ending kept, as `tokenizers` reads training files.
    for (std::size_t start = 0; start < text.size(); ++line_number) {
      const std::size_t newline = text.find('\n', start);
      const std::size_t end = newline == std::string::npos ? text.size() : newline + 1;
      try {
        pre_tokenizer_.for_each_piece(std::string_view(text).substr(start, end - start),
                                      [&](std::string_view piece) { ++word_counts_[std::string(piece)]; });
      } catch (const Error& e) {
        fail("corpus file '{}' line {}: {}", path, line_number, e.what());
      }
      start = end;
    }
  }

  TrainedBpe finish() {
    build_words();
    merge_until_full();
    result_.leading_special_tokens = options_.leading_special_tokens;
    result_.trailing_special_tokens = options_.trailing_special_tokens;
    result_.pre_tokenizer = options_.pre_tokenizer;
    result_.chat_template = options_.chat_template;
    for (const auto& token : options_.leading_special_tokens) result_.vocab.push_back(token.content);
    result_.vocab.insert(result_.vocab.end(), strings_.begin(), strings_.end());
    return std::move(result_);
  }

 private:
  Symbol add_token(std::string spelling) {
    const auto [it, inserted] = ids_.try_emplace(spelling, static_cast<Symbol>(strings_.size()));
    if (inserted) strings_.push_back(std::move(spelling));
    return it->second;
  }

  void build_words() {
    words_.reserve(word_counts_.size());
    for (auto& [text, count] : word_counts_) {
      Word word{{}, static_cast<std::int64_t>(count)};
      word.symbols.reserve(text.size());
      for (const char c : text) word.symbols.push_back(byte_symbol_[static_cast<unsigned char>(c)]);
      result_.corpus_words += count;
      words_.push_back(std::move(word));
    }
    result_.distinct_words = words_.size();
    word_counts_ = {};
    for (std::size_t w = 0; w < words_.size(); ++w) {
      const auto& symbols = words_[w].symbols;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        const PairKey pair = pair_key(symbols[i], symbols[i + 1]);
        pair_counts_[pair] += words_[w].count;
        auto& list = where_[pair];
        if (list.empty() || list.back() != w) list.push_back(static_cast<std::uint32_t>(w));
      }
    }
    for (const auto& [pair, count] : pair_counts_) queue_.push({count, pair});
  }

  // Pops the most frequent pair. Entries are invalidated lazily: a count only falls after it was
  // pushed (pairs that gain occurrences are new, holding the new token, and are pushed afresh), so
  // an entry whose count is above the pair's current count is re-queued with the current count.
  bool pop_best(PairKey& best) {
    while (!queue_.empty()) {
      const Candidate top = queue_.top();
      queue_.pop();
      const auto found = pair_counts_.find(top.pair);
      const std::int64_t current = found == pair_counts_.end() ? 0 : found->second;
      if (current == top.count && current > 0) {
        best = top.pair;
        return true;
      }
      if (current > 0 && current < top.count) queue_.push({current, top.pair});
    }
    return false;
  }

  void merge_until_full() {
    const std::size_t model_vocab_target = options_.vocab_size - options_.trailing_special_tokens.size() -
                                           options_.leading_special_tokens.size();
    const std::size_t wanted = model_vocab_target - 256;
    std::vector<std::uint32_t> visited(words_.size(), 0);
    std::uint32_t stamp = 0;
    while (strings_.size() < model_vocab_target) {
      PairKey pair;
      if (!pop_best(pair)) {
        result_.corpus_exhausted = true;
        break;
      }
      const Symbol left = left_of(pair);
      const Symbol right = right_of(pair);
      // Two different pairs can spell the same token ("a"+"bc", "ab"+"c"): HF reuses its id.
      const Symbol merged = add_token(strings_[left] + strings_[right]);
      result_.merges.emplace_back(strings_[left], strings_[right]);
      ++stamp;
      std::vector<std::uint32_t> candidates = std::move(where_[pair]);
      where_.erase(pair);
      grown_.clear();
      for (const std::uint32_t w : candidates) {
        if (visited[w] == stamp) continue;
        visited[w] = stamp;
        merge_in_word(w, left, right, merged);
      }
      std::sort(grown_.begin(), grown_.end());
      grown_.erase(std::unique(grown_.begin(), grown_.end()), grown_.end());
      for (const PairKey grown : grown_) {
        const auto found = pair_counts_.find(grown);
        if (found != pair_counts_.end() && found->second > 0) queue_.push({found->second, grown});
      }
      if (options_.on_progress && (result_.merges.size() % 256 == 0)) options_.on_progress(result_.merges.size(), wanted);
    }
    if (options_.on_progress) options_.on_progress(result_.merges.size(), wanted);
  }

  // Replaces each left-to-right, non-overlapping `left right` in word `w` with `merged`, and moves
  // the word's pair counts by the difference between its pairs before and after.
  void merge_in_word(std::uint32_t w, Symbol left, Symbol right, Symbol merged) {
    Word& word = words_[w];
    std::vector<Symbol>& symbols = word.symbols;
    after_.clear();
    for (std::size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        after_.push_back(merged);
        i += 2;
      } else {
        after_.push_back(symbols[i]);
        ++i;
      }
    }
    if (after_.size() == symbols.size()) return;  // a stale entry of the index: nothing to merge
    collect_pairs(symbols, pairs_before_);
    collect_pairs(after_, pairs_after_);
    symbols.swap(after_);
    std::size_t i = 0;
    std::size_t j = 0;
    while (i < pairs_before_.size() || j < pairs_after_.size()) {
      PairKey pair;
      std::int64_t delta = 0;
      if (j == pairs_after_.size() || (i < pairs_before_.size() && pairs_before_[i] < pairs_after_[j])) {
        pair = pairs_before_[i];
      } else {
        pair = pairs_after_[j];
      }
      while (i < pairs_before_.size() && pairs_before_[i] == pair) --delta, ++i;
      while (j < pairs_after_.size() && pairs_after_[j] == pair) ++delta, ++j;
      if (delta == 0) continue;
      auto found = pair_counts_.try_emplace(pair, 0).first;
      found->second += delta * word.count;
      if (found->second <= 0) pair_counts_.erase(found);
      if (delta > 0) {
        where_[pair].push_back(w);
        grown_.push_back(pair);
      }
    }
  }

  static void collect_pairs(const std::vector<Symbol>& symbols, std::vector<PairKey>& pairs) {
    pairs.clear();
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) pairs.push_back(pair_key(symbols[i], symbols[i + 1]));
    std::sort(pairs.begin(), pairs.end());
  }

  const BpeTrainerOptions& options_;
  PreTokenizer pre_tokenizer_;
  TrainedBpe result_;
  Symbol byte_symbol_[256] = {};
  std::vector<std::string> strings_;  // by symbol: the byte-level spelling
  std::unordered_map<std::string, Symbol> ids_;
  std::unordered_map<std::string, std::uint64_t> word_counts_;
  std::vector<Word> words_;
  std::unordered_map<PairKey, std::int64_t> pair_counts_;
  std::unordered_map<PairKey, std::vector<std::uint32_t>> where_;  // pair -> words that had it
  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue_;
  std::vector<PairKey> grown_, pairs_before_, pairs_after_;
  std::vector<Symbol> after_;
};

nlohmann::ordered_json added_token_json(std::size_t id, const SpecialToken& token) {
  return {{"id", id},           {"content", token.content},       {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", token.normalized}, {"special", token.special}};
}

nlohmann::ordered_json config_token(const SpecialToken& token) {
  return {{"__type", "AddedToken"}, {"content", token.content}, {"lstrip", false},
          {"normalized", true},     {"rstrip", false},          {"single_word", false}};
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  if (!out) fail("'{}': cannot create: {}", path.string(), std::strerror(errno));
  out << text << '\n';
  out.close();
  if (!out) fail("'{}': write failed: {}", path.string(), std::strerror(errno));
}

}  // namespace

TrainedBpe train_bpe(const std::vector<std::string>& corpus_paths, const BpeTrainerOptions& options) {
  validate(options);
  if (corpus_paths.empty()) fail("no corpus files given");
  Trainer trainer(options);
  for (const auto& path : corpus_paths) trainer.count_file(path);
  return trainer.finish();
}

nlohmann::ordered_json tokenizer_json(const TrainedBpe& model) {
  using nlohmann::ordered_json;
  ordered_json added = ordered_json::array();
  for (std::size_t i = 0; i < model.leading_special_tokens.size(); ++i)
    added.push_back(added_token_json(i, model.leading_special_tokens[i]));
  for (std::size_t i = 0; i < model.trailing_special_tokens.size(); ++i)
    added.push_back(added_token_json(model.vocab.size() + i, model.trailing_special_tokens[i]));
  ordered_json vocab = ordered_json::object();
  for (std::size_t id = 0; id < model.vocab.size(); ++id) vocab[model.vocab[id]] = id;
  ordered_json merges = ordered_json::array();
  // "left right" strings as in DeepSeek's file; byte-level spellings never contain a space.
  for (const auto& [left, right] : model.merges) merges.push_back(left + " " + right);
  ordered_json bpe = {{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", nullptr},
                      {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr},
                      {"fuse_unk", false},
                      {"byte_fallback", false},
                      {"vocab", std::move(vocab)},
                      {"merges", std::move(merges)}};
  const ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  ordered_json decoder = byte_level;
  decoder["trim_offsets"] = true;
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", std::move(added)},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", ordered_json::array()}}},
          {"pre_tokenizer", model.pre_tokenizer},
          {"post_processor", byte_level},
          {"decoder", std::move(decoder)},
          {"model", std::move(bpe)}};
}

nlohmann::ordered_json tokenizer_config_json(const TrainedBpe& model) {
  nlohmann::ordered_json config = {{"add_bos_token", !model.leading_special_tokens.empty()},
                                   {"add_eos_token", false}};
  if (!model.leading_special_tokens.empty()) config["bos_token"] = config_token(model.leading_special_tokens[0]);
  config["clean_up_tokenization_spaces"] = false;
  if (model.leading_special_tokens.size() > 1) {
    // DeepSeek pads with the end-of-sentence token, not with <｜▁pad▁｜>.
    config["eos_token"] = config_token(model.leading_special_tokens[1]);
    config["pad_token"] = config_token(model.leading_special_tokens[1]);
  }
  config["legacy"] = true;
  config["model_max_length"] = 131072;
  config["sp_model_kwargs"] = nlohmann::ordered_json::object();
  config["unk_token"] = nullptr;
  config["tokenizer_class"] = "LlamaTokenizerFast";
  if (!model.chat_template.empty()) config["chat_template"] = model.chat_template;
  return config;
}

void write_tokenizer_files(const TrainedBpe& model, const std::string& directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) fail("output directory '{}': cannot create: {}", directory, error.message());
  const std::filesystem::path root(directory);
  write_text(root / "tokenizer.json", tokenizer_json(model).dump(2));
  write_text(root / "tokenizer_config.json", tokenizer_config_json(model).dump(2));
}

}  // namespace dsv3
