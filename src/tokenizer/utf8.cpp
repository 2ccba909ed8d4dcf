#include "tokenizer/utf8.h"

#include <cstdint>
#include <cstring>

namespace dsv3::tokenizer_internal {
namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }
}  // namespace

Utf8Step utf8_step(const unsigned char* bytes, std::size_t size) {
  unsigned char lead = bytes[0];
  if (lead < 0x80) return {Utf8Step::kValid, 1};
  std::size_t length = 0;
  // The second byte has a narrower range after some lead bytes: that is what rules out overlong
  // forms, surrogates and code points above U+10FFFF.
  unsigned char second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;
    if (lead == 0xED) second_high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;
  } else {
    return {Utf8Step::kInvalid, 1};
  }
  for (std::size_t i = 1; i < length; ++i) {
    if (i >= size) return {Utf8Step::kIncomplete, i};
    unsigned char b = bytes[i];
    bool ok = i == 1 ? (b >= second_low && b <= second_high) : is_continuation(b);
    if (!ok) return {Utf8Step::kInvalid, i};
  }
  return {Utf8Step::kValid, length};
}

std::size_t find_invalid_utf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t size = text.size(), i = 0;
  while (i < size) {
    // Most text is ASCII: skip it eight bytes at a time.
    while (i + 8 <= size) {
      std::uint64_t word;
      std::memcpy(&word, bytes + i, 8);
      if (word & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= size) break;
    if (bytes[i] < 0x80) {
      ++i;
      continue;
    }
    Utf8Step step = utf8_step(bytes + i, size - i);
    if (step.kind != Utf8Step::kValid) return i;
    i += step.length;
  }
  return std::string_view::npos;
}

std::size_t append_utf8_complete(std::string_view text, std::string& out) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t size = text.size(), i = 0, run_start = 0;
  while (i < size) {
    if (bytes[i] < 0x80) {
      ++i;
      continue;
    }
    Utf8Step step = utf8_step(bytes + i, size - i);
    if (step.kind == Utf8Step::kValid) {
      i += step.length;
      continue;
    }
    out.append(text.substr(run_start, i - run_start));
    if (step.kind == Utf8Step::kIncomplete) return i;
    out += kReplacement;
    i += step.length;
    run_start = i;
  }
  out.append(text.substr(run_start, size - run_start));
  return size;
}

void append_utf8_lossy(std::string_view bytes, std::string& out) {
  std::size_t consumed = append_utf8_complete(bytes, out);
  if (consumed < bytes.size()) out += kReplacement;
}

bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

char32_t decode_utf8(std::string_view text, std::size_t at, std::size_t& length) {
  auto b = [&](std::size_t i) { return static_cast<unsigned char>(text[at + i]); };
  unsigned char lead = b(0);
  if (lead < 0x80) {
    length = 1;
    return lead;
  }
  if (lead < 0xE0) {
    length = 2;
    return ((lead & 0x1F) << 6) | (b(1) & 0x3F);
  }
  if (lead < 0xF0) {
    length = 3;
    return ((lead & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  }
  length = 4;
  return ((lead & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

char32_t decode_utf8_before(std::string_view text, std::size_t at, std::size_t& length) {
  std::size_t start = at - 1;
  while (start > 0 && is_continuation(static_cast<unsigned char>(text[start]))) --start;
  return decode_utf8(text, start, length);
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

}  // namespace dsv3::tokenizer_internal
