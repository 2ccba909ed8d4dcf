#pragma once
// Numbers on the command line, one way for every subcommand: the text must be a decimal number
// that the option's type holds and that lies in the option's range; otherwise the error names the
// option and the range, as CLI11 prints it before any command runs:
//   --top-k: 99999999999 is out of range [0, 2147483647]
// Floating-point options refuse nan and infinities. The accepted text is handed on to CLI11 in
// canonical form, so its own conversion (which reads "010" as octal) sees exactly the value checked.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace dsv3::cli {

// Reads `text` as a T in [low, high]: the value and its canonical decimal text, or the reason it
// does not fit ("abc is not an integer", "5000 is out of range [1, 4096]").
enum class NumberProblem { none, malformed, out_of_range };

template <typename T>
struct NumberCheck {
  std::optional<T> value;
  std::string canonical;
  NumberProblem problem = NumberProblem::none;
  std::string reason;
};

// The type-independent work: integers through int64 / uint64, floating point through double.
// They fill value, canonical and problem; check_number words the reason.
NumberCheck<std::int64_t> check_integer(std::string_view text, std::int64_t low, std::int64_t high);
NumberCheck<std::uint64_t> check_unsigned(std::string_view text, std::uint64_t low, std::uint64_t high);
NumberCheck<double> check_real(std::string_view text, double low, double high);
// `text` as the messages show it: quoted when empty or holding blanks or quotes.
std::string shown_argument(std::string_view text);

namespace detail {
template <typename T>
struct Unwrap {
  using type = T;
};
template <typename T>
struct Unwrap<std::optional<T>> {
  using type = T;
};
}  // namespace detail

// The check and canonical form for a T, its reason showing the bounds as a T prints them (a
// float's largest value is 3.4028235e+38, not its 39 digits as a double).
template <typename T>
NumberCheck<T> check_number(std::string_view text, T low, T high) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>, "check_number: numbers only");
  NumberCheck<T> result;
  auto take = [&](const auto& wide) {
    result.canonical = wide.canonical;
    result.problem = wide.problem;
    if (wide.value) result.value = static_cast<T>(*wide.value);
  };
  if constexpr (std::is_floating_point_v<T>)
    take(check_real(text, static_cast<double>(low), static_cast<double>(high)));
  else if constexpr (std::is_signed_v<T>)
    take(check_integer(text, low, high));
  else
    take(check_unsigned(text, low, high));
  if (result.problem == NumberProblem::malformed)
    result.reason = fmt::format("{} is not {}", shown_argument(text),
                                std::is_floating_point_v<T> ? "a number" : "an integer");
  else if (result.problem == NumberProblem::out_of_range)
    result.reason = fmt::format("{} is out of range [{}, {}]", shown_argument(text), low, high);
  return result;
}

// Adds `--name` bound to `value` (a number or an optional number) accepting [low, high]; the
// bounds default to everything the type holds.
template <typename Value, typename T = typename detail::Unwrap<Value>::type>
CLI::Option* add_number(CLI::App& app, const std::string& name, Value& value, const std::string& description,
                        std::type_identity_t<T> low = std::numeric_limits<T>::lowest(),
                        std::type_identity_t<T> high = std::numeric_limits<T>::max()) {
  CLI::Validator in_range(
      [low, high](std::string& text) {
        NumberCheck<T> check = check_number<T>(text, low, high);
        if (check.value) text = check.canonical;
        return check.reason;
      },
      fmt::format("in [{}, {}]", low, high));
  return app.add_option(name, value, description)->transform(in_range);
}

// "12, 7,0" -> {12, 7, 0}: a comma-separated list of token ids, each in [0, 2^31 - 1]; errors
// name `option` and the item at fault.
std::vector<std::int32_t> parse_token_ids(const std::string& option, const std::string& list);

// Fails unless a KV cache of `tokens` tokens at `bytes_per_token` each fits in this machine's
// memory; `what` says which option asked for it ("--cache-tokens 99999999999").
void check_cache_fits(const std::string& what, std::int64_t tokens, std::int64_t bytes_per_token);

}  // namespace dsv3::cli
