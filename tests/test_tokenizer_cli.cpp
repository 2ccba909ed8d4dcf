// `dsv3 tokenize`, run as a user would (DSV3_BINARY through popen).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "test_tokenizer_common.h"

namespace dsv3 {
namespace {

struct Result {
  int status;
  std::string output;  // stdout and stderr
};

Result run_dsv3(const std::string& arguments) {
  std::string command = std::string(DSV3_BINARY) + " tokenize --tokenizer '" +
                        testing::deepseek_tokenizer_dir().string() + "' " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "cannot run " + command};
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

std::string ids_line(const std::vector<std::int32_t>& ids) {
  std::string line;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ',';
    line += std::to_string(ids[i]);
  }
  return line + "\n";
}

TEST(TokenizerCli, EncodesText) {
  ASSERT_TRUE(std::filesystem::exists(testing::deepseek_tokenizer_dir() / "tokenizer.json")) << "run scripts/setup.sh";
  const auto& c = testing::tokenizer_fixture().at("cases").at(6);  // "Hello world"
  Result result = run_dsv3("--text '" + c.at("text").get<std::string>() + "'");
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_EQ(result.output, ids_line(c.at("ids").get<std::vector<std::int32_t>>()));
  result = run_dsv3("--bos --text '" + c.at("text").get<std::string>() + "'");
  EXPECT_EQ(result.output, ids_line(c.at("ids_bos").get<std::vector<std::int32_t>>()));
}

TEST(TokenizerCli, DecodesIds) {
  Result result = run_dsv3("--decode --text '0,19923, 2058'");
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_EQ(result.output, "<｜begin▁of▁sentence｜>Hello world\n");
}

TEST(TokenizerCli, EncodesJsonLines) {
  std::filesystem::path path = std::filesystem::temp_directory_path() / ("dsv3_tokenizer_cli_test-" + std::to_string(::getpid()) + ".jsonl");
  std::ofstream(path) << "{\"text\": \"Hello world\"}\n{\"text\": \"中文分词测试，深度求索。\"}\n";
  Result result = run_dsv3("--jsonl '" + path.string() + "'");
  EXPECT_EQ(result.status, 0) << result.output;
  const Tokenizer& tokenizer = testing::deepseek_tokenizer();
  nlohmann::json first = {{"ids", tokenizer.encode("Hello world")}};
  nlohmann::json second = {{"ids", tokenizer.encode("中文分词测试，深度求索。")}};
  EXPECT_EQ(result.output, first.dump() + "\n" + second.dump() + "\n");

  std::ofstream(path) << "{\"text\": \"ok\"}\n{\"text\": broken}\n";
  result = run_dsv3("--jsonl '" + path.string() + "'");
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.output.find(path.string() + ":2"), std::string::npos) << result.output;
  std::filesystem::remove(path);
}

TEST(TokenizerCli, RendersAndEncodesTheFixtureChat) {
  const auto& chat = testing::tokenizer_fixture().at("chats").at(0);
  std::filesystem::path path = std::filesystem::temp_directory_path() / ("dsv3_tokenizer_cli_chat-" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << nlohmann::json{{"messages", chat.at("messages")}}.dump();
  Result result = run_dsv3(std::string("--chat '") + path.string() + "'" +
                           (chat.at("add_generation_prompt").get<bool>() ? " --add-generation-prompt" : ""));
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_EQ(result.output, chat.at("text").get<std::string>() + "\n" +
                               ids_line(chat.at("ids").get<std::vector<std::int32_t>>()));
  std::ofstream(path) << "{\"messages\": 3}";
  result = run_dsv3("--chat '" + path.string() + "'");
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.output.find("expected a list of messages"), std::string::npos) << result.output;
  std::filesystem::remove(path);
}

TEST(TokenizerCli, RejectsBadArguments) {
  Result result = run_dsv3("--text a --jsonl /dev/null");
  EXPECT_NE(result.status, 0);
  result = run_dsv3("");
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.output.find("--text"), std::string::npos) << result.output;
  result = run_dsv3("--decode --text '1,two'");
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.output.find("\"two\" is not a token id"), std::string::npos) << result.output;
  result = run_dsv3("--text \"$(printf 'ab\\377')\"");
  EXPECT_NE(result.status, 0);
  EXPECT_NE(result.output.find("byte offset 2"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace dsv3
