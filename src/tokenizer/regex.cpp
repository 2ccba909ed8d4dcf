#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace dsv3::tokenizer_internal {
namespace {

// The Unicode White_Space property, which is what `\s` means to Oniguruma on UTF-8 text.
constexpr std::string_view kWhiteSpaceMembers =
    R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
constexpr std::string_view kHexDigitMembers = "0-9A-Fa-f";

pcre2_code* as_code(void* code) { return static_cast<pcre2_code*>(code); }

// One match data block and JIT stack per thread: Tokenizer is shared between threads, and
// matching must not allocate for every call.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // PCRE2's default JIT stack is 32 KiB on the machine stack; long runs of one class (a page of
    // spaces, a long CJK run) can need more.
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) fail("tokenizer regex: out of memory creating PCRE2 match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch per_thread;
  return per_thread;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

std::string translate_oniguruma_pattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char next = pattern[++i];
      std::string_view members;
      if (next == 's' || next == 'S') members = kWhiteSpaceMembers;
      if (next == 'h' || next == 'H') members = kHexDigitMembers;
      bool negated = next == 'S' || next == 'H';
      if (members.empty() || (in_class && negated)) {
        // A negated class inside a class cannot be spelled out without set operations; PCRE2's
        // own \S differs only on U+180E there.
        out += c;
        out += next;
      } else if (in_class) {
        out += members;
      } else {
        out += negated ? "[^" : "[";
        out += members;
        out += ']';
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) : pattern_(pattern), where_(where) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (!code)
    fail("{}: regex /{}/ does not compile at offset {}: {}", where, pattern, error_offset,
         pcre2_message(error));
  int jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  if (jit != 0) {
    pcre2_code_free(code);
    fail("{}: PCRE2 JIT compilation of /{}/ failed: {}", where, pattern, pcre2_message(jit));
  }
  code_ = code;
}

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)), where_(std::move(other.where_)), code_(other.code_) {
  other.code_ = nullptr;
}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(as_code(code_));
    pattern_ = std::move(other.pattern_);
    where_ = std::move(other.where_);
    code_ = other.code_;
    other.code_ = nullptr;
  }
  return *this;
}

Regex::~Regex() { pcre2_code_free(as_code(code_)); }

bool Regex::find(std::string_view subject, std::size_t from, std::size_t& match_begin,
                 std::size_t& match_end) const {
  MatchScratch& s = scratch();
  int rc = pcre2_jit_match(as_code(code_), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                           subject.size(), from, 0, s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    fail("{}: regex /{}/ failed on a {}-byte text: {}", where_, pattern_, subject.size(),
         pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(s.data);
  match_begin = ovector[0];
  match_end = ovector[1];
  return true;
}

}  // namespace dsv3::tokenizer_internal
