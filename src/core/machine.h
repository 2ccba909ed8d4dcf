#pragma once
// What machine a figure was measured on, and its memory-bandwidth roofline, for benchmarks
// (DESIGN.md: figures print the machine and a baseline measured in the same run).
#include <cstdint>
#include <string>

namespace dsv3 {

std::string cpu_model();     // "AMD EPYC 9R14" (from /proc/cpuinfo), or "unknown CPU"
std::string cpu_features();  // the SIMD features dsv3's kernels can use: "avx512f avx512bf16 avx2 fma"

// Read bandwidth in bytes/s: the thread pool streams a buffer of `bytes` (much larger than the
// caches), best of `repeats` passes.
double measure_read_bandwidth(std::int64_t bytes = std::int64_t{1} << 30, int repeats = 3);

// The largest CPU cache (the last level) in bytes, from sysfs; 0 when the system does not say.
std::int64_t last_level_cache_bytes();

// The machine's physical memory in bytes; 0 when the system does not say.
std::int64_t physical_memory_bytes();
// Memory the system could give this process now without swapping (MemAvailable: free memory plus
// reclaimable caches), in bytes; 0 when the system does not say.
std::int64_t available_memory_bytes();

// Peak resident memory of this process so far, in bytes.
std::int64_t peak_memory_bytes();
// Resident memory of this process now (VmRSS: anonymous and mapped file pages), in bytes; 0 when
// the system does not say.
std::int64_t resident_memory_bytes();

}  // namespace dsv3
