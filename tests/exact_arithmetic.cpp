// The test binary computes in exact arithmetic (FP32 activations throughout) unless a test asks
// for fast mode itself: the parity, decode and greedy tests hold today's tolerances. Set in the
// environment too, so the `dsv3` processes the CLI tests start inherit it.
#include <cstdlib>

#include "kernels/ops.h"

namespace {

const bool kExact = [] {
  ::setenv("DSV3_EXACT", "1", 1);
  dsv3::kernels::set_exact_arithmetic(true);
  return true;
}();

}  // namespace
