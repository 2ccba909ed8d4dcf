#include "cli/line_input.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "core/error.h"

namespace dsv3::cli {
namespace {

// The handler may only touch lock-free atomics and async-signal-safe calls (write).
std::atomic<bool> interrupt_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);
int wake_pipe[2] = {-1, -1};
bool handler_installed = false;
struct sigaction previous_action;

void on_interrupt(int) {
  const int saved_errno = errno;
  interrupt_requested.store(true);
  const char byte = 1;
  // Non-blocking: when the pipe is already full a wake-up is pending anyway.
  [[maybe_unused]] const auto written = ::write(wake_pipe[1], &byte, 1);
  errno = saved_errno;
}

void set_flags(int fd, int flags) {
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | flags) != 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
    fail("Ctrl-C handling: fcntl on the wake-up pipe failed: {}", std::strerror(errno));
}

}  // namespace

InterruptHandler::InterruptHandler() {
  if (handler_installed) fail("Ctrl-C handling: an InterruptHandler is already installed");
  if (::pipe(wake_pipe) != 0) fail("Ctrl-C handling: cannot create the wake-up pipe: {}", std::strerror(errno));
  set_flags(wake_pipe[0], O_NONBLOCK);
  set_flags(wake_pipe[1], O_NONBLOCK);
  interrupt_requested.store(false);
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  // SA_RESTART keeps Ctrl-C from failing a write to stdout half-way; the reader's poll() is never
  // restarted, and the wake-up pipe ends it anyway.
  action.sa_flags = SA_RESTART;
  if (::sigaction(SIGINT, &action, &previous_action) != 0)
    fail("Ctrl-C handling: cannot install the SIGINT handler: {}", std::strerror(errno));
  handler_installed = true;
}

InterruptHandler::~InterruptHandler() {
  ::sigaction(SIGINT, &previous_action, nullptr);
  ::close(wake_pipe[0]);
  ::close(wake_pipe[1]);
  wake_pipe[0] = wake_pipe[1] = -1;
  handler_installed = false;
}

bool InterruptHandler::requested() const { return interrupt_requested.load(); }

void InterruptHandler::clear() {
  interrupt_requested.store(false);
  char drain[64];
  while (::read(wake_pipe[0], drain, sizeof drain) > 0) {
  }
}

int InterruptHandler::wake_fd() const { return wake_pipe[0]; }

LineReader::LineReader(int fd, InterruptHandler& interrupts) : fd_(fd), interrupts_(interrupts) {}

ReadResult LineReader::next(std::string& line) {
  for (;;) {
    if (interrupts_.requested()) {
      interrupts_.clear();
      buffer_.erase(buffer_.rfind('\n') == std::string::npos ? 0 : buffer_.rfind('\n') + 1);
      return ReadResult::interrupted;
    }
    if (const std::size_t end = buffer_.find('\n'); end != std::string::npos) {
      line = buffer_.substr(0, end);
      buffer_.erase(0, end + 1);
      if (line.ends_with('\r')) line.pop_back();
      return ReadResult::line;
    }
    if (at_end_) {
      if (buffer_.empty()) return ReadResult::end_of_input;
      line = std::move(buffer_);
      buffer_.clear();
      return ReadResult::line;
    }
    pollfd fds[2] = {{fd_, POLLIN, 0}, {interrupts_.wake_fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fail("reading input: poll failed: {}", std::strerror(errno));
    }
    if (fds[1].revents & POLLIN) continue;  // handled at the top
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        fail("reading input: {}", std::strerror(errno));
      }
      if (n == 0)
        at_end_ = true;
      else
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }
}

}  // namespace dsv3::cli
