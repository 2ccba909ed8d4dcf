// The chat-template and tokenizer fuzz bodies, run deterministically: over each seed corpus
// (tests/fuzz/corpus/{chat_template,chat_messages,tokenizer}, where inputs the fuzzers found are
// kept) and a fixed-seed stream of mutations of them. The only accepted outcomes are success or
// dsv3::Error; anything else fails with the input that caused it.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "chat_template_input.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

using Body = std::function<bool(const std::uint8_t*, std::size_t)>;

std::vector<std::pair<std::string, std::string>> read_corpus(const std::string& name) {
  const fs::path dir = fs::path(DSV3_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / name;
  std::vector<fs::path> files(fs::directory_iterator(dir), fs::directory_iterator{});
  std::sort(files.begin(), files.end());  // directory order is not deterministic
  std::vector<std::pair<std::string, std::string>> seeds;
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    seeds.emplace_back(path.filename().string(),
                       std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  }
  return seeds;
}

std::string printable(const std::string& bytes) {
  std::string text;
  for (unsigned char c : bytes.substr(0, 600))
    text += (c >= 32 && c < 127) || c == '\n' ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
  return text;
}

// Runs one input; false (after reporting) when anything but dsv3::Error escaped. An input that
// runs for 30 s is a finding too: hostile input must be refused, never hang. (The bound is a hang
// guard that holds on a loaded host and under the sanitizers; the libFuzzer targets' -timeout is
// where slow inputs are hunted.)
bool run_one(const Body& body, const std::string& input, const std::string& label, bool* accepted) {
  try {
    const auto started = std::chrono::steady_clock::now();
    *accepted = body(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (seconds > 30.0) ADD_FAILURE() << label << ": took " << seconds << " s\ninput: " << printable(input);
    return true;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": escaped with " << e.what() << "\ninput: " << printable(input);
  } catch (...) {
    ADD_FAILURE() << label << ": escaped with a non-standard exception\ninput: " << printable(input);
  }
  return false;
}

// Mutates with the byte-level moves of libFuzzer plus splices of dictionary tokens and of other
// seeds, so the deterministic run reaches the same parser branches the fuzzer does.
void mutate(std::string& text, const std::vector<std::pair<std::string, std::string>>& seeds,
            const std::vector<std::string>& dictionary, std::mt19937_64& random) {
  auto below = [&](std::size_t bound) {
    return bound == 0 ? 0 : std::uniform_int_distribution<std::size_t>(0, bound - 1)(random);
  };
  const std::size_t steps = 1 + below(4);
  for (std::size_t step = 0; step < steps; ++step) {
    const std::size_t at = below(text.size() + 1);
    switch (below(6)) {
      case 0:
        if (!text.empty()) text[at % text.size()] ^= static_cast<char>(1u << below(8));
        break;
      case 1: text.insert(at, 1, static_cast<char>(below(256))); break;
      case 2:
        if (!text.empty()) text.erase(at % text.size(), 1 + below(12));
        break;
      case 3: text.insert(at, dictionary[below(dictionary.size())]); break;
      case 4: {
        const std::string& other = seeds[below(seeds.size())].second;
        text.insert(at, other.substr(below(other.size() + 1), 1 + below(80)));
        break;
      }
      default:
        if (!text.empty()) text.insert(at, text.substr(below(text.size()), 1 + below(40)));
    }
  }
}

struct Outcome {
  int accepted = 0;
  int rejected = 0;
};

Outcome run_corpus_and_mutations(const std::string& corpus, const Body& body, const std::vector<std::string>& dictionary,
                                 int iterations, std::uint64_t seed,
                                 std::vector<std::pair<std::string, std::string>> extra_seeds = {}) {
  Outcome outcome;
  auto seeds = read_corpus(corpus);
  EXPECT_GE(seeds.size(), 5u) << corpus;
  for (auto& extra : extra_seeds) seeds.push_back(std::move(extra));
  for (const auto& [name, input] : seeds) {
    bool accepted = false;
    if (!run_one(body, input, corpus + "/" + name, &accepted)) return outcome;
    ++(accepted ? outcome.accepted : outcome.rejected);
  }
  std::mt19937_64 random(seed);
  for (int i = 0; i < iterations; ++i) {
    std::string input = seeds[random() % seeds.size()].second;
    mutate(input, seeds, dictionary, random);
    bool accepted = false;
    if (!run_one(body, input, corpus + " mutation " + std::to_string(i), &accepted)) break;
    ++(accepted ? outcome.accepted : outcome.rejected);
  }
  return outcome;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(Fuzz, ChatTemplateSeedCorpusAndMutations) {
  const auto started = std::chrono::steady_clock::now();
  const std::vector<std::string> dictionary = {
      "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", " if ", " for ", " in ", " endfor ", " endif ", " else ",
      " set ", " macro ", " endmacro ", "namespace(", "loop.", "messages", "tools", "|tojson", "|join", "|length",
      "(", ")", "[", "]", "{", "}", ",", ".", ":", "'", "\"", "~", "+", "-", "*", "**", "//", "%", "not ", " and ",
      " is ", "defined", "none", "range(", "9223372036854775807", "-1", "0", "1e308", "\\u", "\xff", "\n"};
  const Outcome outcome =
      run_corpus_and_mutations("chat_template", fuzz::chat_template_one_input, dictionary, 6000, 0x7e3a1a7e,
                               {{"deepseek-v3 tokenizer_config.json", fuzz::deepseek_chat_template()}});
  std::printf("chat_template: %d rendered, %d rejected with dsv3::Error, %.1f s\n", outcome.accepted, outcome.rejected,
              seconds_since(started));
  EXPECT_GT(outcome.accepted, 100);
  EXPECT_GT(outcome.rejected, 100);
}

TEST(Fuzz, ChatMessagesThroughDeepSeekTemplateSeedCorpusAndMutations) {
  const auto started = std::chrono::steady_clock::now();
  const std::vector<std::string> dictionary = {
      "\"role\"", "\"content\"", "\"user\"", "\"assistant\"", "\"system\"", "\"tool\"", "\"tool_calls\"",
      "\"function\"", "\"arguments\"", "\"name\"", "\"type\"", "null", "true", "[]", "{}", "[", "]", "{", "}", ",",
      ":", "\"", "\"<｜User｜>\"", "\"{{ x }}\"", "\"\\u0000\"", "1e400", "-0", "9223372036854775808"};
  const Outcome outcome = run_corpus_and_mutations("chat_messages", fuzz::chat_messages_one_input, dictionary, 4000,
                                                   0x3e55a9e5);
  std::printf("chat_messages: %d rendered, %d rejected, %.1f s\n", outcome.accepted, outcome.rejected,
              seconds_since(started));
  EXPECT_GT(outcome.accepted, 50);
  EXPECT_GT(outcome.rejected, 50);
}

TEST(Fuzz, TokenizerEncoderAndStreamDecoderSeedCorpusAndMutations) {
  // Loads the tokenizer (half a second, more on a busy machine) before the per-input clock runs.
  const std::string warm_up = "warm up";
  fuzz::tokenizer_one_input(reinterpret_cast<const std::uint8_t*>(warm_up.data()), warm_up.size());
  const auto started = std::chrono::steady_clock::now();
  const std::vector<std::string> dictionary = {"<｜User｜>", "<｜begin▁of▁sentence｜>", "\xe4\xbd", "\xa0", "\xf0\x9f",
                                               "\xc3", " ", "\n\n", "'s", "123", "\xff\xff\xff\x7f", "\0\0\0\0"};
  const Outcome outcome = run_corpus_and_mutations("tokenizer", fuzz::tokenizer_one_input, dictionary, 3000, 0x70c3e1);
  std::printf("tokenizer: %d encoded, %d rejected, %.1f s\n", outcome.accepted, outcome.rejected, seconds_since(started));
  EXPECT_GT(outcome.accepted, 50);
  EXPECT_GT(outcome.rejected, 50);
}

}  // namespace
}  // namespace dsv3
