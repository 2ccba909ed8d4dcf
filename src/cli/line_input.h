#pragma once
// Ctrl-C as a request rather than a kill, and line input that notices it. An interactive command
// installs an InterruptHandler; from then on SIGINT only raises a flag (checked by long-running
// loops between steps) and wakes a LineReader blocked on input, through a self-pipe: the handler
// writes a byte to a pipe that the reader polls alongside its input, so a Ctrl-C arriving just
// before the reader blocks is not lost (as it could be with a flag and a plain read()).
#include <string>

namespace dsv3::cli {

class InterruptHandler {
 public:
  // Installs the SIGINT handler (only one may exist at a time); the destructor restores the old one.
  InterruptHandler();
  ~InterruptHandler();
  InterruptHandler(const InterruptHandler&) = delete;
  InterruptHandler& operator=(const InterruptHandler&) = delete;

  // Whether Ctrl-C was pressed since the last clear().
  bool requested() const;
  void clear();
  // Readable while a request is pending.
  int wake_fd() const;
};

enum class ReadResult { line, end_of_input, interrupted };

// Reads lines from a file descriptor (a terminal in canonical mode, a pipe or a file).
class LineReader {
 public:
  LineReader(int fd, InterruptHandler& interrupts);

  // The next line without its line ending. At end of input a last unterminated line is still
  // returned as a line. `interrupted`: Ctrl-C was pressed; a partly read line is discarded (the
  // terminal discards its own pending input on Ctrl-C too) and the request is cleared.
  ReadResult next(std::string& line);

 private:
  int fd_;
  InterruptHandler& interrupts_;
  std::string buffer_;
  bool at_end_ = false;
};

}  // namespace dsv3::cli
