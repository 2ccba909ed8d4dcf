#include "safetensors_header.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsv3::fuzz {
namespace {

[[noreturn]] void broken(const std::string& what) {
  throw std::logic_error("parse_header accepted a header that breaks its contract: " + what);
}

}  // namespace

bool check_safetensors_header(std::string_view header, std::size_t data_size) {
  std::map<std::string, TensorView> tensors;
  try {
    tensors = SafetensorsFile::parse_header(header, data_size, "fuzz-input.safetensors");
  } catch (const Error&) {
    return false;
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [name, view] : tensors) {
    if (view.name != name) broken("tensor " + name + " carries the name " + view.name);
    std::int64_t partial = 1;  // numel() multiplies left to right in int64; none may overflow
    for (auto dim : view.shape) {
      if (dim < 0) broken("tensor " + name + " has a negative dimension");
      if (__builtin_mul_overflow(partial, dim, &partial)) broken("tensor " + name + " has numel() overflowing int64");
    }
    // parse_header leaves the offset into the data section in `data`; open() rebases it.
    const auto begin = reinterpret_cast<std::uint64_t>(view.data);
    if (begin > data_size || view.nbytes > data_size - begin) broken("tensor " + name + " runs past the data");
    if (static_cast<std::uint64_t>(view.numel()) * dtype_size(view.dtype) != view.nbytes)
      broken("tensor " + name + " has a byte size not matching its shape and dtype");
    if (view.nbytes > 0) ranges.emplace_back(begin, begin + view.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) broken("two tensors overlap");
  return true;
}

bool safetensors_header_one_input(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return false;
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | data[i];
  const std::size_t available = size - 8;
  if (header_size > available) header_size %= available + 1;
  const std::string_view header(reinterpret_cast<const char*>(data + 8), header_size);
  return check_safetensors_header(header, available - header_size);
}

}  // namespace dsv3::fuzz
