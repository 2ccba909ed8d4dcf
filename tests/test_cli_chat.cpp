// `dsv3 chat` run as a user runs it, over pipes: turns, /reset and /exit, Ctrl-C during a reply
// and at the prompt, and the errors that come before the first turn. The model is the tiny fixture
// (random weights: its replies are gibberish, but greedy gibberish is deterministic) with a
// tokenizer trained here on a small text with DeepSeek's special tokens and chat template.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr, in the order written
};

CommandResult run_shell(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) result.out.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// Files shared by the tests of this suite, made once.
struct ChatFiles {
  fs::path dir;
  fs::path tokenizer;              // trained here, with DeepSeek-V3's chat template
  fs::path tokenizer_no_template;  // the same without one
  fs::path small_tokenizer;        // 300 tokens, with the template
  fs::path long_model;             // the tiny model with room for replies longer than a test waits
};

const ChatFiles& chat_files() {
  static const ChatFiles files = [] {
    ChatFiles f;
    f.dir = fs::temp_directory_path() / ("dsv3-test-CliChat-" + std::to_string(::getpid()));
    fs::remove_all(f.dir);
    fs::create_directories(f.dir);
    {
      // Made-up words from a fixed sequence of syllables: enough distinct pairs for the BPE
      // trainer to fill the model's 1024 ids.
      std::ofstream corpus(f.dir / "corpus.txt");
      const char* syllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "bel", "dor", "fen", "gim",
                                 "hal", "jor", "kes", "lun", "mar", "nop", "qua", "rix", "sel", "tam"};
      std::uint32_t state = 12345;
      for (int line = 0; line < 400; ++line) {
        for (int word = 0; word < 12; ++word) {
          const std::uint32_t length = 1 + (state >> 7) % 3;
          for (std::uint32_t s = 0; s < length; ++s) {
            state = state * 1664525u + 1013904223u;
            corpus << syllables[(state >> 16) % std::size(syllables)];
          }
          corpus << (word == 11 ? ".\n" : " ");
        }
      }
      corpus << "Hello there! How are you today? Tell me a story.\n";
    }
    f.tokenizer = f.dir / "tokenizer";
    f.tokenizer_no_template = f.dir / "tokenizer-no-template";
    f.small_tokenizer = f.dir / "small-tokenizer";
    const std::string train = std::string(DSV3_BINARY) + " tokenizer train --corpus " +
                              (f.dir / "corpus.txt").string() + " --out ";
    const std::string deepseek_config = std::string(DSV3_DATA_DIR) + "/tokenizer/deepseek-v3/tokenizer_config.json";
    const std::string with_template = " --chat-template-from " + deepseek_config;
    for (const auto& [out, extra] : {std::pair{f.tokenizer, " --vocab-size 1024" + with_template},
                                     std::pair{f.tokenizer_no_template, std::string(" --vocab-size 1024")},
                                     std::pair{f.small_tokenizer, " --vocab-size 300" + with_template}}) {
      const CommandResult trained = run_shell(train + out.string() + extra);
      if (trained.exit_code != 0) throw std::runtime_error("tokenizer train failed: " + trained.out);
    }
    // Raising max_position_embeddings only lets positions go further; the first ones, all a
    // reply here reaches before Ctrl-C, are computed as before.
    f.long_model = f.dir / "long-model";
    fs::create_directories(f.long_model);
    nlohmann::json config = nlohmann::json::parse(std::ifstream(test::tiny_model_dir() / "config.json"));
    config["max_position_embeddings"] = 65536;
    std::ofstream(f.long_model / "config.json") << config.dump(2);
    fs::create_symlink(test::tiny_model_dir() / "model.safetensors", f.long_model / "model.safetensors");
    return f;
  }();
  static const struct RemoveAtExit {
    fs::path dir;
    ~RemoveAtExit() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } remove_at_exit{files.dir};
  return files;
}

std::string chat_command(const fs::path& model, const fs::path& tokenizer) {
  return std::string(DSV3_BINARY) + " chat --model " + model.string() + " --tokenizer " + tokenizer.string();
}

// Splits the output of a piped session into turns: each reply is followed by its status line
// "[...tokens/s...]" (stdout and stderr share the pipe; the reply is flushed before the status).
struct Turn {
  std::string reply;  // with any notices printed since the previous turn
  std::string status;
};
std::vector<Turn> answered_turns(const std::string& out) {
  std::vector<Turn> turns;
  std::size_t reply_start = 0, line_start = 0;
  while (line_start < out.size()) {
    const std::size_t line_end = std::min(out.find('\n', line_start), out.size());
    const std::string line = out.substr(line_start, line_end - line_start);
    if (line.starts_with("[") && line.find("tokens/s") != std::string::npos) {
      turns.push_back({out.substr(reply_start, line_start - reply_start), line});
      reply_start = line_end + 1;
    }
    line_start = line_end + 1;
  }
  return turns;
}

std::size_t prompt_tokens(const std::string& status) {
  const std::size_t at = status.find("prompt ");
  EXPECT_NE(at, std::string::npos) << status;
  return at == std::string::npos ? 0 : std::stoul(status.substr(at + 7));
}

TEST(CliChat, PipedTurnsResetAndExit) {
  const ChatFiles& files = chat_files();
  const std::string input = "Hello there\nHow are you?\n/reset\nHello there\n/help\n\n/exit\nNever answered\n";
  std::ofstream(files.dir / "turns.txt") << input;
  const CommandResult result = run_shell(chat_command(test::tiny_model_dir(), files.tokenizer) +
                                         " --temperature 0 --max-tokens 12 --verbose < " +
                                         (files.dir / "turns.txt").string());
  ASSERT_EQ(result.exit_code, 0) << result.out;
  EXPECT_NE(result.out.find("(the conversation is cleared)"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("unknown command /help: /reset starts over, /exit quits"), std::string::npos)
      << result.out;
  // Three turns answered (the line after /exit is not), each with its tokens/s line.
  const std::vector<Turn> answered = answered_turns(result.out);
  ASSERT_EQ(answered.size(), 3u) << result.out;
  for (const Turn& turn : answered) {
    EXPECT_TRUE(turn.status.starts_with("[prompt ")) << turn.status;
    EXPECT_NE(turn.status.find(" tokens, "), std::string::npos) << turn.status;
  }
  // The second prompt holds the first exchange; after /reset the prompt is the first one again,
  // and greedy decoding gives the first reply again.
  const std::size_t first = prompt_tokens(answered[0].status);
  EXPECT_GT(prompt_tokens(answered[1].status), first + 3);
  EXPECT_EQ(prompt_tokens(answered[2].status), first);
  const std::string reset_notice = "(the conversation is cleared)\n";
  std::string third_reply = answered[2].reply;
  if (third_reply.starts_with(reset_notice)) third_reply.erase(0, reset_notice.size());
  EXPECT_EQ(third_reply, answered[0].reply);
  EXPECT_FALSE(answered[0].reply.empty());
}

// A running `dsv3 chat` with pipes on stdin and on stdout+stderr.
class ChatProcess {
 public:
  explicit ChatProcess(std::vector<std::string> arguments) {
    int input[2], output[2];
    if (::pipe(input) != 0 || ::pipe(output) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(input[0], STDIN_FILENO);
      ::dup2(output[1], STDOUT_FILENO);
      ::dup2(output[1], STDERR_FILENO);
      for (const int fd : {input[0], input[1], output[0], output[1]}) ::close(fd);
      std::vector<char*> argv;
      for (std::string& argument : arguments) argv.push_back(argument.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(input[0]);
    ::close(output[1]);
    to_chat_ = input[1];
    from_chat_ = output[0];
  }
  ~ChatProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (to_chat_ >= 0) ::close(to_chat_);
    ::close(from_chat_);
  }

  void send(const std::string& text) {
    ASSERT_EQ(::write(to_chat_, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  }
  void interrupt() { ::kill(pid_, SIGINT); }

  // Reads until `output` holds `text` after offset `from`; false after `seconds` without it.
  bool wait_for(const std::string& text, std::size_t from, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (output.find(text, from) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd fd{from_chat_, POLLIN, 0};
      if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) continue;
      char buffer[4096];
      const ssize_t n = ::read(from_chat_, buffer, sizeof buffer);
      if (n <= 0) return false;
      output.append(buffer, static_cast<std::size_t>(n));
    }
    return true;
  }
  // Reads until the output grows past `size`.
  bool wait_for_more(std::size_t size, double seconds) { return wait_for(std::string(), size + 1, seconds); }

  bool alive() {
    if (exited_) return false;
    int status = 0;
    return ::waitpid(pid_, &status, WNOHANG) == 0;
  }
  // The exit code, or -1 if the process has not ended (by itself) within `seconds`.
  int wait_exit(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    ::close(to_chat_);
    to_chat_ = -1;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      char buffer[4096];
      pollfd fd{from_chat_, POLLIN, 0};
      if (::poll(&fd, 1, 50) > 0) {
        const ssize_t n = ::read(from_chat_, buffer, sizeof buffer);
        if (n > 0) output.append(buffer, static_cast<std::size_t>(n));
      }
    }
    return -1;
  }

  std::string output;

 private:
  pid_t pid_ = -1;
  int to_chat_ = -1;
  int from_chat_ = -1;
  bool exited_ = false;
};

TEST(CliChat, CtrlCStopsTheReplyButNotTheSession) {
  const ChatFiles& files = chat_files();
  // The reply cannot end by itself before ~65000 tokens, far beyond this test's waits.
  ChatProcess chat({DSV3_BINARY, "chat", "--model", files.long_model.string(), "--tokenizer",
                    files.tokenizer.string(), "--temperature", "0", "--ignore-eos", "--max-tokens", "100000",
                    "--cache-tokens", "65536"});
  chat.send("Tell me a story\n");
  ASSERT_TRUE(chat.wait_for_more(0, 20)) << "no reply began: " << chat.output;
  chat.interrupt();
  ASSERT_TRUE(chat.wait_for("[interrupted; ", 0, 20)) << chat.output;
  ASSERT_TRUE(chat.wait_for("tokens/s]\n", chat.output.find("[interrupted; "), 5)) << chat.output;
  EXPECT_TRUE(chat.alive());

  // Ctrl-C at the prompt only says how to quit.
  chat.interrupt();
  ASSERT_TRUE(chat.wait_for("(press Ctrl-D or type /exit to quit)\n", 0, 10)) << chat.output;
  EXPECT_TRUE(chat.alive());

  // The next line is answered (and interrupted in turn).
  const std::size_t before_second_turn = chat.output.size();
  chat.send("Go on\n");
  ASSERT_TRUE(chat.wait_for_more(before_second_turn, 20)) << "no second reply: " << chat.output;
  chat.interrupt();
  ASSERT_TRUE(chat.wait_for("[interrupted; ", before_second_turn, 20)) << chat.output;
  ASSERT_TRUE(chat.wait_for("tokens/s]\n", before_second_turn, 5)) << chat.output;

  chat.send("/exit\n");
  EXPECT_EQ(chat.wait_exit(10), 0) << chat.output;
}

TEST(CliChat, ClearErrorsBeforeTheFirstTurn) {
  const ChatFiles& files = chat_files();
  const auto no_template = run_shell(chat_command(test::tiny_model_dir(), files.tokenizer_no_template) + " < /dev/null");
  EXPECT_EQ(no_template.exit_code, 1);
  EXPECT_NE(no_template.out.find("has no chat template"), std::string::npos) << no_template.out;

  const fs::path deepseek = fs::path(DSV3_DATA_DIR) / "tokenizer" / "deepseek-v3";
  const auto mismatch = run_shell(chat_command(test::tiny_model_dir(), deepseek) + " < /dev/null");
  EXPECT_EQ(mismatch.exit_code, 1);
  EXPECT_NE(mismatch.out.find("has 128815 tokens"), std::string::npos) << mismatch.out;
  EXPECT_NE(mismatch.out.find("vocabulary of 1024"), std::string::npos) << mismatch.out;

  const auto no_tokenizer =
      run_shell(std::string(DSV3_BINARY) + " chat --model " + test::tiny_model_dir().string() + " < /dev/null");
  EXPECT_EQ(no_tokenizer.exit_code, 1);
  EXPECT_NE(no_tokenizer.out.find("chat needs a tokenizer"), std::string::npos) << no_tokenizer.out;
}

TEST(CliChat, EndOfInputEndsTheSession) {
  const ChatFiles& files = chat_files();
  const auto result = run_shell("printf 'Hello there' | " + chat_command(test::tiny_model_dir(), files.tokenizer) +
                                " --temperature 0 --max-tokens 4");
  EXPECT_EQ(result.exit_code, 0) << result.out;
  // The last line, without a newline, is still a message.
  EXPECT_NE(result.out.find(" tokens/s"), std::string::npos) << result.out;
}

TEST(CliChat, ModelIdsPastTheTokenizerAreNeverSampled) {
  // 300 tokens for the model's 1024 ids: the tiny model's gibberish often lands past 300.
  const ChatFiles& files = chat_files();
  const auto result = run_shell("echo 'Hello there' | " + chat_command(test::tiny_model_dir(), files.small_tokenizer) +
                                " --temperature 0 --max-tokens 40");
  EXPECT_EQ(result.exit_code, 0) << result.out;
  EXPECT_NE(result.out.find(" tokens/s"), std::string::npos) << result.out;
}

}  // namespace
}  // namespace dsv3
