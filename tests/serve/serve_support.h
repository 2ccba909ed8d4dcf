#pragma once
// What the serve tests share: the small model (made once per test process by `dsv3 init` with the
// real tokenizer), a `dsv3 serve` child process on a free port, and small client helpers.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace dsv3::test_serve {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using namespace std::chrono_literals;

inline const std::string kApiKey = "test-key-123";

// The small model, made once per test process and removed at exit.
inline const fs::path& model_dir() {
  static const fs::path dir = [] {
    const fs::path root = fs::temp_directory_path() / ("dsv3-test-serve-" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root);
    const std::string command = std::string(DSV3_BINARY) + " init --config " + DSV3_SOURCE_DIR +
                                "/tests/serve/small_config.json --tokenizer " + DSV3_DATA_DIR +
                                "/tokenizer/deepseek-v3 --out " + (root / "model").string() + " >/dev/null 2>&1";
    if (std::system(command.c_str()) != 0) throw std::runtime_error("dsv3 init failed: " + command);
    return root / "model";
  }();
  static const struct RemoveAtExit {
    fs::path dir;
    ~RemoveAtExit() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } remove_at_exit{dir.parent_path()};
  return dir;
}

inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

// A `dsv3 serve` child process, stopped (and reaped) by stop() or the destructor.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& extra = "") {
    log_ = fs::temp_directory_path() / ("dsv3-test-serve-log-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter_++) + ".txt");
    for (int attempt = 0; attempt < 3 && !ready_; ++attempt) start(extra);
  }
  ~ServerProcess() {
    if (pid_ > 0) stop();
    std::error_code ignored;
    fs::remove(log_, ignored);
  }

  bool ready() const { return ready_; }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::ifstream in(log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  httplib::Client client(bool with_key = true) const {
    httplib::Client c("127.0.0.1", port_);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(60, 0);
    c.set_write_timeout(30, 0);
    if (with_key) c.set_default_headers({{"Authorization", "Bearer " + kApiKey}});
    return c;
  }

  // SIGTERM, then waits up to `seconds` for the exit (SIGKILL after): the exit code, or -1.
  int stop(int seconds = 20) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return wait_exit(seconds);
  }
  int wait_exit(int seconds) {
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }

 private:
  void start(const std::string& extra) {
    port_ = free_port();
    const std::string command = std::string("exec ") + DSV3_BINARY + " serve --model " + model_dir().string() +
                                " --host 127.0.0.1 --port " + std::to_string(port_) + " --api-key " + kApiKey +
                                " --served-model-name small-dsv3 " + extra + " >" + log_.string() + " 2>&1";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // it exited: the port was taken, perhaps
        pid_ = -1;
        return;
      }
      httplib::Client probe("127.0.0.1", port_);
      probe.set_connection_timeout(0, 200000);
      if (auto response = probe.Get("/health"); response && response->status == 200) {
        ready_ = true;
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
    wait_exit(0);
  }

  static inline int counter_ = 0;
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool ready_ = false;
};

// The command's stdout (and stderr, unless the command redirects it itself).
inline std::string run_capture(const std::string& command, int* exit_code) {
  std::string output;
  FILE* pipe = ::popen((command.find("2>") == std::string::npos ? command + " 2>&1" : command).c_str(), "r");
  if (!pipe) return output;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return output;
}

// A client on a plain socket, for what httplib's client does not do: go away at a chosen moment
// (after the head, or at once with a reset, as a killed client's kernel does) or speak HTTP/1.0.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    const timeval hang_guard{60, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &hang_guard, sizeof hang_guard);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) close(false);
  }
  ~RawClient() { close(false); }

  bool post(const std::string& path, const std::string& body, const std::string& version = "HTTP/1.1") {
    const std::string request = "POST " + path + " " + version + "\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                                kApiKey + "\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body;
    for (std::size_t sent = 0; sent < request.size();) {
      const ssize_t n = fd_ < 0 ? -1 : ::send(fd_, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<std::size_t>(n);
    }
    return true;
  }
  // Reads until what came holds the head and `bytes` beyond it, or the connection ends; returns
  // the head (with its blank line) and `body`, what came after it.
  std::string read(std::string& body, std::size_t bytes = 0) {
    char buffer[4096];
    for (;;) {
      const std::size_t end = received_.find("\r\n\r\n");
      if (end != std::string::npos && received_.size() >= end + 4 + bytes) {
        body = received_.substr(end + 4);
        return received_.substr(0, end + 4);
      }
      const ssize_t n = fd_ < 0 ? -1 : ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return received_;
      received_.append(buffer, static_cast<std::size_t>(n));
    }
  }
  void close(bool reset) {
    if (fd_ < 0) return;
    if (reset) {
      const linger now{1, 0};
      ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &now, sizeof now);
    }
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string received_;
};

inline Json post(httplib::Client& client, const std::string& path, const Json& body, int* status) {
  auto response = client.Post(path, body.dump(), "application/json");
  *status = response ? response->status : -1;
  if (!response) return nullptr;
  return Json::parse(response->body, nullptr, false);
}

inline std::int64_t metric(const std::string& text, const std::string& name) {
  const std::regex line("(^|\n)" + name + " ([0-9]+)");
  std::smatch m;
  return std::regex_search(text, m, line) ? std::stoll(m[2]) : -1;
}

inline std::int64_t metric(ServerProcess& server, const std::string& name) {
  auto client = server.client();
  auto response = client.Get("/metrics");
  return response && response->status == 200 ? metric(response->body, name) : -1;
}

}  // namespace dsv3::test_serve
