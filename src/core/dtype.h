#pragma once
// Element types as safetensors names them, with their sizes.
#include <cstddef>
#include <optional>
#include <string_view>

namespace dsv3 {

enum class DType { F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8, BOOL };

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);

}  // namespace dsv3
