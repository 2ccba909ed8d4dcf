// `dsv3 generate`, run as a user runs it: the --print-ids contract on the fixture's greedy
// continuation, with and without MTP and for both cache dtypes, and clear errors.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>

#include "support.h"

namespace dsv3 {
namespace {

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string all;  // stdout and stderr
};

CommandResult run(const std::string& arguments) {
  CommandResult result;
  for (const bool with_stderr : {false, true}) {
    const std::string command =
        std::string(DSV3_BINARY) + " generate " + arguments + (with_stderr ? " 2>&1" : " 2>/dev/null");
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return result;
    std::string& target = with_stderr ? result.all : result.out;
    char buffer[4096];
    while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) target.append(buffer, n);
    const int status = ::pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  return result;
}

std::string join(const std::vector<std::int64_t>& ids) {
  std::string text;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) text += ',';
    text += std::to_string(ids[i]);
  }
  return text;
}

// The ids on --print-ids' line (the only output without a tokenizer).
std::vector<std::int64_t> printed_ids(const std::string& out) {
  std::vector<std::int64_t> ids;
  const std::string line = out.substr(0, out.find('\n'));
  for (std::size_t start = 0; start < line.size();) {
    const std::size_t end = std::min(line.find(',', start), line.size());
    ids.push_back(std::stoll(line.substr(start, end - start)));
    start = end + 1;
  }
  return ids;
}

TEST(CliGenerate, GreedyPrintIdsReproducesTheFixtureContinuation) {
  const auto reference = SafetensorsFile::open(test::tiny_model_dir() / "reference.safetensors");
  const auto prompt = test::read_i64(reference->tensors().at("gen_prompt"));
  const auto expected = test::read_i64(reference->tensors().at("gen_tokens"));
  const auto margins = test::read_f32(reference->tensors().at("gen_margin"));
  std::size_t comparable = 0;
  while (comparable < margins.size() && margins[comparable] >= 1e-2f) ++comparable;
  for (const std::string extra : {"", "--mtp 1", "--cache-dtype f32", "--mtp 1 --cache-dtype f32"}) {
    SCOPED_TRACE(extra);
    const auto result = run("--model " + test::tiny_model_dir().string() + " --prompt-ids " + join(prompt) +
                            " --max-tokens 40 --print-ids " + extra);
    ASSERT_EQ(result.exit_code, 0) << result.all;
    const std::vector<std::int64_t> ids = printed_ids(result.out);
    ASSERT_EQ(ids.size(), 40u) << result.out;
    EXPECT_EQ(std::vector(ids.begin(), ids.begin() + comparable),
              std::vector(expected.begin(), expected.begin() + comparable));
    EXPECT_NE(result.all.find("tokens/s"), std::string::npos) << result.all;
  }
}

TEST(CliGenerate, IgnoreEosGoesOnToMaxTokens) {
  // The fixture's weights under a config whose end-of-sequence token is the first one greedy
  // decoding gives: without --ignore-eos the continuation ends there, with it it runs to the limit.
  const std::string prompt = " --prompt-ids 5,6,7 --print-ids";
  const auto first = run("--model " + test::tiny_model_dir().string() + prompt + " --max-tokens 1");
  ASSERT_EQ(first.exit_code, 0) << first.all;
  const std::vector<std::int64_t> token = printed_ids(first.out);
  ASSERT_EQ(token.size(), 1u) << first.out;
  const auto dir = std::filesystem::temp_directory_path() / ("dsv3-ignore-eos-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(test::tiny_model_dir() / "config.json"));
  config["eos_token_id"] = token[0];
  std::ofstream(dir / "config.json") << config.dump();
  std::filesystem::remove(dir / "model.safetensors");
  std::filesystem::create_symlink(test::tiny_model_dir() / "model.safetensors", dir / "model.safetensors");
  const auto stops = run("--model " + dir.string() + prompt + " --max-tokens 6");
  ASSERT_EQ(stops.exit_code, 0) << stops.all;
  EXPECT_EQ(printed_ids(stops.out), token);
  const auto goes_on = run("--model " + dir.string() + prompt + " --max-tokens 6 --ignore-eos");
  ASSERT_EQ(goes_on.exit_code, 0) << goes_on.all;
  const std::vector<std::int64_t> all = printed_ids(goes_on.out);
  ASSERT_EQ(all.size(), 6u) << goes_on.out;
  EXPECT_EQ(all[0], token[0]);
  std::filesystem::remove_all(dir);
}

TEST(CliGenerate, BadArgumentsGiveClearErrors) {
  const std::string model = "--model " + test::tiny_model_dir().string();
  auto no_tokenizer = run(model + " --prompt hello");
  EXPECT_EQ(no_tokenizer.exit_code, 1);
  EXPECT_NE(no_tokenizer.all.find("needs a tokenizer"), std::string::npos) << no_tokenizer.all;
  auto bad_ids = run(model + " --prompt-ids 1,x,3");
  EXPECT_EQ(bad_ids.exit_code, 1);
  EXPECT_NE(bad_ids.all.find("\"x\" is not a token id"), std::string::npos) << bad_ids.all;
  auto out_of_vocab = run(model + " --prompt-ids 1,99999");
  EXPECT_EQ(out_of_vocab.exit_code, 1);
  EXPECT_NE(out_of_vocab.all.find("outside the vocabulary"), std::string::npos) << out_of_vocab.all;
  auto bad_temperature = run(model + " --prompt-ids 1,2 --temperature -1");
  // Refused while the command line is read (CLI11's exit code for a failed check), before any loading.
  EXPECT_NE(bad_temperature.exit_code, 0);
  EXPECT_NE(bad_temperature.all.find("--temperature: -1 is out of range [0, "), std::string::npos)
      << bad_temperature.all;
  auto no_prompt = run(model);
  EXPECT_NE(no_prompt.exit_code, 0);
  auto bad_dtype = run(model + " --prompt-ids 1 --cache-dtype f16");
  EXPECT_NE(bad_dtype.exit_code, 0);
  EXPECT_NE(bad_dtype.all.find("cache-dtype"), std::string::npos) << bad_dtype.all;
}

}  // namespace
}  // namespace dsv3
