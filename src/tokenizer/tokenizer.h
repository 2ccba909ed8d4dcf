#pragma once
// The tokenizer of a model folder: byte-level BPE exactly as Hugging Face `tokenizers` runs the
// folder's tokenizer.json (added tokens, normalizer, pre-tokenizer, BPE, ByteLevel decoder), plus
// the BOS/EOS and chat-template settings of its tokenizer_config.json.
//
// This is the folder's public header; pre_tokenizer.h is shared with the BPE trainer, the rest of
// src/tokenizer is internal.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

namespace tokenizer_internal {
struct TokenizerState;
}

class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json. Unsupported settings
  // (an unknown normalizer, a non-BPE model, ...) throw dsv3::Error naming the file and field.
  static Tokenizer load(const std::filesystem::path& dir);
  // The same from parsed documents; `config` may be null. `origin` prefixes error messages.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const nlohmann::json& config,
                             const std::string& origin = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text -> ids as `tokenizer.encode(text, add_special_tokens=False)` does; added tokens written
  // in the text (e.g. "<｜User｜>") are recognised. add_bos puts bos_id() first. Throws
  // dsv3::Error naming the byte offset when `text` is not valid UTF-8. Safe to call concurrently.
  std::vector<std::int32_t> encode(std::string_view text, bool add_bos = false) const;

  // Text -> ids with the BOS/EOS that tokenizer_config.json's add_bos_token/add_eos_token ask for,
  // as `tokenizer(text)` does in transformers (the fixture's `ids_bos` for DeepSeek-V3).
  std::vector<std::int32_t> encode_with_special_tokens(std::string_view text) const;

  // A chat rendered by the chat template -> ids, as transformers' apply_chat_template(...,
  // tokenize=True) does: no BOS is added (the template writes it), special tokens in the text are
  // recognised. The same as encode(rendered, false), named for the call site.
  std::vector<std::int32_t> encode_chat(std::string_view rendered_chat) const { return encode(rendered_chat, false); }

  // Ids -> text as Hugging Face's decode: token bytes joined, invalid UTF-8 replaced by U+FFFD.
  // skip_special drops added tokens marked special. Throws dsv3::Error on an unknown id.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const;

  // Turns ids into text one id at a time during generation: push() returns only whole UTF-8
  // characters (a character split over several tokens waits for its last byte), and the text of
  // all push() results plus finish() equals decode() of all ids.
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
    std::string push(std::int32_t id);
    // Flushes an unfinished character at the end as U+FFFD, as decode() would.
    std::string finish();

   private:
    const Tokenizer* tokenizer_;
    bool skip_special_;
    std::string pending_;  // bytes of an unfinished character
  };

  // Number of ids (BPE vocabulary and added tokens): the largest id + 1.
  std::size_t vocab_size() const;
  // The token string of `id` as tokenizer.json spells it ("Ġworld", "<｜User｜>"); nullopt if none.
  std::optional<std::string> id_to_token(std::int32_t id) const;
  std::optional<std::int32_t> token_to_id(std::string_view token) const;
  bool is_special(std::int32_t id) const;

  // From tokenizer_config.json; empty / false when it does not set them. bos_id()/eos_id() throw
  // dsv3::Error when the token is not configured or not in the vocabulary.
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  std::int32_t bos_id() const;
  std::int32_t eos_id() const;
  bool add_bos_token() const;
  bool add_eos_token() const;
  // The Jinja source of the chat template ("" when there is none).
  const std::string& chat_template() const;

 private:
  Tokenizer();
  // Appends the bytes `id` stands for; false when the id is a skipped special token.
  bool append_token_bytes(std::int32_t id, bool skip_special, std::string& bytes) const;
  std::unique_ptr<tokenizer_internal::TokenizerState> state_;
};

}  // namespace dsv3
