#pragma once
// The MPI communicator (Open MPI from Debian), compiled only when the build has MPI (DSV3_MPI).
#include <memory>

#include "dist/communicator.h"

namespace dsv3::dist {

// Initialises MPI (once per process) and finalises it when the communicator goes.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace dsv3::dist
