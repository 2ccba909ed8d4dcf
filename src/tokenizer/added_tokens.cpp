#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace dsv3::tokenizer_internal {

void AddedTokenMatcher::Trie::add(std::string_view content, std::int32_t token) {
  std::int32_t node = 0;
  for (char c : content) {
    auto byte = static_cast<unsigned char>(c);
    auto& children = nodes[node].children;
    auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
    if (it != children.end()) {
      node = it->second;
    } else {
      auto next = static_cast<std::int32_t>(nodes.size());
      children.emplace_back(byte, next);
      nodes.emplace_back();
      node = next;
    }
  }
  // The first token with a given content keeps it, as the first added wins in HF.
  if (nodes[node].token < 0) nodes[node].token = token;
  if (!content.empty()) starts[static_cast<unsigned char>(content[0])] = true;
}

bool AddedTokenMatcher::Trie::find(std::string_view text, std::size_t from, std::size_t& begin,
                                   std::size_t& end, std::int32_t& token) const {
  for (std::size_t start = from; start < text.size(); ++start) {
    if (!starts[static_cast<unsigned char>(text[start])]) continue;
    std::int32_t node = 0, found = -1;
    std::size_t found_end = 0;
    for (std::size_t i = start; i < text.size(); ++i) {
      auto byte = static_cast<unsigned char>(text[i]);
      const auto& children = nodes[node].children;
      auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
      if (it == children.end()) break;
      node = it->second;
      if (nodes[node].token >= 0) {
        found = nodes[node].token;
        found_end = i + 1;
      }
    }
    if (found >= 0) {
      begin = start;
      end = found_end;
      token = found;
      return true;
    }
  }
  return false;
}

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens)
    : tokens_(std::move(tokens)),
      word_character_(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", "added_tokens (single_word)") {
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].content.empty()) continue;
    (tokens_[i].normalized ? normalized_ : raw_).add(tokens_[i].content, static_cast<std::int32_t>(i));
  }
}

bool AddedTokenMatcher::is_word_character_before(std::string_view text, std::size_t at) const {
  if (at == 0) return false;
  std::size_t length = 0;
  decode_utf8_before(text, at, length);
  std::size_t begin, end;
  return word_character_.find(text.substr(at - length, length), 0, begin, end);
}

bool AddedTokenMatcher::is_word_character_at(std::string_view text, std::size_t at) const {
  if (at >= text.size()) return false;
  std::size_t length = 0;
  decode_utf8(text, at, length);
  std::size_t begin, end;
  return word_character_.find(text.substr(at, length), 0, begin, end);
}

void AddedTokenMatcher::split_with(const Trie& trie, std::string_view text, std::size_t offset,
                                   std::vector<Segment>& segments) const {
  std::size_t plain_begin = 0, from = 0, begin = 0, end = 0;
  std::int32_t index = -1;
  while (trie.find(text, from, begin, end, index)) {
    const AddedToken& token = tokens_[index];
    from = end;
    // single_word: only a match not glued to a word character on either side counts.
    if (token.single_word && (is_word_character_before(text, begin) || is_word_character_at(text, end))) continue;
    if (token.lstrip) {
      // The token takes the whitespace before it, but not what an earlier token already took.
      std::size_t length = 0;
      while (begin > plain_begin && is_unicode_whitespace(decode_utf8_before(text, begin, length))) begin -= length;
    }
    if (token.rstrip) {
      std::size_t length = 0;
      while (end < text.size() && is_unicode_whitespace(decode_utf8(text, end, length))) end += length;
      from = end;
    }
    if (begin > plain_begin) segments.push_back({offset + plain_begin, offset + begin, -1});
    segments.push_back({offset + begin, offset + end, token.id});
    plain_begin = end;
  }
  if (plain_begin < text.size()) segments.push_back({offset + plain_begin, offset + text.size(), -1});
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& segments) const {
  segments.clear();
  if (text.empty()) return;
  std::vector<Segment> first;
  split_with(raw_, text, 0, first);
  for (const Segment& segment : first) {
    if (segment.id >= 0)
      segments.push_back(segment);
    else
      split_with(normalized_, text.substr(segment.begin, segment.end - segment.begin), segment.begin, segments);
  }
}

}  // namespace dsv3::tokenizer_internal
