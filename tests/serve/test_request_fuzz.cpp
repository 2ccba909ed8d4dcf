// The request parser's fuzz body run deterministically over its seed corpus
// (tests/fuzz/corpus/serve_request) and a fixed-seed stream of mutations: every input either
// parses or is refused with a 4xx ApiError, within a second.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "request_fuzz_input.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> read_corpus() {
  const fs::path dir = fs::path(DSV3_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / "serve_request";
  std::vector<fs::path> files(fs::directory_iterator(dir), fs::directory_iterator{});
  std::sort(files.begin(), files.end());
  std::vector<std::string> seeds;
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return seeds;
}

void mutate(std::string& input, const std::vector<std::string>& seeds, const std::vector<std::string>& dictionary,
            std::mt19937_64& random) {
  const int steps = 1 + static_cast<int>(random() % 4);
  for (int step = 0; step < steps; ++step) {
    const std::size_t at = input.empty() ? 0 : 1 + random() % input.size();  // keep the route byte mostly
    switch (random() % 6) {
      case 0:  // flip a byte
        if (at < input.size()) input[at] = static_cast<char>(random());
        break;
      case 1:  // insert a dictionary entry
        input.insert(std::min(at, input.size()), dictionary[random() % dictionary.size()]);
        break;
      case 2:  // delete a range
        if (at < input.size()) input.erase(at, 1 + random() % std::min<std::size_t>(16, input.size() - at));
        break;
      case 3: {  // splice in part of another seed
        const std::string& other = seeds[random() % seeds.size()];
        const std::size_t from = random() % other.size();
        input.insert(std::min(at, input.size()), other.substr(from, 1 + random() % 64));
        break;
      }
      case 4:  // replace a number-ish byte with a dictionary number
        input.replace(std::min(at, input.size()), 1, dictionary[random() % 8]);
        break;
      default:  // change the route
        if (!input.empty()) input[0] = "cptdx"[random() % 5];
    }
  }
}

TEST(ServeRequestFuzz, SeedCorpusAndMutations) {
  // Loads the tokenizer before the per-input clock runs.
  const std::string warm_up = "t{\"prompt\":\"x\"}";
  fuzz::serve_request_one_input(reinterpret_cast<const std::uint8_t*>(warm_up.data()), warm_up.size());
  const std::vector<std::string> dictionary = {
      "-1", "0", "1e400", "18446744073709551616", "-9223372036854775809", "3.5", "null", "true",
      "\"", "{", "}", "[", "]", ",", ":", "\"role\"", "\"content\"", "\"messages\"", "\"prompt\"", "\"tools\"",
      "\"tool_calls\"", "\"prefix\":true", "\"suffix\"", "\"stop\"", "\"n\"", "\"logit_bias\"", "\"max_tokens\"",
      "\"assistant\"", "\"tool\"", "\"<｜tool▁calls▁begin｜>\"", "\"{{ raise_exception('x') }}\"", "\"\\ud800\"", "\xff",
      "\"\\u0000\"", "[[[[[[[[", "]]]]]]]]", "129280", "129279"};
  const std::vector<std::string> seeds = read_corpus();
  ASSERT_GE(seeds.size(), 8u);
  int parsed = 0, refused = 0;
  auto run = [&](const std::string& input, const std::string& label) {
    const auto started = std::chrono::steady_clock::now();
    try {
      (fuzz::serve_request_one_input(reinterpret_cast<const std::uint8_t*>(input.data()), input.size()) ? parsed
                                                                                                           : refused)++;
    } catch (const std::exception& e) {
      ADD_FAILURE() << label << ": escaped with " << e.what() << "\ninput: " << input.substr(0, 400);
      return false;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_LT(seconds, 1.0) << label << "\ninput: " << input.substr(0, 400);
    return true;
  };
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const int before = parsed;
    ASSERT_TRUE(run(seeds[i], "seed " + std::to_string(i)));
    EXPECT_EQ(parsed, before + 1) << "every seed is a valid request: " << seeds[i];
  }
  std::mt19937_64 random(0x5e77e);
  // DSV3_FUZZ_ITERATIONS runs longer by hand.
  const char* asked = std::getenv("DSV3_FUZZ_ITERATIONS");
  const int iterations = asked ? std::atoi(asked) : 10000;
  for (int i = 0; i < iterations; ++i) {
    std::string input = seeds[random() % seeds.size()];
    mutate(input, seeds, dictionary, random);
    if (!run(input, "mutation " + std::to_string(i))) break;
  }
  std::printf("serve requests: %d parsed, %d refused with 4xx\n", parsed, refused);
  EXPECT_GT(parsed, 100);
  EXPECT_GT(refused, 100);
}

}  // namespace
}  // namespace dsv3
