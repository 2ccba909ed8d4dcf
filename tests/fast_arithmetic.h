#pragma once
// Fast arithmetic for one test's scope: oneDNN's GEMM (FP32, or BF16 inputs) from `min_rows` rows
// on (nullopt: the measured threshold); exact arithmetic and that threshold come back when it ends.
#include <cstdint>
#include <optional>

#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

namespace dsv3::test {

class FastArithmetic {
 public:
  FastArithmetic(bool bf16, std::optional<std::int64_t> min_rows)
      : was_exact_(kernels::exact_arithmetic()), was_bf16_(kernels::gemm_uses_bf16()) {
    kernels::set_exact_arithmetic(false);
    kernels::set_gemm_bf16(bf16);
    kernels::set_min_gemm_rows_for_testing(min_rows);
  }
  ~FastArithmetic() {
    kernels::set_min_gemm_rows_for_testing(std::nullopt);
    kernels::set_gemm_bf16(was_bf16_);
    kernels::set_exact_arithmetic(was_exact_);
  }
  FastArithmetic(const FastArithmetic&) = delete;
  FastArithmetic& operator=(const FastArithmetic&) = delete;

 private:
  bool was_exact_, was_bf16_;
};

}  // namespace dsv3::test
