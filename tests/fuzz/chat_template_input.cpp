#include "chat_template_input.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::fuzz {
namespace {

using nlohmann::ordered_json;

std::filesystem::path deepseek_dir() { return std::filesystem::path(DSV3_DATA_DIR) / "tokenizer" / "deepseek-v3"; }

const nlohmann::json& deepseek_config() {
  static const nlohmann::json config = [] {
    std::ifstream in(deepseek_dir() / "tokenizer_config.json");
    if (!in) throw std::runtime_error((deepseek_dir() / "tokenizer_config.json").string() + " is missing: run scripts/setup.sh");
    return nlohmann::json::parse(in);
  }();
  return config;
}

const ordered_json& fixed_context() {
  static const ordered_json context = ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are helpful."},
      {"role": "user", "content": "Weather in Zürich? 🌍"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 3}}}]},
      {"role": "tool", "content": "12C"},
      {"role": "assistant", "content": "<think>ok</think>It is 12C."},
      {"role": "user", "content": [{"type": "text", "text": "thanks"}]}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}],
    "documents": null, "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
    "n": 9223372036854775807, "m": -9223372036854775808, "f": 1.5, "s": "text", "xs": [3, 1, 2]})");
  return context;
}

const Tokenizer& deepseek_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::load(deepseek_dir());
  return tokenizer;
}

bool valid_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t length = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
    if (length == 0 || i + length > text.size()) return false;
    std::uint32_t code = length == 1 ? lead : lead & (0x7F >> length);
    for (std::size_t k = 1; k < length; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      code = (code << 6) | (c & 0x3F);
    }
    static const std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < smallest[length] || code > 0x10FFFF || (code >= 0xD800 && code < 0xE000)) return false;
    i += length;
  }
  return true;
}

}  // namespace

const std::string& deepseek_chat_template() {
  static const std::string source = deepseek_config().at("chat_template").get<std::string>();
  return source;
}

bool chat_template_one_input(const std::uint8_t* data, std::size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  try {
    ChatTemplate parsed(source);
    parsed.render(fixed_context());
    return true;
  } catch (const Error& e) {
    // Every template error names where it happened.
    if (std::string(e.what()).find("chat template line ") != 0) throw std::logic_error(std::string("error without a position: ") + e.what());
    return false;
  }
}

bool chat_messages_one_input(const std::uint8_t* data, std::size_t size) {
  static const ChatTemplate deepseek(deepseek_chat_template());
  ordered_json input = ordered_json::parse(data, data + size, nullptr, false);
  if (input.is_discarded()) return false;
  ordered_json messages = input, tools = nullptr;
  bool add_generation_prompt = size % 2 == 0;
  if (input.is_object()) {
    messages = input.contains("messages") ? input["messages"] : ordered_json::array();
    if (input.contains("tools")) tools = input["tools"];
    if (input.contains("add_generation_prompt")) add_generation_prompt = input["add_generation_prompt"].is_boolean() &&
                                                                         input["add_generation_prompt"].get<bool>();
  }
  try {
    deepseek.render(chat_template_context(deepseek_config(), messages, add_generation_prompt, tools));
    return true;
  } catch (const Error& e) {
    if (std::string(e.what()).find("chat template") == std::string::npos)
      throw std::logic_error(std::string("error without a position: ") + e.what());
    return false;
  }
}

bool tokenizer_one_input(const std::uint8_t* data, std::size_t size) {
  const Tokenizer& tokenizer = deepseek_tokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  bool encoded = false;
  try {
    const std::vector<std::int32_t> ids = tokenizer.encode(text, size % 3 == 0);
    encoded = true;
    const std::vector<std::int32_t> plain(ids.begin() + (size % 3 == 0 ? 1 : 0), ids.end());
    if (tokenizer.decode(plain) != text) throw std::logic_error("encode/decode does not round-trip valid UTF-8");
  } catch (const Error&) {
    if (valid_utf8(text)) throw std::logic_error("valid UTF-8 was rejected by encode");
  }
  if (encoded && !valid_utf8(text)) throw std::logic_error("invalid UTF-8 was accepted by encode");

  // The same bytes as ids (folded into the vocabulary, with some out of range to test rejection).
  std::vector<std::int32_t> ids;
  const auto vocab = static_cast<std::uint32_t>(tokenizer.vocab_size());
  for (std::size_t i = 0; i + 4 <= size; i += 4) {
    std::uint32_t raw = 0;
    for (int k = 3; k >= 0; --k) raw = (raw << 8) | data[i + static_cast<std::size_t>(k)];
    ids.push_back(static_cast<std::int32_t>(raw % (vocab + 2)));
  }
  for (const bool skip_special : {false, true}) {
    std::string whole;
    bool known = true;
    try {
      whole = tokenizer.decode(ids, skip_special);
    } catch (const Error&) {
      known = false;
    }
    Tokenizer::StreamDecoder stream(tokenizer, skip_special);
    std::string pieces;
    try {
      for (const std::int32_t id : ids) {
        const std::string piece = stream.push(id);
        if (!valid_utf8(piece)) throw std::logic_error("the stream decoder returned broken UTF-8");
        pieces += piece;
      }
      pieces += stream.finish();
    } catch (const Error&) {
      if (known) throw std::logic_error("the stream decoder rejected ids that decode() accepts");
      continue;
    }
    if (!known) throw std::logic_error("the stream decoder accepted ids that decode() rejects");
    if (pieces != whole) throw std::logic_error("stream pieces differ from decode()");
  }
  return encoded;
}

}  // namespace dsv3::fuzz
