#pragma once
// Internal to src/tokenizer: the added_tokens of a tokenizer.json, found in text before
// pre-tokenization as Hugging Face's AddedVocabulary does.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace dsv3::tokenizer_internal {

struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// A part of the text: an added token (id >= 0) or plain text to pre-tokenize (id < 0).
struct Segment {
  std::size_t begin, end;
  std::int32_t id;
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Cuts `text` into segments. As in HF, tokens with normalized=false are found first in the raw
  // text, then those with normalized=true in the remaining plain parts (the normalizer being the
  // identity); each search takes the leftmost, then longest, match.
  void split(std::string_view text, std::vector<Segment>& segments) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie over one group of token contents.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, std::int32_t>> children;
      std::int32_t token = -1;  // index into tokens_ of the token ending here
    };
    std::vector<Node> nodes{Node{}};
    bool starts[256] = {};
    void add(std::string_view content, std::int32_t token);
    // Leftmost-longest match at or after `from`.
    bool find(std::string_view text, std::size_t from, std::size_t& begin, std::size_t& end,
              std::int32_t& token) const;
  };
  // Appends the segments of text[begin, end) found with `trie`.
  void split_with(const Trie& trie, std::string_view text, std::size_t offset,
                  std::vector<Segment>& segments) const;
  bool is_word_character_before(std::string_view text, std::size_t at) const;
  bool is_word_character_at(std::string_view text, std::size_t at) const;

  std::vector<AddedToken> tokens_;
  Trie raw_, normalized_;
  Regex word_character_;  // Rust regex's \w, which HF uses for single_word
};

}  // namespace dsv3::tokenizer_internal
