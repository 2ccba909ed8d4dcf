#pragma once
// Pre-tokenization of byte-level BPE as Hugging Face `tokenizers` defines it: the text is cut into
// pieces by the `pre_tokenizer` of a tokenizer.json (a `Sequence` of regex `Split`s ending in
// `ByteLevel`), and BPE then runs inside each piece only.
//
// SHARED API: the BPE trainer (src/tokenizer/bpe_trainer.*) counts words with this header, and the
// encoder (tokenizer.h) uses it too, so both see exactly the same pieces. Keep it stable.
#include <nlohmann/json_fwd.hpp>

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

class Tokenizer;

// GPT-2's table that gives each byte a printable code point, so that byte-level tokens are
// readable strings ("Ġ" is the space byte 0x20). Byte b maps to bytes_to_unicode()[b].
const std::array<char32_t, 256>& bytes_to_unicode();

// Raw bytes -> their byte-level spelling as UTF-8 (" Hello" -> "ĠHello").
std::string byte_level_encode(std::string_view bytes);

// The inverse: a byte-level string back to raw bytes; nullopt when `text` is not valid UTF-8 or
// holds a character outside the table (such tokens are not byte-level, e.g. "<｜User｜>").
std::optional<std::string> byte_level_decode(std::string_view text);

class PreTokenizer {
 public:
  // From the "pre_tokenizer" value of a tokenizer.json: null, a `Split`, a `ByteLevel`, or a
  // `Sequence` of them with any `ByteLevel` last. Anything else throws dsv3::Error naming it.
  static PreTokenizer from_json(const nlohmann::json& pre_tokenizer);

  // Reads the "pre_tokenizer" of the tokenizer.json at `path`.
  static PreTokenizer from_file(const std::string& path);

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Calls `visit` with each piece of `text` in order, as raw UTF-8 bytes (not yet byte-level
  // mapped). A piece may not be a substring of `text`: ByteLevel's add_prefix_space puts a space
  // in front. The views are valid during the call only. Throws dsv3::Error naming the byte offset
  // if `text` is not valid UTF-8.
  void for_each_piece(std::string_view text,
                      const std::function<void(std::string_view piece)>& visit) const;

  // The pieces as Hugging Face's `pre_tokenize_str` returns them: in their byte-level spelling
  // when the sequence ends in ByteLevel ("Hello world" -> {"Hello", "Ġworld"} for DeepSeek-V3).
  std::vector<std::string> split(std::string_view text) const;

  // True when the sequence ends in ByteLevel (the pieces are then meant for byte-level BPE).
  bool is_byte_level() const;

  struct Step;  // one Split or ByteLevel (internal)

 private:
  friend class Tokenizer;  // it has checked the UTF-8 of the whole text already
  void for_each_piece_of_valid_utf8(std::string_view text,
                                    const std::function<void(std::string_view piece)>& visit) const;
  PreTokenizer();
  std::vector<std::unique_ptr<Step>> steps_;
};

}  // namespace dsv3
