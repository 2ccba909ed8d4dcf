// Compiles the rest of an AVX-512 kernel file, up to its #include "kernels/cpu/avx512_target_end.h",
// for the target string DSV3_AVX512_TARGET, which the file defines just before including this (each
// file names the extensions its kernels use). Included once per file, after the standard headers and
// before the AVX-512 helper headers; not a header in the usual sense, so no include guard.
#if !defined(DSV3_AVX512_TARGET)
#error "define DSV3_AVX512_TARGET before including kernels/cpu/avx512_target_begin.h"
#endif
#define DSV3_AVX512_PRAGMA(...) _Pragma(#__VA_ARGS__)
// A level between, so that the target string's macro is expanded before it is quoted.
#define DSV3_AVX512_PUSH_CLANG(extensions) \
  DSV3_AVX512_PRAGMA(clang attribute push(__attribute__((target(extensions))), apply_to = function))
#define DSV3_AVX512_PUSH_GCC(extensions) DSV3_AVX512_PRAGMA(GCC target(extensions))
#if defined(__clang__)  // clang ignores GCC's target pragma; this is its spelling of the same
DSV3_AVX512_PUSH_CLANG(DSV3_AVX512_TARGET)
#else
#pragma GCC push_options
DSV3_AVX512_PUSH_GCC(DSV3_AVX512_TARGET)
#endif
// GCC 12's AVX-512 headers build some results from a self-initialised "undefined" register, which
// -Wuninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
