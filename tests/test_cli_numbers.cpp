// Numbers on the command line: every numeric option of every subcommand rejects what its type
// cannot hold, or what lies outside its range, with one message naming the option and the range;
// the KV cache options are checked against the machine's memory; no raw conversion error, no
// 300-digit double, no bad_alloc, no silently narrowed value.
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "support.h"

namespace dsv3 {
namespace {

struct Case {
  std::string arguments;
  std::string expected;  // in the output
};

void expect_refused(const Case& c) {
  SCOPED_TRACE(c.arguments);
  std::string output;
  const int status = test::run_dsv3(c.arguments, output);
  EXPECT_NE(status, 0) << output;
  EXPECT_NE(status, -1) << "dsv3 did not exit normally (a signal?)\n" << output;
  EXPECT_NE(output.find(c.expected), std::string::npos) << output;
  for (const char* never : {"bad_alloc", "terminate", "Could not convert", "unexpected error", "000000000000000"})
    EXPECT_EQ(output.find(never), std::string::npos) << never << " in:\n" << output;
}

std::string tiny() { return "--model " + test::tiny_model_dir().string() + " "; }

TEST(CliNumbers, GenerateOptionsOutsideTheirTypeOrRange) {
  const std::string g = "generate " + tiny() + "--prompt-ids 1,2 ";
  const Case cases[] = {
      {g + "--max-tokens 2147483648", "--max-tokens: 2147483648 is out of range [1, 2147483647]"},
      {g + "--max-tokens 0", "--max-tokens: 0 is out of range [1, 2147483647]"},
      {g + "--top-k 99999999999", "--top-k: 99999999999 is out of range [0, 2147483647]"},
      {g + "--top-k -1", "--top-k: -1 is out of range [0, 2147483647]"},
      {g + "--top-k 4.5", "--top-k: 4.5 is not an integer"},
      {g + "--top-k 0x10", "--top-k: 0x10 is not an integer"},
      {g + "--top-p 1.5", "--top-p: 1.5 is out of range [0, 1]"},
      {g + "--min-p -0.1", "--min-p: -0.1 is out of range [0, 1]"},
      {g + "--temperature 1e400", "--temperature: 1e400 is out of range [0, 3.4028235e+38]"},
      {g + "--temperature 1e39", "--temperature: 1e39 is out of range [0, 3.4028235e+38]"},
      {g + "--temperature nan", "--temperature: nan is not a number"},
      {g + "--temperature warm", "--temperature: warm is not a number"},
      {g + "--repetition-penalty -2", "--repetition-penalty: -2 is out of range [0, 3.4028235e+38]"},
      {g + "--presence-penalty inf", "--presence-penalty: inf is out of range [-3.4028235e+38, 3.4028235e+38]"},
      {g + "--frequency-penalty 1e999", "--frequency-penalty: 1e999 is out of range"},
      {g + "--seed -1", "--seed: -1 is out of range [0, 18446744073709551615]"},
      {g + "--seed 18446744073709551616", "--seed: 18446744073709551616 is out of range [0, 18446744073709551615]"},
      {g + "--mtp 65", "--mtp: 65 is out of range [0, 64]"},
      {g + "--cache-tokens 0", "--cache-tokens: 0 is out of range [1, 9223372036854775807]"},
      {g + "--cache-tokens 9223372036854775808", "--cache-tokens: 9223372036854775808 is out of range"},
      {g + "--cache-bytes -5", "--cache-bytes: -5 is out of range [1, 9223372036854775807]"},
      {g.substr(0, g.find("--prompt-ids")) + "--prompt-ids 1,99999999999",
       "--prompt-ids: 99999999999 is out of range [0, 2147483647]"},
      {g.substr(0, g.find("--prompt-ids")) + "--prompt-ids 1,-3", "--prompt-ids: -3 is out of range [0, 2147483647]"},
  };
  for (const Case& c : cases) expect_refused(c);
}

TEST(CliNumbers, ACacheLargerThanTheMachineIsAClearError) {
  const std::string g = "generate " + tiny() + "--prompt-ids 1,2 ";
  expect_refused({g + "--cache-tokens 99999999999", "--cache-tokens 99999999999: a KV cache of 99999999999 tokens"});
  expect_refused({g + "--cache-tokens 99999999999", "more than this machine's"});
  expect_refused({g + "--cache-bytes 9223372036854775807", "--cache-bytes 9223372036854775807: a KV cache of"});
  // bench sizes its cache from the workload: batch x (prompt + generated tokens).
  expect_refused({"bench " + tiny() + "--batch 2147483647 --prompt-len 8 --gen-len 8",
                  "--batch 2147483647 with --prompt-len 8 and --gen-len 8: a KV cache of"});
}

TEST(CliNumbers, OtherSubcommandsUseTheSameChecks) {
  const std::string t = tiny();
  const Case cases[] = {
      {"bench " + t + "--batch 99999999999", "--batch: 99999999999 is out of range [1, 2147483647]"},
      {"bench " + t + "--prompt-len 0", "--prompt-len: 0 is out of range [1, 2147483647]"},
      {"bench " + t + "--gen-len 2147483648", "--gen-len: 2147483648 is out of range [2, 2147483647]"},
      {"bench " + t + "--gen-len 1", "--gen-len: 1 is out of range [2, 2147483647]"},
      {"bench " + t + "--mtp -1", "--mtp: -1 is out of range [0, 64]"},
      {"bench " + t + "--seed x", "--seed: x is not an integer"},
      {"chat " + t + "--top-k 99999999999", "--top-k: 99999999999 is out of range [0, 2147483647]"},
      {"init --config c.json --out o --seed -2", "--seed: -2 is out of range [0, 18446744073709551615]"},
      {"init --config c.json --out o --shard-size 0", "--shard-size: 0 is out of range [1, 9223372036854775807]"},
      {"grad " + t + "--input i --seq a --output o --mtp-weight nan", "--mtp-weight: nan is not a number"},
      {"grad " + t + "--input i --seq a --output o --balance-alpha -1",
       "--balance-alpha: -1 is out of range [0, 1.7976931348623157e+308]"},
      {"tokenizer train --corpus a.txt --out o --vocab-size 99999999999",
       "--vocab-size: 99999999999 is out of range [1, 2147483647]"},
      {"tokenizer train --corpus a.txt --out o --vocab-size -1", "--vocab-size: -1 is out of range [1, 2147483647]"},
      {"tokenize --tokenizer " + std::string(DSV3_DATA_DIR) + "/tokenizer/deepseek-v3 --decode --text 5,99999999999",
       "--text: 99999999999 is out of range [0, 2147483647]"},
  };
  for (const Case& c : cases) expect_refused(c);
}

TEST(CliNumbers, NumbersInRangeAreAcceptedWhateverTheirSpelling) {
  // "+3", "010" (decimal ten, not octal eight) and "1e-400" (zero) are numbers the options take.
  std::string output;
  ASSERT_EQ(test::run_dsv3("generate " + tiny() + "--prompt-ids 1,2 --max-tokens +3 --top-k 010 --min-p 1e-400 "
                           "--print-ids --temperature 0",
                           output),
            0)
      << output;
  EXPECT_TRUE(std::regex_search(output, std::regex("(^|\n)[0-9]+,[0-9]+,[0-9]+\n"))) << "three ids expected:\n" << output;
}

}  // namespace
}  // namespace dsv3
