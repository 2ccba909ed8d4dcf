// libFuzzer entry for the safetensors header parser (built with -DDSV3_FUZZ=ON and clang):
//   fuzz_safetensors_header -max_total_time=30 tests/fuzz/corpus/safetensors_header
// Only dsv3::Error is an accepted outcome; safetensors_header_one_input catches it, so any
// exception that reaches libFuzzer, a sanitizer report or a crash is a finding.
#include <cstddef>
#include <cstdint>

#include "safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dsv3::fuzz::safetensors_header_one_input(data, size);
  return 0;
}
