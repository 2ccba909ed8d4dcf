// The backward pass's GEMMs through oneDNN's sgemm. OpenBLAS (Debian's 0.3.21) picks its kernels by
// CPU model, and on CPUs it does not know (this project's virtualised Xeons) it falls back to its
// SSE3 "Prescott" kernels unless OPENBLAS_CORETYPE says otherwise; oneDNN chooses its JIT kernels
// by the instruction set the CPU reports, so it runs AVX2 / AVX-512 code wherever they exist.
// Called inside our own thread pool's tasks, so oneDNN runs single-threaded on each thread.
#include <dnnl.h>
#include <omp.h>

#include "core/error.h"
#include "train/blocks.h"

namespace dsv3::train {

void gemm(bool a_transposed, bool b_transposed, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  thread_local const bool single_threaded = [] {
    omp_set_num_threads(1);
    return true;
  }();
  (void)single_threaded;
  if (m == 0 || n == 0) return;
  const dnnl_status_t status = dnnl_sgemm(a_transposed ? 'T' : 'N', b_transposed ? 'T' : 'N', m, n, k, alpha, a, lda,
                                          b, ldb, beta, c, ldc);
  if (status != dnnl_success)
    fail("oneDNN sgemm {}x{}x{} (transposed a {}, b {}): status {}", m, n, k, a_transposed, b_transposed,
         static_cast<int>(status));
}

}  // namespace dsv3::train
