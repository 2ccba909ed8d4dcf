#pragma once
// Internal to src/tokenizer: UTF-8 checks and the lossy conversion a byte-level decoder needs.
#include <cstddef>
#include <string>
#include <string_view>

namespace dsv3::tokenizer_internal {

// What the bytes at the front of a buffer hold.
struct Utf8Step {
  enum Kind { kValid, kInvalid, kIncomplete } kind;
  // kValid: the character's length; kInvalid: the length of the maximal invalid subpart (what one
  // U+FFFD replaces, as Rust's from_utf8_lossy and the Unicode standard count it);
  // kIncomplete: how many bytes there are, all a valid prefix of a character.
  std::size_t length;
};
Utf8Step utf8_step(const unsigned char* bytes, std::size_t size);

// The offset of the first byte that does not start a complete, valid character, or npos.
std::size_t find_invalid_utf8(std::string_view text);

// Appends `bytes` to `out` with each invalid subpart (and an unfinished character at the end)
// replaced by U+FFFD, exactly as Hugging Face's ByteLevel decoder (String::from_utf8_lossy) does.
void append_utf8_lossy(std::string_view bytes, std::string& out);

// Appends the valid characters of `bytes` to `out`, replacing invalid subparts with U+FFFD, but
// stops before an unfinished character at the end; returns how many bytes it consumed.
std::size_t append_utf8_complete(std::string_view bytes, std::string& out);

// Unicode White_Space, the set Rust's char::is_whitespace uses.
bool is_unicode_whitespace(char32_t c);

// Decodes the character at text[at] (text must be valid UTF-8 there); sets `length`.
char32_t decode_utf8(std::string_view text, std::size_t at, std::size_t& length);

// Decodes the character that ends at text[at - 1]; sets `length`.
char32_t decode_utf8_before(std::string_view text, std::size_t at, std::size_t& length);

void append_utf8(char32_t c, std::string& out);

}  // namespace dsv3::tokenizer_internal
