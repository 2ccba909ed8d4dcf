// dsv3 eval (held-out bits per byte against a unigram baseline), its figures in dsv3 info, and the
// default model every command with --model falls back to.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CommandResult run_shell(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// dsv3 with DSV3_MODEL set to `model` ("" : unset).
CommandResult dsv3(const std::string& arguments, const std::string& model = "") {
  const std::string env = model.empty() ? "env -u DSV3_MODEL " : "env DSV3_MODEL='" + model + "' ";
  return run_shell(env + "'" + DSV3_BINARY + "' " + arguments);
}

void write(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

TEST(CliEval, MatchesAnIndependentCalculation) {
  const fs::path dir = test::temp_dir("eval");
  write(dir / "train.txt",
        "The Congress shall have power to lay and collect taxes. The people of the United States, in order to form "
        "a more perfect union, establish justice, insure domestic tranquility, provide for the common defence.\n");
  write(dir / "held-a.txt", "Fellow citizens of the Senate and of the House of Representatives: the union is strong.\n");
  // Non-ASCII text: bits are per UTF-8 byte, not per character.
  write(dir / "held-b.txt", "Ünïcödé — “quotes”, and a longer sentence that needs more than one window of tokens.\n");
  const CommandResult trained =
      dsv3("tokenizer train --corpus " + (dir / "train.txt").string() + " --vocab-size 300 --out " + (dir / "tok").string());
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const std::string model = test::tiny_model_dir().string(), tokenizer = (dir / "tok").string();
  const std::string held_out = (dir / "held-a.txt").string() + " " + (dir / "held-b.txt").string();
  const CommandResult ours = dsv3("eval --model " + model + " --tokenizer " + tokenizer + " --corpus " + held_out +
                                  " --baseline-corpus " + (dir / "train.txt").string() + " --context 8 --out " +
                                  (dir / "eval.json").string());
  ASSERT_EQ(ours.exit_code, 0) << ours.output;
  EXPECT_NE(ours.output.find("fewer bits than the unigram baseline"), std::string::npos) << ours.output;
  const nlohmann::json mine = nlohmann::json::parse(std::ifstream(dir / "eval.json"));

  const CommandResult reference =
      run_shell("python3 '" + std::string(DSV3_SOURCE_DIR) + "/tests/bits_per_byte_reference.py' '" + DSV3_BINARY +
                "' " + model + " " + tokenizer + " 8 " + dir.string() + " --held-out " + held_out + " --baseline " +
                (dir / "train.txt").string());
  ASSERT_EQ(reference.exit_code, 0) << reference.output;
  const nlohmann::json theirs = nlohmann::json::parse(reference.output);
  EXPECT_EQ(mine["held_out_bytes"], theirs["held_out_bytes"]);
  EXPECT_EQ(mine["held_out_tokens"], theirs["held_out_tokens"]);
  EXPECT_NEAR(mine["model_bits_per_byte"].get<double>(), theirs["model_bits_per_byte"].get<double>(), 1e-9);
  EXPECT_NEAR(mine["unigram_bits_per_byte"].get<double>(), theirs["unigram_bits_per_byte"].get<double>(), 1e-9);
  EXPECT_GT(mine["held_out_tokens"].get<int>(), 16);  // several windows of 8
  fs::remove_all(dir);
}

TEST(CliEval, RefusesBadInputByName) {
  const std::string model = test::tiny_model_dir().string();
  const std::string tokenizer = std::string(DSV3_SOURCE_DIR) + "/models/sotu";
  const std::string text = tokenizer + "/recipe/heldout.txt";
  const CommandResult context = dsv3("eval --model " + model + " --tokenizer " + tokenizer + " --corpus " + text +
                                     " --baseline-corpus " + text + " --context 1");
  EXPECT_EQ(context.exit_code, 1);
  EXPECT_NE(context.output.find("context must be at least 2"), std::string::npos) << context.output;
}

TEST(CliEval, InfoPrintsTheModelsFigures) {
  const fs::path dir = test::temp_dir("info");
  fs::create_symlink(test::tiny_model_dir() / "config.json", dir / "config.json");
  write(dir / "eval.json", R"({"model_bits_per_byte": 1.5, "unigram_bits_per_byte": 3.0, "held_out_bytes": 1234})");
  const CommandResult info = dsv3("info --model " + dir.string());
  ASSERT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("1.5000 bits per byte; unigram baseline 3.0000, 50.0% below"), std::string::npos)
      << info.output;
  write(dir / "eval.json", R"({"model_bits_per_byte": "x"})");
  const CommandResult bad = dsv3("info --model " + dir.string());
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("eval.json: not an eval.json"), std::string::npos) << bad.output;
  fs::remove_all(dir);
}

TEST(CliDefaultModel, CommandsWithoutModelUseItAndSaySo) {
  const std::string tiny = test::tiny_model_dir().string();
  const CommandResult info = dsv3("info", tiny);
  ASSERT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("dsv3: no --model given; using the default model at " + tiny), std::string::npos)
      << info.output;
  EXPECT_NE(info.output.find("kv_lora_rank 64"), std::string::npos) << info.output;
  const CommandResult given = dsv3("info --model " + tiny, "/nonexistent");
  ASSERT_EQ(given.exit_code, 0) << given.output;
  EXPECT_EQ(given.output.find("no --model given"), std::string::npos) << given.output;
  const CommandResult help = dsv3("generate --help", "/nonexistent");
  EXPECT_EQ(help.exit_code, 0) << help.output;
  EXPECT_NE(help.output.find("(default: models/sotu, or $DSV3_MODEL)"), std::string::npos) << help.output;
}

TEST(CliDefaultModel, AMissingDefaultModelNamesTheScriptThatMakesIt) {
  for (const char* command : {"generate --prompt Hello", "chat", "serve", "bench", "info", "eval --corpus x"}) {
    SCOPED_TRACE(command);
    const CommandResult r = dsv3(command, "/nonexistent/model");
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("the default model is not at /nonexistent/model (from DSV3_MODEL)"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("scripts/train-default-model.sh"), std::string::npos) << r.output;
  }
}

// The committed default model (models/sotu) answers with no --model and no DSV3_MODEL.
TEST(CliDefaultModel, TheCommittedModelRunsWithNoArguments) {
  const std::string model = std::string(DSV3_SOURCE_DIR) + "/models/sotu";
  const CommandResult info = dsv3("info");
  ASSERT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("using the default model at "), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("% below"), std::string::npos) << info.output;  // its eval.json
  const CommandResult generated = dsv3("generate --prompt 'My fellow citizens' --max-tokens 8 --mtp 1");
  ASSERT_EQ(generated.exit_code, 0) << generated.output;
  EXPECT_NE(generated.output.find("MTP draft 1 accepted"), std::string::npos) << generated.output;
}

}  // namespace
}  // namespace dsv3
