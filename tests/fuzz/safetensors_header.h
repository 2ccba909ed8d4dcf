#pragma once
// The fuzz body for the safetensors header parser, shared by the libFuzzer target
// fuzz_safetensors_header (CMake option DSV3_FUZZ) and the deterministic gtest run over the seed
// corpus (Fuzz.SafetensorsHeaderSeedCorpusAndMutations).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace dsv3::fuzz {

// Runs SafetensorsFile::parse_header on `header` for a data section of `data_size` bytes. Returns
// true when the header is accepted and false when it is rejected with dsv3::Error. Throws
// std::logic_error when an accepted header breaks what the parser promises (tensors inside the
// data section, byte sizes matching shape x dtype, no overlaps); any other exception is a bug too.
bool check_safetensors_header(std::string_view header, std::size_t data_size);

// `data` read as a whole .safetensors file: 8-byte little-endian header length, header, data.
// A length that does not fit is folded into range, so mutated inputs still reach the JSON parser.
bool safetensors_header_one_input(const std::uint8_t* data, std::size_t size);

}  // namespace dsv3::fuzz
