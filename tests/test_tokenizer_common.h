#pragma once
// Shared by the tokenizer tests: the real DeepSeek-V3 tokenizer (loaded once) and the fixture.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "tokenizer/tokenizer.h"

namespace dsv3::testing {

inline std::filesystem::path deepseek_tokenizer_dir() {
  return std::filesystem::path(DSV3_DATA_DIR) / "tokenizer" / "deepseek-v3";
}

// Fails the calling test (never skips) when scripts/setup.sh has not installed the tokenizer.
inline const Tokenizer& deepseek_tokenizer() {
  static const Tokenizer* tokenizer = [] {
    std::filesystem::path dir = deepseek_tokenizer_dir();
    if (!std::filesystem::exists(dir / "tokenizer.json"))
      throw std::runtime_error(dir.string() + "/tokenizer.json is missing: run scripts/setup.sh first");
    return new Tokenizer(Tokenizer::load(dir));
  }();
  return *tokenizer;
}

inline const nlohmann::json& tokenizer_fixture() {
  static const nlohmann::json fixture = [] {
    std::filesystem::path path = std::filesystem::path(DSV3_SHARED_DIR) / "fixtures" / "tokenizer-ref.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path.string() + " is missing (the shared fixtures folder)");
    return nlohmann::json::parse(in);
  }();
  return fixture;
}

inline bool is_valid_utf8(const std::string& text) {
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < text.size()) {
    unsigned char b = byte(i);
    std::size_t length = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (length == 0 || i + length > text.size()) return false;
    std::uint32_t c = length == 1 ? b : length == 2 ? (b & 0x1F) : length == 3 ? (b & 0x0F) : (b & 0x07);
    for (std::size_t k = 1; k < length; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return false;
      c = (c << 6) | (byte(i + k) & 0x3F);
    }
    static constexpr std::uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < kMinimum[length] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

}  // namespace dsv3::testing
