#pragma once
// The random stream of one sequence. xoshiro256** (Blackman & Vigna) seeded through SplitMix64:
// fast, statistically strong, and its whole state is four words, so a copy taken before a
// speculative step replays exactly the same draws.
#include <array>
#include <cstdint>
#include <optional>

namespace dsv3 {

class Rng {
 public:
  explicit Rng(std::uint64_t seed);

  // A seeded stream when `seed` is set (same seed, same draws); otherwise one seeded from the
  // operating system's entropy source.
  static Rng from_seed_or_entropy(std::optional<std::uint64_t> seed);

  std::uint64_t next_u64();
  // Uniform in [0, 1), with the full 53 bits of a double's mantissa.
  double uniform();

  bool operator==(const Rng&) const = default;

 private:
  std::array<std::uint64_t, 4> state_;
};

}  // namespace dsv3
