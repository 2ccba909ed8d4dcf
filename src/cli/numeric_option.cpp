#include "cli/numeric_option.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/machine.h"

namespace dsv3::cli {
namespace {

// What std::from_chars reads: no leading '+', which a user may reasonably write.
std::string_view without_plus(std::string_view text) {
  return text.size() > 1 && text[0] == '+' && text[1] != '-' ? text.substr(1) : text;
}

template <typename Wide>
NumberCheck<Wide> check_whole(std::string_view text, Wide low, Wide high) {
  NumberCheck<Wide> result;
  std::string_view digits = without_plus(text);
  // A negative number for an unsigned option is out of its range, not malformed.
  const bool negative = std::is_unsigned_v<Wide> && digits.size() > 1 && digits[0] == '-';
  if (negative) digits.remove_prefix(1);  // "-0" is 0
  Wide value{};
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  const bool whole = !digits.empty() && end == digits.data() + digits.size();
  if (!whole || (error != std::errc() && error != std::errc::result_out_of_range)) {
    result.problem = NumberProblem::malformed;
  } else if ((negative && value != 0) || error == std::errc::result_out_of_range || value < low || value > high) {
    result.problem = NumberProblem::out_of_range;
  } else {
    result.value = value;
    result.canonical = fmt::format("{}", value);
  }
  return result;
}

}  // namespace

std::string shown_argument(std::string_view text) {
  const bool plain = !text.empty() && text.find_first_of(" \t\n\r\"") == std::string_view::npos;
  return plain ? std::string(text) : fmt::format("\"{}\"", text);
}

NumberCheck<std::int64_t> check_integer(std::string_view text, std::int64_t low, std::int64_t high) {
  return check_whole<std::int64_t>(text, low, high);
}

NumberCheck<std::uint64_t> check_unsigned(std::string_view text, std::uint64_t low, std::uint64_t high) {
  return check_whole<std::uint64_t>(text, low, high);
}

NumberCheck<double> check_real(std::string_view text, double low, double high) {
  NumberCheck<double> result;
  const std::string_view digits = without_plus(text);
  double value = 0.0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  const bool whole = !digits.empty() && end == digits.data() + digits.size();
  if (!whole || (error != std::errc() && error != std::errc::result_out_of_range) || std::isnan(value)) {
    result.problem = NumberProblem::malformed;
    return result;
  }
  if (error == std::errc::result_out_of_range) {
    // from_chars leaves the value alone; strtod tells overflow (±huge) from underflow (1e-400),
    // and an underflow is zero to us.
    value = std::strtod(std::string(digits).c_str(), nullptr);
    if (std::abs(value) >= 1.0) value = std::copysign(HUGE_VAL, value);
    else value = 0.0;
  }
  if (!(value >= low && value <= high)) {
    result.problem = NumberProblem::out_of_range;
  } else {
    result.value = value;
    result.canonical = fmt::format("{}", value);
  }
  return result;
}

std::vector<std::int32_t> parse_token_ids(const std::string& option, const std::string& list) {
  std::vector<std::int32_t> ids;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    std::string_view item = std::string_view(list).substr(start, comma - start);
    const std::size_t first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    item = first == std::string_view::npos ? std::string_view() : item.substr(first, last - first + 1);
    const NumberCheck<std::int32_t> id = check_number<std::int32_t>(item, 0, std::numeric_limits<std::int32_t>::max());
    if (!id.value)
      fail("{}: {} (expected a comma-separated list of token ids such as 1,2,3)", option,
           id.problem == NumberProblem::malformed ? fmt::format("\"{}\" is not a token id", item)
                                                                         : id.reason);
    ids.push_back(*id.value);
    start = comma + 1;
  }
  return ids;
}

void check_cache_fits(const std::string& what, std::int64_t tokens, std::int64_t bytes_per_token) {
  const double bytes = static_cast<double>(tokens) * static_cast<double>(bytes_per_token);
  const std::int64_t memory = physical_memory_bytes();
  if (memory > 0 && bytes > static_cast<double>(memory))
    fail("{}: a KV cache of {} tokens at {} bytes per token takes {:.3g} GB, more than this machine's {:.3g} GB of "
         "memory",
         what, tokens, bytes_per_token, bytes / 1e9, static_cast<double>(memory) / 1e9);
}

}  // namespace dsv3::cli
