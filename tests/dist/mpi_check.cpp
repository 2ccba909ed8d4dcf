// Runs under mpirun (CMakeLists.txt: Mpi.*): the communicator's collectives checked against what
// each rank can compute alone, and a failing rank ending the whole job.
//   dsv3_mpi_check collectives | throw | kill
#include <fmt/core.h>

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace {

using dsv3::dist::Communicator;

int failures = 0;

void expect(bool ok, const std::string& what, int rank) {
  if (ok) return;
  fmt::print(stderr, "rank {}: FAILED {}\n", rank, what);
  ++failures;
}

// Rank r's i-th value, chosen so that the order of addition shows in the bits: rank 0's large
// value cancels rank 1's only when they are added first; later ranks' small values then survive.
float value_of(int r, std::size_t i) {
  if (r == 0) return 1e8f + static_cast<float>(i % 89);
  if (r == 1) return -1e8f;
  return 0.37f * static_cast<float>(r) + 1e-3f * static_cast<float>(i % 97);
}

std::byte byte_of(int r, std::size_t i) { return static_cast<std::byte>((r * 37 + i * 11) & 0xff); }

void check_collectives(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();
  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  expect(launched != nullptr && std::atoi(launched) == size, "size() equals mpirun's -np", rank);
  expect(comm.description().find("MPI") != std::string::npos, "the factory chose MPI: " + comm.description(), rank);

  for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{1} << 20}) {
    std::vector<float> values(n);
    for (std::size_t i = 0; i < n; ++i) values[i] = value_of(rank, i);
    comm.all_reduce_sum(values);
    bool same = true;
    for (std::size_t i = 0; i < n; ++i) {
      float expected = value_of(0, i);  // every rank's data is known here: add it in rank order
      for (int r = 1; r < size; ++r) expected += value_of(r, i);
      same = same && std::memcmp(&expected, &values[i], sizeof(float)) == 0;
    }
    expect(same, fmt::format("all_reduce_sum of {} values equals the rank-order sum, bit for bit", n), rank);

    // Every rank holds the same bits: rank 0 gathers them all and compares.
    const std::vector<float> all = comm.gather(std::span<const float>(values));
    if (rank == 0) {
      expect(all.size() == n * static_cast<std::size_t>(size), "gather size", rank);
      for (int r = 1; r < size && all.size() == n * static_cast<std::size_t>(size); ++r)
        expect(std::memcmp(all.data(), all.data() + r * n, n * sizeof(float)) == 0,
               fmt::format("rank {} holds rank 0's all-reduce result ({} values)", r, n), rank);
    } else {
      expect(all.empty(), "gather returns nothing off rank 0", rank);
    }
  }

  for (int root = 0; root < size; ++root) {
    std::vector<std::byte> bytes(1001);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = byte_of(rank == root ? root : rank + 100, i);
    comm.broadcast(std::span<std::byte>(bytes), root);
    bool same = true;
    for (std::size_t i = 0; i < bytes.size(); ++i) same = same && bytes[i] == byte_of(root, i);
    expect(same, fmt::format("broadcast from root {}", root), rank);
  }
  std::vector<std::int64_t> typed = {rank == 0 ? 42 : -1, rank == 0 ? -7 : -1};
  comm.broadcast(std::span<std::int64_t>(typed), 0);
  expect(typed[0] == 42 && typed[1] == -7, "typed broadcast", rank);

  std::vector<std::byte> local(13);
  for (std::size_t i = 0; i < local.size(); ++i) local[i] = byte_of(rank, i);
  const std::vector<std::byte> gathered = comm.gather(std::span<const std::byte>(local));
  if (rank == 0) {
    bool same = gathered.size() == local.size() * static_cast<std::size_t>(size);
    for (int r = 0; r < size && same; ++r)
      for (std::size_t i = 0; i < local.size(); ++i) same = same && gathered[r * local.size() + i] == byte_of(r, i);
    expect(same, "gather concatenates in rank order", rank);
  }

  bool refused = false;
  try {
    std::vector<std::byte> none(1);
    comm.broadcast(std::span<std::byte>(none), size);
  } catch (const dsv3::Error& e) {
    refused = std::string(e.what()).find("broadcast") != std::string::npos;
  }
  expect(refused, "a broadcast from a root that is not a rank is an error naming the op", rank);

  // An error inside MPI: the other ranks send rank 0 more bytes than it has room for (it sizes the
  // result from its own part), so MPI_Gather fails there with a truncation, which must come back
  // as a dsv3 error naming the operation.
  std::vector<std::byte> uneven(rank == 0 ? 4 : 8, std::byte{1});
  std::string message;
  try {
    comm.gather(std::span<const std::byte>(uneven));
  } catch (const dsv3::Error& e) {
    message = e.what();
  }
  if (rank == 0)
    expect(message.starts_with("gather: MPI error"), "a truncated gather is a dsv3 error naming it: " + message, rank);
  comm.barrier();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "collectives" && mode != "throw" && mode != "kill") {
    fmt::print(stderr, "usage: dsv3_mpi_check collectives|throw|kill\n");
    return 2;
  }
  auto comm = dsv3::dist::make_communicator();
  return dsv3::dist::run_rank(*comm, [&] {
    const int last = comm->size() - 1;
    if (mode == "collectives") {
      check_collectives(*comm);
      fmt::print("rank {} of {}: {} ({})\n", comm->rank(), comm->size(), failures == 0 ? "ok" : "FAILED",
                 comm->description());
      return failures == 0 ? 0 : 1;
    }
    // The last rank fails while the others wait in a collective that it never joins: without the
    // abort they would wait forever.
    if (comm->rank() == last) {
      if (mode == "throw") dsv3::fail("deliberate failure while loading its part");
      std::raise(SIGKILL);
    }
    fmt::print("rank {}: waiting in an all-reduce\n", comm->rank());
    std::fflush(stdout);
    std::vector<float> values(16, 1.0f);
    comm->all_reduce_sum(values);
    fmt::print("rank {}: finished, which it should not have\n", comm->rank());
    return 0;
  });
}
