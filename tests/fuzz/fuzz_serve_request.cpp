// libFuzzer entry (built with -DDSV3_FUZZ=ON and clang), e.g.
//   nice -n 19 build-fuzz/fuzz_serve_request -max_total_time=300 tests/fuzz/corpus/serve_request
// See tests/serve/request_fuzz_input.h for what counts as a finding.
#include <cstddef>
#include <cstdint>

#include "../serve/request_fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dsv3::fuzz::serve_request_one_input(data, size);
  return 0;
}
