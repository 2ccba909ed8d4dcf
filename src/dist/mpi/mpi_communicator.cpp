#include "dist/mpi/mpi_communicator.h"

#include <fmt/core.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <thread>

#include "core/error.h"

namespace dsv3::dist {
namespace {

// MPI's errors become dsv3 errors naming the call; MPI_COMM_WORLD returns them (MPI_ERRORS_RETURN)
// instead of aborting inside the library, so the caller's rank can say what failed.
void check(int code, const char* operation) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  fail("{}: MPI error {}: {}", operation, code, std::string(text, static_cast<std::size_t>(length)));
}

int count_of(std::size_t n, const char* operation) {
  if (n > static_cast<std::size_t>(INT_MAX)) fail("{}: {} elements is more than one MPI call takes", operation, n);
  return static_cast<int>(n);
}

class MpiCommunicator final : public Communicator {
 public:
  using Communicator::broadcast;
  using Communicator::gather;
  MpiCommunicator() {
    int initialised = 0;
    check(MPI_Initialized(&initialised), "MPI_Initialized");
    if (!initialised) {
      // One thread at a time calls MPI (the server's scheduler thread steps the model, the main
      // thread loads and stops it); the thread pool never does.
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    check(MPI_Get_library_version(version, &length), "MPI_Get_library_version");
    library_.assign(version, static_cast<std::size_t>(length));
    if (const auto comma = library_.find(','); comma != std::string::npos) library_.resize(comma);
  }
  ~MpiCommunicator() override {
    int finalised = 0;
    if (owns_mpi_ && MPI_Finalized(&finalised) == MPI_SUCCESS && !finalised) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string description() const override { return fmt::format("MPI ({}), {} ranks", library_, size_); }

  // MPI_Allreduce may add in any order (Open MPI picks its algorithm by message size and rank
  // count), so the sum is taken here: gather every rank's values to rank 0 in rank order, add them
  // in that order, broadcast the result.
  void all_reduce_sum(std::span<float> values) override {
    const int count = count_of(values.size(), "all_reduce_sum");
    if (size_ == 1 || count == 0) return;
    if (rank_ == 0) gathered_.resize(values.size() * static_cast<std::size_t>(size_));
    check(MPI_Gather(values.data(), count, MPI_FLOAT, rank_ == 0 ? gathered_.data() : nullptr, count, MPI_FLOAT, 0,
                     MPI_COMM_WORLD),
          "all_reduce_sum (MPI_Gather)");
    if (rank_ == 0) {
      for (std::size_t i = 0; i < values.size(); ++i) {
        float sum = gathered_[i];
        for (int r = 1; r < size_; ++r) sum += gathered_[static_cast<std::size_t>(r) * values.size() + i];
        values[i] = sum;
      }
    }
    check(MPI_Bcast(values.data(), count, MPI_FLOAT, 0, MPI_COMM_WORLD), "all_reduce_sum (MPI_Bcast)");
  }

  void broadcast(std::span<std::byte> bytes, int root) override {
    if (root < 0 || root >= size_) fail("broadcast: root {} is not a rank (0..{})", root, size_ - 1);
    check(MPI_Bcast(bytes.data(), count_of(bytes.size(), "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD), "broadcast");
  }

  // MPI's blocking calls spin while they wait: an idle server's ranks would each burn a core.
  // A nonblocking broadcast polled for 1 ms, then with sleeps growing to 1 ms, costs a busy step
  // nothing and an idle rank almost nothing.
  void broadcast_patiently(std::span<std::byte> bytes, int root) override {
    if (root < 0 || root >= size_) fail("broadcast: root {} is not a rank (0..{})", root, size_ - 1);
    MPI_Request request;
    check(MPI_Ibcast(bytes.data(), count_of(bytes.size(), "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD, &request),
          "broadcast (MPI_Ibcast)");
    const auto start = std::chrono::steady_clock::now();
    auto nap = std::chrono::microseconds(50);
    for (;;) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "broadcast (MPI_Test)");
      if (done) return;
      if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1)) continue;
      std::this_thread::sleep_for(nap);
      nap = std::min<std::chrono::microseconds>(2 * nap, std::chrono::milliseconds(1));
    }
  }

  std::vector<std::byte> gather(std::span<const std::byte> local) override {
    const int count = count_of(local.size(), "gather");
    std::vector<std::byte> out;
    if (rank_ == 0) out.resize(local.size() * static_cast<std::size_t>(size_));
    check(MPI_Gather(local.data(), count, MPI_BYTE, rank_ == 0 ? out.data() : nullptr, count, MPI_BYTE, 0,
                     MPI_COMM_WORLD),
          "gather");
    return out;
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

  void abort(std::string_view reason) override {
    fmt::print(stderr, "rank {}: {}\n", rank_, reason);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; should it, this rank still ends
  }

 private:
  int rank_ = 0;
  int size_ = 1;
  bool owns_mpi_ = false;
  std::string library_;
  std::vector<float> gathered_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace dsv3::dist
