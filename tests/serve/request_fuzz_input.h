#pragma once
// The fuzz body for the server's request parser, shared by the libFuzzer target
// (fuzz_serve_request; CMake option DSV3_FUZZ) and its seeded run in the suite
// (tests/serve/test_request_fuzz.cpp). The first byte picks the route ('c' chat, 'p' completions,
// 't' /tokenize, 'd' /detokenize), the rest is the body. Exactly two outcomes are accepted: a
// parsed request, or an ApiError with a 4xx status; anything else escaping is a finding.
#include <cstddef>
#include <cstdint>

namespace dsv3::fuzz {

// True when the request parsed, false when it was refused with a 4xx ApiError.
bool serve_request_one_input(const std::uint8_t* data, std::size_t size);

}  // namespace dsv3::fuzz
