#pragma once
// Shared by the CPU kernel files; not part of the op interface.
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/matrix.h"

namespace dsv3::kernels {

// OpenBLAS is used single-threaded: the kernels parallelise over their own tasks.
void use_single_threaded_blas();

// A per-thread scratch buffer of at least `size` floats, reused across calls.
std::vector<float>& thread_buffer(std::size_t size);

// One instruction set's weight-streaming kernels (linear_scalar.cpp, linear_avx2.cpp,
// linear_avx512.cpp). Each lives in its own file so that its template instantiations, compiled
// for its target, stay internal to that file.
struct WeightKernels {
  // y[m * weight.rows + n] = x[m, :] · weight[n, :] for m < rows and n in [n_begin, n_end): each
  // weight row is read once from memory and used against every activation row.
  void (*gemv)(const float* x, std::int64_t rows, const Matrix& weight, std::int64_t n_begin, std::int64_t n_end,
               float* y);
  // Rows [begin, end) of `weight` as float32 into out[(end - begin) * weight.cols].
  void (*dequantize)(const Matrix& weight, std::int64_t begin, std::int64_t end, float* out);
};
// Calls body(std::integral_constant<DType, D>{}) for the weight's storage dtype D: the one switch
// through which each instruction set's file reaches its kernels instantiated per weight dtype.
template <typename Body>
void for_weight_dtype(const Matrix& weight, Body&& body) {
  switch (weight.dtype) {
    case DType::F32: return body(std::integral_constant<DType, DType::F32>{});
    case DType::BF16: return body(std::integral_constant<DType, DType::BF16>{});
    case DType::F16: return body(std::integral_constant<DType, DType::F16>{});
    case DType::F8_E4M3: return body(std::integral_constant<DType, DType::F8_E4M3>{});
    default: fail("{}: dtype {} is not a weight dtype", weight.name, dtype_name(weight.dtype));
  }
}

const WeightKernels& scalar_weight_kernels();
const WeightKernels* avx2_weight_kernels();    // nullptr when the build is not for x86-64
const WeightKernels* avx512_weight_kernels();  // nullptr when the build is not for x86-64

}  // namespace dsv3::kernels
