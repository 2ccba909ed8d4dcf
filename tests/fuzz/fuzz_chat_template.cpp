// libFuzzer entry (built with -DDSV3_FUZZ=ON and clang), e.g.
//   nice -n 19 build-fuzz/fuzz_chat_template -max_total_time=300 tests/fuzz/corpus/chat_template
// See chat_template_input.h for what counts as a finding.
#include <cstddef>
#include <cstdint>

#include "chat_template_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dsv3::fuzz::chat_template_one_input(data, size);
  return 0;
}
