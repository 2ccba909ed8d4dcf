#pragma once
// How ranks talk (DESIGN.md, dist/): the few collectives DeepSeek-V3 needs across ranks (an
// all-reduce after attention and after the MoE, a broadcast of inputs, a gather of results), behind
// one small interface. MPI implements it now (dist/mpi), one process implements it trivially, and a
// NCCL version can implement the same calls later. Nothing here knows about the model.
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace dsv3::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A name for messages: "single process", "MPI (Open MPI 4.1.4)".
  virtual std::string description() const = 0;

  // values[i] = sum over ranks of values[i], the same bits on every rank: the sum is taken in rank
  // order (((rank 0 + rank 1) + rank 2) + ...), so a run is reproducible whatever the transport.
  virtual void all_reduce_sum(std::span<float> values) = 0;
  // Every rank's `bytes` become root's.
  virtual void broadcast(std::span<std::byte> bytes, int root) = 0;
  // The same, for a wait that may last (a rank idle until rank 0's next step): past a moment, the
  // waiting ranks sleep between polls instead of spinning a core. Every rank must call this one,
  // not broadcast(), for the same message.
  virtual void broadcast_patiently(std::span<std::byte> bytes, int root) { broadcast(bytes, root); }
  // Rank 0 receives every rank's `local` (all the same length), concatenated in rank order; the
  // other ranks receive an empty vector.
  virtual std::vector<std::byte> gather(std::span<const std::byte> local) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job with a non-zero status, after printing "rank R: reason" once (from
  // this rank). Never returns.
  [[noreturn]] virtual void abort(std::string_view reason) = 0;

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  void broadcast(std::span<T> values, int root) {
    broadcast(std::as_writable_bytes(values), root);
  }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  std::vector<T> gather(std::span<const T> local) {
    const std::vector<std::byte> bytes = gather(std::as_bytes(local));
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  }
};

// One process: rank 0 of 1; every collective is the identity.
class SingleProcess final : public Communicator {
 public:
  using Communicator::broadcast;
  using Communicator::gather;
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string description() const override { return "single process"; }
  void all_reduce_sum(std::span<float>) override {}
  void broadcast(std::span<std::byte>, int root) override;
  std::vector<std::byte> gather(std::span<const std::byte> local) override;
  void barrier() override {}
  [[noreturn]] void abort(std::string_view reason) override;
};

// Whether this build can run across ranks (configured with DSV3_MPI and MPI found).
bool built_with_mpi();

// The number of ranks the launcher started, from the environment mpirun gives each process
// (OMPI_COMM_WORLD_SIZE); 1 when not launched by mpirun.
int launched_ranks();

// MPI when launched under mpirun and the build has it, else one process. Launched under mpirun
// with several ranks by a build without MPI is an error (every rank would think it is alone).
std::unique_ptr<Communicator> make_communicator();

// Runs `body` on this rank; an exception escaping it ends every rank through abort(), so that no
// rank waits forever in a collective for a rank that has failed. Returns body's status otherwise.
int run_rank(Communicator& communicator, const std::function<int()>& body);

}  // namespace dsv3::dist
