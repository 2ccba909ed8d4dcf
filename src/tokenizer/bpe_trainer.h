#pragma once
// Trains a byte-level BPE tokenizer shaped like DeepSeek-V3's: the same pre-tokenizer regexes,
// all 256 byte symbols in the initial vocabulary, and DeepSeek's special tokens, written as a
// tokenizer.json + tokenizer_config.json that Hugging Face `tokenizers` loads.
//
// Training is the standard greedy BPE: count the pre-tokenized words of the corpus (line by line,
// line endings kept, as `tokenizers`' train_from_files reads files), then repeatedly merge the most
// frequent adjacent pair. Ties go to the pair whose (left id, right id) is smallest, ids numbering
// the byte symbols in code-point order of their byte-level spelling and then merged tokens in order
// of creation: Hugging Face's BpeTrainer rule, so on the same corpus both produce the same merges.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace dsv3 {

struct SpecialToken {
  std::string content;
  bool special = true;      // skipped by decode(skip_special_tokens)
  bool normalized = false;  // tokenizer.json's flag; the DeepSeek normalizer is empty either way
};

// DeepSeek-V3's added tokens, exactly as its released tokenizer.json spells them.
// Leading (ids 0, 1, 2 and part of the BPE vocabulary): begin/end of sentence and padding.
const std::vector<SpecialToken>& deepseek_leading_special_tokens();
// Trailing (ids right after the BPE vocabulary): fill-in-the-middle, User/Assistant, EOT and the
// tool-call tokens. The 800 `place▁holder` tokens of the release are left out.
const std::vector<SpecialToken>& deepseek_trailing_special_tokens();
// The `pre_tokenizer` of DeepSeek-V3's tokenizer.json (three regex Splits, then ByteLevel).
const nlohmann::json& deepseek_pre_tokenizer();

struct BpeTrainerOptions {
  // The whole vocabulary: special tokens + 256 byte symbols + merged tokens.
  std::size_t vocab_size = 0;
  std::vector<SpecialToken> leading_special_tokens = deepseek_leading_special_tokens();
  std::vector<SpecialToken> trailing_special_tokens = deepseek_trailing_special_tokens();
  nlohmann::json pre_tokenizer = deepseek_pre_tokenizer();
  // Written into tokenizer_config.json as its chat_template when not empty (checked to parse).
  std::string chat_template;
  // Called now and then while merging with (merges done, merges wanted).
  std::function<void(std::size_t done, std::size_t total)> on_progress;
};

struct TrainedBpe {
  // The BPE model's vocabulary by id, in byte-level spelling: the leading special tokens, the 256
  // byte symbols, then merged tokens. The trailing special tokens follow it (ids vocab.size()...).
  std::vector<std::string> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in priority order
  std::vector<SpecialToken> leading_special_tokens;
  std::vector<SpecialToken> trailing_special_tokens;
  nlohmann::json pre_tokenizer;
  std::string chat_template;
  std::uint64_t corpus_bytes = 0;
  std::uint64_t corpus_words = 0;  // pre-tokenized pieces counted
  std::size_t distinct_words = 0;
  bool corpus_exhausted = false;   // no pair was left to merge before reaching the vocab size

  std::size_t size() const { return vocab.size() + trailing_special_tokens.size(); }
};

// Trains on the UTF-8 text files `corpus_paths`. Throws dsv3::Error naming the file (and line,
// for invalid UTF-8) or the option at fault.
TrainedBpe train_bpe(const std::vector<std::string>& corpus_paths, const BpeTrainerOptions& options);

// The tokenizer.json and tokenizer_config.json documents for a trained model.
nlohmann::ordered_json tokenizer_json(const TrainedBpe& model);
nlohmann::ordered_json tokenizer_config_json(const TrainedBpe& model);

// Writes both files into `directory` (created if missing).
void write_tokenizer_files(const TrainedBpe& model, const std::string& directory);

}  // namespace dsv3
