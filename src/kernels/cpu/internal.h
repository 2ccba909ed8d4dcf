#pragma once
// Shared by the CPU kernel files; not part of the op interface.
#include <cstddef>
#include <vector>

namespace dsv3::kernels {

// OpenBLAS is used single-threaded: the kernels parallelise over their own tasks.
void use_single_threaded_blas();

// A per-thread scratch buffer of at least `size` floats, reused across calls.
std::vector<float>& thread_buffer(std::size_t size);

}  // namespace dsv3::kernels
