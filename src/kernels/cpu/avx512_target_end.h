// Ends what kernels/cpu/avx512_target_begin.h began: the file's target and the GCC 105593 diagnostics.
#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef DSV3_AVX512_PUSH_GCC
#undef DSV3_AVX512_PUSH_CLANG
#undef DSV3_AVX512_PRAGMA
#undef DSV3_AVX512_TARGET
