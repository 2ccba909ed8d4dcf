// Compiles the rest of an AVX2 kernel file, up to its #include "kernels/cpu/avx2_target_end.h", for
// AVX2 + FMA + F16C (the set linear.cpp checks before it picks the AVX2 kernels), as
// avx512_target_begin.h does for AVX-512. Included once per file, after the standard headers and
// before the AVX2 helper headers; not a header in the usual sense, so no include guard.
#if defined(__clang__)  // clang ignores GCC's target pragma; this is its spelling of the same
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
