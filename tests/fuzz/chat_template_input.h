#pragma once
// The fuzz bodies for chat templates and the tokenizer, shared by the libFuzzer targets
// (fuzz_chat_template, fuzz_chat_messages, fuzz_tokenizer; CMake option DSV3_FUZZ) and their
// deterministic runs in the suite (tests/fuzz/test_chat_template_fuzz.cpp). Each accepts exactly
// two outcomes: success, or dsv3::Error (a clear message naming line and column for templates).
// Anything else escaping, a sanitizer report or a crash is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv3::fuzz {

// `data` as a template source, rendered with a fixed conversation (messages with tool calls,
// tools, a namespace-friendly mix of values). True when it rendered, false on dsv3::Error.
bool chat_template_one_input(const std::uint8_t* data, std::size_t size);

// `data` as JSON: a list of messages (or {"messages": [...], "tools": ...}) rendered through the
// real DeepSeek-V3 template of data/tokenizer/deepseek-v3/tokenizer_config.json. Input that is not
// JSON returns false; rendering returns true or false on dsv3::Error.
bool chat_messages_one_input(const std::uint8_t* data, std::size_t size);

// `data` as text for the DeepSeek-V3 tokenizer: encode (valid UTF-8 must round-trip through
// decode) and, read as little-endian 32-bit ids, the streaming decoder (its pieces must join to
// decode() of the same ids). Throws std::logic_error when one of those properties breaks.
bool tokenizer_one_input(const std::uint8_t* data, std::size_t size);

// The DeepSeek-V3 tokenizer_config.json's chat template (read once).
const std::string& deepseek_chat_template();

}  // namespace dsv3::fuzz
