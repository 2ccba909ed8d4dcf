#pragma once
// Internal to src/tokenizer: the regular expressions of tokenizer.json, run with PCRE2 (UTF, UCP,
// JIT). Hugging Face runs them with Oniguruma, so patterns are first translated where the two
// dialects disagree (see translate_oniguruma_pattern).
#include <cstddef>
#include <string>
#include <string_view>

namespace dsv3::tokenizer_internal {

// Rewrites the escapes whose meaning differs between Oniguruma (Ruby syntax, as `tokenizers`
// uses it) and PCRE2: `\s`/`\S` (Oniguruma: the Unicode White_Space property; PCRE2 with UCP also
// matches U+180E) and `\h`/`\H` (Oniguruma: a hex digit; PCRE2: horizontal space).
std::string translate_oniguruma_pattern(std::string_view pattern);

class Regex {
 public:
  // `pattern` is PCRE2 syntax; `where` names it in errors ("pre_tokenizer.pretokenizers[0]").
  Regex(const std::string& pattern, const std::string& where);
  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();

  // Finds the leftmost match in subject[from, end); returns false when there is none. `subject`
  // must be valid UTF-8 (it is not checked again) and `from` on a character boundary.
  bool find(std::string_view subject, std::size_t from, std::size_t& match_begin,
            std::size_t& match_end) const;

  // Calls on_match(begin, end) for each non-overlapping match, leftmost first, stepping one
  // character past an empty match as Oniguruma's find_iter does.
  template <typename OnMatch>
  void for_each_match(std::string_view subject, OnMatch&& on_match) const {
    std::size_t from = 0, begin = 0, end = 0;
    while (from <= subject.size() && find(subject, from, begin, end)) {
      on_match(begin, end);
      if (end > begin) {
        from = end;
      } else {
        if (end >= subject.size()) break;
        from = end + 1;
        while (from < subject.size() && (static_cast<unsigned char>(subject[from]) & 0xC0) == 0x80) ++from;
      }
    }
  }

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::string where_;
  void* code_ = nullptr;  // pcre2_code*, kept opaque so pcre2.h stays out of headers
};

}  // namespace dsv3::tokenizer_internal
