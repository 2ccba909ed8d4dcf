#include "dist/communicator.h"

#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "core/error.h"

#ifdef DSV3_HAVE_MPI
#include "dist/mpi/mpi_communicator.h"
#endif

namespace dsv3::dist {

void SingleProcess::broadcast(std::span<std::byte>, int root) {
  if (root != 0) fail("broadcast: root {} is not a rank of a single process", root);
}

std::vector<std::byte> SingleProcess::gather(std::span<const std::byte> local) {
  return std::vector<std::byte>(local.begin(), local.end());
}

void SingleProcess::abort(std::string_view reason) {
  fmt::print(stderr, "rank 0: {}\n", reason);
  std::fflush(stderr);
  std::_Exit(1);
}

bool built_with_mpi() {
#ifdef DSV3_HAVE_MPI
  return true;
#else
  return false;
#endif
}

int launched_ranks() {
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (size == nullptr || *size == '\0') return 1;
  char* end = nullptr;
  const long ranks = std::strtol(size, &end, 10);
  if (*end != '\0' || ranks < 1 || ranks > 1 << 20) fail("OMPI_COMM_WORLD_SIZE='{}' is not a rank count", size);
  return static_cast<int>(ranks);
}

std::unique_ptr<Communicator> make_communicator() {
  const bool under_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
#ifdef DSV3_HAVE_MPI
  if (under_mpirun) return make_mpi_communicator();
#else
  if (under_mpirun && launched_ranks() > 1)
    fail("launched by mpirun with {} ranks, but this dsv3 was built without MPI (configure with DSV3_MPI=ON "
         "after installing Debian's libopenmpi-dev)",
         launched_ranks());
#endif
  return std::make_unique<SingleProcess>();
}

int run_rank(Communicator& communicator, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    communicator.abort(e.what());
  } catch (...) {
    communicator.abort("unknown exception");
  }
  return 1;  // not reached: abort() ends the process
}

}  // namespace dsv3::dist
