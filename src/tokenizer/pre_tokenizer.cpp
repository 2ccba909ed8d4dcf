#include "tokenizer/pre_tokenizer.h"

#include <cctype>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace dsv3 {

using tokenizer_internal::Regex;

namespace {

// GPT-2's pre-tokenizer regex, which `ByteLevel` applies when its use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// What a Split does with the matches of its pattern (Hugging Face's SplitDelimiterBehavior).
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  fail("{}: unknown Split behavior '{}' (expected Removed, Isolated, MergedWithPrevious, "
       "MergedWithNext or Contiguous)", where, name);
}

// A literal `String` pattern, escaped for PCRE2.
std::string escape_literal(const std::string& text) {
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

struct PreTokenizer::Step {
  enum class Kind { kSplit, kByteLevel } kind;
  std::optional<Regex> regex;  // Split: its pattern; ByteLevel: GPT-2's, when use_regex
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

const std::array<char32_t, 256>& bytes_to_unicode() {
  // Printable Latin-1 bytes keep their code point; the others (controls, space, 0x7F-0xA0, 0xAD)
  // are moved, in byte order, to U+0100 and up, so every byte has a visible, non-space character.
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

std::string byte_level_encode(std::string_view bytes) {
  const auto& table = bytes_to_unicode();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) tokenizer_internal::append_utf8(table[static_cast<unsigned char>(c)], out);
  return out;
}

std::optional<std::string> byte_level_decode(std::string_view text) {
  static const std::array<int, 324> char_to_byte = [] {
    std::array<int, 324> t;
    t.fill(-1);
    const auto& table = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) t[table[b]] = b;
    return t;
  }();
  if (tokenizer_internal::find_invalid_utf8(text) != std::string_view::npos) return std::nullopt;
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = 0;
    char32_t c = tokenizer_internal::decode_utf8(text, i, length);
    if (c >= char_to_byte.size() || char_to_byte[c] < 0) return std::nullopt;
    out += static_cast<char>(char_to_byte[c]);
    i += length;
  }
  return out;
}

PreTokenizer::PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

PreTokenizer PreTokenizer::from_json(const nlohmann::json& config) {
  using namespace tokenizer_internal;
  PreTokenizer result;
  if (config.is_null()) return result;
  auto add_step = [&](const nlohmann::json& step_config, const std::string& where) {
    std::string type = string_field(step_config, "type", where);
    auto step = std::make_unique<Step>();
    if (type == "Split") {
      step->kind = Step::Kind::kSplit;
      const nlohmann::json& pattern = required_field(step_config, "pattern", where);
      std::string pattern_where = field_path(where, "pattern");
      std::string source;
      if (pattern.contains("Regex"))
        source = translate_oniguruma_pattern(string_field(pattern, "Regex", pattern_where));
      else if (pattern.contains("String"))
        source = escape_literal(string_field(pattern, "String", pattern_where));
      else
        fail("{}: expected {{\"Regex\": ...}} or {{\"String\": ...}}", pattern_where);
      step->regex.emplace(source, pattern_where);
      step->behavior = parse_behavior(string_field(step_config, "behavior", where), field_path(where, "behavior"));
      step->invert = bool_field(step_config, "invert", where, false);
    } else if (type == "ByteLevel") {
      step->kind = Step::Kind::kByteLevel;
      step->add_prefix_space = bool_field(step_config, "add_prefix_space", where, true);
      if (bool_field(step_config, "use_regex", where, true))
        step->regex.emplace(translate_oniguruma_pattern(kGpt2Pattern), where + " (GPT-2 regex)");
    } else {
      fail("{}: pre-tokenizer type '{}' is not supported (supported: Sequence, Split, ByteLevel)", where, type);
    }
    if (!result.steps_.empty() && result.steps_.back()->kind == Step::Kind::kByteLevel)
      fail("{}: ByteLevel must be the last pre-tokenizer (later steps would see byte-level text)", where);
    result.steps_.push_back(std::move(step));
  };
  const std::string where = "pre_tokenizer";
  if (string_field(config, "type", where) == "Sequence") {
    const nlohmann::json& steps = required_field(config, "pretokenizers", where);
    if (!steps.is_array()) fail("{}.pretokenizers: expected an array", where);
    for (std::size_t i = 0; i < steps.size(); ++i)
      add_step(steps[i], fmt::format("{}.pretokenizers[{}]", where, i));
  } else {
    add_step(config, where);
  }
  return result;
}

PreTokenizer PreTokenizer::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  try {
    return from_json(document.value("pre_tokenizer", nlohmann::json()));
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

bool PreTokenizer::is_byte_level() const {
  return !steps_.empty() && steps_.back()->kind == Step::Kind::kByteLevel;
}

namespace {

using Visit = std::function<void(std::string_view)>;
using Steps = std::vector<std::unique_ptr<PreTokenizer::Step>>;

void run_steps(const Steps& steps, std::size_t index, std::string_view piece, const Visit& visit);

// Cuts `piece` at the matches of a Split's pattern and passes the parts on, grouped as its
// behavior says. Hugging Face first lists (range, is_match) segments, folds them by behavior and
// drops empty parts last; this does the same in one pass without building the list.
void run_split(const Steps& steps, std::size_t index, std::string_view piece, const Visit& visit) {
  const PreTokenizer::Step& step = *steps[index];
  auto emit = [&](std::size_t begin, std::size_t end) {
    if (end > begin) run_steps(steps, index + 1, piece.substr(begin, end - begin), visit);
  };
  bool has_pending = false, pending_is_match = false, previous_is_match = false;
  std::size_t pending_begin = 0, pending_end = 0;
  auto segment = [&](std::size_t begin, std::size_t end, bool is_match) {
    if (step.invert) is_match = !is_match;
    switch (step.behavior) {
      case Behavior::kIsolated:
        emit(begin, end);
        break;
      case Behavior::kRemoved:
        if (!is_match) emit(begin, end);
        break;
      case Behavior::kMergedWithPrevious:
      case Behavior::kContiguous: {
        bool joins = step.behavior == Behavior::kContiguous ? is_match == previous_is_match
                                                             : is_match && !previous_is_match;
        if (joins && has_pending) {
          pending_end = end;
        } else {
          if (has_pending) emit(pending_begin, pending_end);
          has_pending = true;
          pending_begin = begin;
          pending_end = end;
        }
        break;
      }
      case Behavior::kMergedWithNext:
        // A match joins the part right after it, unless that part is a match too.
        if (has_pending && pending_is_match && !is_match) {
          emit(pending_begin, end);
          has_pending = false;
        } else {
          if (has_pending) emit(pending_begin, pending_end);
          has_pending = true;
          pending_is_match = is_match;
          pending_begin = begin;
          pending_end = end;
        }
        break;
    }
    previous_is_match = is_match;
  };
  std::size_t previous_end = 0;
  step.regex->for_each_match(piece, [&](std::size_t begin, std::size_t end) {
    if (begin != previous_end) segment(previous_end, begin, false);
    segment(begin, end, true);
    previous_end = end;
  });
  if (previous_end != piece.size()) segment(previous_end, piece.size(), false);
  if (has_pending) emit(pending_begin, pending_end);
}

void run_byte_level(const Steps& steps, std::size_t index, std::string_view piece, const Visit& visit) {
  const PreTokenizer::Step& step = *steps[index];
  std::string prefixed;
  if (step.add_prefix_space && (piece.empty() || piece.front() != ' ')) {
    prefixed.reserve(piece.size() + 1);
    prefixed += ' ';
    prefixed += piece;
    piece = prefixed;
  }
  if (!step.regex) {
    visit(piece);
    return;
  }
  // GPT-2's regex leaves no gaps in practice, but a gap is kept as a piece as Isolated would.
  std::size_t previous_end = 0;
  step.regex->for_each_match(piece, [&](std::size_t begin, std::size_t end) {
    if (begin > previous_end) visit(piece.substr(previous_end, begin - previous_end));
    if (end > begin) visit(piece.substr(begin, end - begin));
    previous_end = end;
  });
  if (previous_end < piece.size()) visit(piece.substr(previous_end));
}

void run_steps(const Steps& steps, std::size_t index, std::string_view piece, const Visit& visit) {
  if (index == steps.size()) {
    visit(piece);
  } else if (steps[index]->kind == PreTokenizer::Step::Kind::kSplit) {
    run_split(steps, index, piece, visit);
  } else {
    run_byte_level(steps, index, piece, visit);
  }
}

}  // namespace

void PreTokenizer::for_each_piece(std::string_view text, const std::function<void(std::string_view)>& visit) const {
  std::size_t invalid = tokenizer_internal::find_invalid_utf8(text);
  if (invalid != std::string_view::npos)
    fail("text is not valid UTF-8: bad byte 0x{:02X} at byte offset {}", static_cast<unsigned char>(text[invalid]), invalid);
  for_each_piece_of_valid_utf8(text, visit);
}

void PreTokenizer::for_each_piece_of_valid_utf8(std::string_view text,
                                                const std::function<void(std::string_view)>& visit) const {
  if (!text.empty()) run_steps(steps_, 0, text, visit);
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string> pieces;
  bool byte_level = is_byte_level();
  for_each_piece(text, [&](std::string_view piece) {
    pieces.push_back(byte_level ? byte_level_encode(piece) : std::string(piece));
  });
  return pieces;
}

}  // namespace dsv3
