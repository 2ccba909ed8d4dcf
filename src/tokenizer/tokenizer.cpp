#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <functional>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3 {
namespace tokenizer_internal {

struct TokenizerState {
  BpeModel bpe;
  PreTokenizer pre_tokenizer;
  AddedTokenMatcher added;
  std::vector<std::string> id_bytes;  // what each id decodes to, before UTF-8 repair
  std::vector<std::uint8_t> id_kind;  // IdKind
  std::unordered_map<std::string, std::int32_t> added_ids;
  std::string bos_token, eos_token, chat_template;
  bool add_bos_token = false, add_eos_token = false;
  std::uint64_t serial = 0;  // tells the per-thread word caches of tokenizers apart
};

enum IdKind : std::uint8_t { kNoToken = 0, kModelToken, kAddedToken, kSpecialToken };

namespace {

// Normalizers change the text before added tokens are matched; DeepSeek-V3 and the other
// byte-level models we load use none (null or an empty Sequence), and anything else is refused
// rather than silently ignored.
void check_normalizer(const nlohmann::json& normalizer, const std::string& where) {
  if (normalizer.is_null()) return;
  std::string type = string_field(normalizer, "type", where);
  if (type != "Sequence")
    fail("{}: normalizer type '{}' is not supported (only null or an empty Sequence)", where, type);
  const nlohmann::json& steps = required_field(normalizer, "normalizers", where);
  if (!steps.is_array()) fail("{}.normalizers: expected an array", where);
  for (std::size_t i = 0; i < steps.size(); ++i)
    check_normalizer(steps[i], fmt::format("{}.normalizers[{}]", where, i));
}

void check_decoder(const nlohmann::json& decoder) {
  if (decoder.is_null()) fail("decoder: missing; byte-level BPE needs the ByteLevel decoder");
  std::string type = string_field(decoder, "type", "decoder");
  if (type != "ByteLevel") fail("decoder: type '{}' is not supported (only ByteLevel)", type);
}

void check_post_processor(const nlohmann::json& post_processor) {
  // ByteLevel's post-processing only trims offsets; ids are untouched. BOS/EOS come from
  // tokenizer_config.json instead (see encode_with_special_tokens).
  if (post_processor.is_null()) return;
  std::string type = string_field(post_processor, "type", "post_processor");
  if (type != "ByteLevel") fail("post_processor: type '{}' is not supported (only null or ByteLevel)", type);
}

std::vector<AddedToken> read_added_tokens(const nlohmann::json& document) {
  std::vector<AddedToken> tokens;
  auto it = document.find("added_tokens");
  if (it == document.end() || it->is_null()) return tokens;
  if (!it->is_array()) fail("added_tokens: expected an array");
  for (std::size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& entry = (*it)[i];
    std::string where = fmt::format("added_tokens[{}]", i);
    AddedToken token;
    token.content = string_field(entry, "content", where);
    const nlohmann::json& id = required_field(entry, "id", where);
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX)
      fail("{}.id: expected a non-negative integer, found {}", where, id.dump());
    token.id = id.get<std::int32_t>();
    token.special = bool_field(entry, "special", where, false);
    token.normalized = bool_field(entry, "normalized", where, !token.special);
    token.lstrip = bool_field(entry, "lstrip", where, false);
    token.rstrip = bool_field(entry, "rstrip", where, false);
    token.single_word = bool_field(entry, "single_word", where, false);
    if (token.content.empty()) fail("{}.content: empty", where);
    if (find_invalid_utf8(token.content) != std::string_view::npos) fail("{}.content: not valid UTF-8", where);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

// bos_token / eos_token: a string, {"content": ...} (transformers' AddedToken form), or null.
std::string special_token_string(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) return string_field(*it, "content", key);
  fail("{}: expected a string or {{\"content\": ...}}, found {}", key, it->type_name());
}

std::string chat_template_string(const nlohmann::json& config) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    // Several named templates: transformers uses the one called "default".
    for (const nlohmann::json& entry : *it)
      if (entry.is_object() && entry.value("name", "") == "default") return string_field(entry, "template", "chat_template[default]");
    fail("chat_template: a list of templates without one named \"default\"");
  }
  fail("chat_template: expected a string or a list of {{\"name\", \"template\"}}, found {}", it->type_name());
}

// What a token string decodes to under the ByteLevel decoder: its bytes when every character is
// in the byte table, otherwise (e.g. "<｜User｜>") its own UTF-8, as HF falls back to.
std::string token_bytes(const std::string& token) {
  std::optional<std::string> bytes = byte_level_decode(token);
  return bytes ? *bytes : token;
}

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// Word -> ids: texts repeat words so much that most pieces are found here instead of being merged
// again (HF keeps a cache too). Each thread has its own (see thread_cache), so concurrent encode()
// calls share nothing mutable and take no lock.
class WordCache {
 public:
  std::size_t size() const { return size_; }
  WordCache() { slots_.assign(1024, Slot{}); }
  // The cached ids of `word`, or nullptr.
  const std::int32_t* find(std::string_view word, std::size_t hash, std::uint32_t& count) const {
    for (std::size_t i = hash & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& slot = slots_[i];
      if (slot.word_length == 0) return nullptr;
      if (slot.hash == hash && slot.word_length == word.size() &&
          std::string_view(words_).substr(slot.word_offset, slot.word_length) == word) {
        count = slot.id_count;
        return ids_.data() + slot.id_offset;
      }
    }
  }
  void insert(std::string_view word, std::size_t hash, const std::int32_t* ids, std::uint32_t count) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    Slot slot{hash, static_cast<std::uint32_t>(words_.size()), static_cast<std::uint32_t>(word.size()),
              static_cast<std::uint32_t>(ids_.size()), count};
    words_.append(word);
    ids_.insert(ids_.end(), ids, ids + count);
    place(slot);
    ++size_;
  }

 private:
  struct Slot {
    std::size_t hash = 0;
    std::uint32_t word_offset = 0, word_length = 0;  // word_length 0 marks an empty slot
    std::uint32_t id_offset = 0, id_count = 0;
  };
  void place(const Slot& slot) {
    std::size_t i = slot.hash & (slots_.size() - 1);
    while (slots_[i].word_length != 0) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = slot;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    for (const Slot& slot : old)
      if (slot.word_length != 0) place(slot);
  }
  std::vector<Slot> slots_;
  std::string words_;
  std::vector<std::int32_t> ids_;
  std::size_t size_ = 0;
};

// Longer pieces are rare and would fill the cache with one-off entries.
constexpr std::size_t kCachedWordLimit = 48;
// A thread's cache starts over past this many words, which bounds its memory (a few MB).
constexpr std::size_t kCachedWordsPerThread = 1 << 17;

std::atomic<std::uint64_t> next_tokenizer_serial{1};

// The calling thread's cache for the tokenizer with `serial` (serials are never reused, unlike
// addresses); a thread that switches tokenizers starts a fresh cache.
WordCache& thread_cache(std::uint64_t serial) {
  struct Owned {
    std::uint64_t serial = 0;
    WordCache cache;
  };
  thread_local Owned owned;
  if (owned.serial != serial || owned.cache.size() > kCachedWordsPerThread) {
    owned.cache = WordCache();
    owned.serial = serial;
  }
  return owned.cache;
}

}  // namespace
}  // namespace tokenizer_internal

using namespace tokenizer_internal;

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  std::filesystem::path json_path = dir / "tokenizer.json";
  std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(json_path)) fail("{}: not found (is {} a tokenizer folder?)", json_path.string(), dir.string());
  nlohmann::json document = read_json(json_path);
  nlohmann::json config;
  if (std::filesystem::exists(config_path)) config = read_json(config_path);
  Tokenizer tokenizer = from_json(document, config, json_path.string());
  // Newer transformers save the template beside the config instead of inside it.
  std::filesystem::path template_path = dir / "chat_template.jinja";
  if (tokenizer.state_->chat_template.empty() && std::filesystem::exists(template_path)) {
    std::ifstream in(template_path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    tokenizer.state_->chat_template = text.str();
  }
  return tokenizer;
}

Tokenizer Tokenizer::from_json(const nlohmann::json& document, const nlohmann::json& config,
                               const std::string& origin) {
  try {
    if (!document.is_object()) fail("expected a JSON object");
    check_normalizer(document.value("normalizer", nlohmann::json()), "normalizer");
    check_decoder(document.value("decoder", nlohmann::json()));
    check_post_processor(document.value("post_processor", nlohmann::json()));
    PreTokenizer pre_tokenizer = PreTokenizer::from_json(document.value("pre_tokenizer", nlohmann::json()));
    if (!pre_tokenizer.is_byte_level())
      fail("pre_tokenizer: must end with ByteLevel (only byte-level BPE is supported)");
    BpeModel bpe = BpeModel::from_json(required_field(document, "model", ""));
    std::vector<AddedToken> added = read_added_tokens(document);

    Tokenizer tokenizer;
    tokenizer.state_.reset(new TokenizerState{std::move(bpe), std::move(pre_tokenizer),
                                              AddedTokenMatcher(std::move(added)), {}, {}, {}, {}, {}, {}, false, false, 0});
    TokenizerState& state = *tokenizer.state_;
    state.serial = next_tokenizer_serial++;
    std::size_t size = state.bpe.vocab_size();
    for (const AddedToken& token : state.added.tokens()) size = std::max<std::size_t>(size, token.id + 1);
    state.id_bytes.resize(size);
    state.id_kind.assign(size, kNoToken);
    for (std::size_t id = 0; id < state.bpe.vocab_size(); ++id) {
      if (const std::string* token = state.bpe.token(static_cast<std::int32_t>(id))) {
        state.id_bytes[id] = token_bytes(*token);
        state.id_kind[id] = kModelToken;
      }
    }
    for (const AddedToken& token : state.added.tokens()) {
      state.id_bytes[token.id] = token_bytes(token.content);
      state.id_kind[token.id] = token.special ? kSpecialToken : kAddedToken;
      state.added_ids.emplace(token.content, token.id);
    }
    if (!config.is_null()) {
      if (!config.is_object()) fail("tokenizer_config.json: expected a JSON object");
      try {
        state.bos_token = special_token_string(config, "bos_token");
        state.eos_token = special_token_string(config, "eos_token");
        state.add_bos_token = bool_field(config, "add_bos_token", "", false);
        state.add_eos_token = bool_field(config, "add_eos_token", "", false);
        state.chat_template = chat_template_string(config);
      } catch (const Error& e) {
        fail("tokenizer_config.json: {}", e.what());
      }
    }
    return tokenizer;
  } catch (const Error& e) {
    fail("{}: {}", origin, e.what());
  }
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::size_t invalid = find_invalid_utf8(text);
  if (invalid != std::string_view::npos)
    fail("text to encode is not valid UTF-8: bad byte 0x{:02X} at byte offset {}",
         static_cast<unsigned char>(text[invalid]), invalid);
  const TokenizerState& state = *state_;
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos) ids.push_back(bos_id());
  std::vector<Segment> segments;
  state.added.split(text, segments);
  BpeScratch scratch;
  WordCache& cache = thread_cache(state.serial);
  std::hash<std::string_view> hasher;
  std::function<void(std::string_view)> encode_piece = [&](std::string_view piece) {
    if (piece.size() > kCachedWordLimit) {
      state.bpe.encode_piece(piece, ids, scratch);
      return;
    }
    std::size_t hash = hasher(piece);
    std::uint32_t count = 0;
    if (const std::int32_t* cached = cache.find(piece, hash, count)) {
      ids.insert(ids.end(), cached, cached + count);
      return;
    }
    std::size_t first = ids.size();
    state.bpe.encode_piece(piece, ids, scratch);
    cache.insert(piece, hash, ids.data() + first, static_cast<std::uint32_t>(ids.size() - first));
  };
  for (const Segment& segment : segments) {
    if (segment.id >= 0)
      ids.push_back(segment.id);
    else
      state.pre_tokenizer.for_each_piece_of_valid_utf8(text.substr(segment.begin, segment.end - segment.begin), encode_piece);
  }
  return ids;
}

std::vector<std::int32_t> Tokenizer::encode_with_special_tokens(std::string_view text) const {
  std::vector<std::int32_t> ids = encode(text, add_bos_token());
  if (add_eos_token()) ids.push_back(eos_id());
  return ids;
}

bool Tokenizer::append_token_bytes(std::int32_t id, bool skip_special, std::string& bytes) const {
  const TokenizerState& state = *state_;
  if (id < 0 || static_cast<std::size_t>(id) >= state.id_kind.size() || state.id_kind[id] == kNoToken)
    fail("token id {} is not in the vocabulary ({} ids)", id, state.id_kind.size());
  if (skip_special && state.id_kind[id] == kSpecialToken) return false;
  bytes += state.id_bytes[id];
  return true;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (std::int32_t id : ids) append_token_bytes(id, skip_special, bytes);
  std::string text;
  text.reserve(bytes.size());
  append_utf8_lossy(bytes, text);
  return text;
}

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string Tokenizer::StreamDecoder::push(std::int32_t id) {
  std::string text;
  if (!tokenizer_->append_token_bytes(id, skip_special_, pending_)) return text;
  std::size_t consumed = append_utf8_complete(pending_, text);
  pending_.erase(0, consumed);
  return text;
}

std::string Tokenizer::StreamDecoder::finish() {
  std::string text;
  append_utf8_lossy(pending_, text);
  pending_.clear();
  return text;
}

std::size_t Tokenizer::vocab_size() const { return state_->id_kind.size(); }

std::optional<std::string> Tokenizer::id_to_token(std::int32_t id) const {
  for (const AddedToken& token : state_->added.tokens())
    if (token.id == id) return token.content;
  if (const std::string* token = state_->bpe.token(id)) return *token;
  return std::nullopt;
}

std::optional<std::int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = state_->added_ids.find(std::string(token));
  if (it != state_->added_ids.end()) return it->second;
  return state_->bpe.token_id(token);
}

bool Tokenizer::is_special(std::int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < state_->id_kind.size() && state_->id_kind[id] == kSpecialToken;
}

const std::string& Tokenizer::bos_token() const { return state_->bos_token; }
const std::string& Tokenizer::eos_token() const { return state_->eos_token; }
bool Tokenizer::add_bos_token() const { return state_->add_bos_token; }
bool Tokenizer::add_eos_token() const { return state_->add_eos_token; }
const std::string& Tokenizer::chat_template() const { return state_->chat_template; }

std::int32_t Tokenizer::bos_id() const {
  if (state_->bos_token.empty()) fail("the tokenizer has no bos_token (tokenizer_config.json does not set one)");
  std::optional<std::int32_t> id = token_to_id(state_->bos_token);
  if (!id) fail("bos_token \"{}\" is not in the vocabulary", state_->bos_token);
  return *id;
}

std::int32_t Tokenizer::eos_id() const {
  if (state_->eos_token.empty()) fail("the tokenizer has no eos_token (tokenizer_config.json does not set one)");
  std::optional<std::int32_t> id = token_to_id(state_->eos_token);
  if (!id) fail("eos_token \"{}\" is not in the vocabulary", state_->eos_token);
  return *id;
}

}  // namespace dsv3
