#pragma once
// Pearson's chi-square goodness-of-fit test for the sampler tests.
//
// Why this threshold: with a fixed seed each test is deterministic; the question is whether a
// correct sampler could fail it. Under a correct sampler the statistic follows a chi-square law
// with (non-empty cells - 1) degrees of freedom, so a critical value at the 0.1% upper tail means a
// correct implementation fails for at most 1 seed in 1000 — and the seeds here were not chosen to
// pass. A wrong distribution is caught with room to spare: a shift of only 0.01 in one cell of
// probability 0.2 adds about N * 0.01² / 0.2 = 50 to the statistic at N = 100,000, far above the
// critical values below (each test also shows its check can fail by testing a wrong distribution).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace dsv3::test {

// Upper 0.1% points of the chi-square distribution, for 1..20 degrees of freedom (standard
// tables; for even degrees they agree with the closed form e^{-x/2} Σ_{i<k/2} (x/2)^i / i!).
inline double chi_square_critical_0_001(int degrees_of_freedom) {
  static const double table[] = {10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322,
                                 26.124, 27.877, 29.588, 31.264, 32.909, 34.528, 36.123,
                                 37.697, 39.252, 40.790, 42.312, 43.820, 45.315};
  EXPECT_GE(degrees_of_freedom, 1);
  EXPECT_LE(degrees_of_freedom, 20);
  return table[degrees_of_freedom - 1];
}

struct ChiSquare {
  double statistic = 0.0;
  int degrees_of_freedom = 0;
  std::int64_t impossible_hits = 0;  // draws that landed on a cell of probability zero

  bool passes() const {
    return impossible_hits == 0 && statistic < chi_square_critical_0_001(degrees_of_freedom);
  }
};

// Cells of probability zero carry no degree of freedom; a single draw there fails on its own.
inline ChiSquare chi_square(const std::vector<std::int64_t>& counts, const std::vector<double>& probabilities) {
  EXPECT_EQ(counts.size(), probabilities.size());
  std::int64_t total = 0;
  for (const auto count : counts) total += count;
  ChiSquare result;
  int cells = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (probabilities[i] <= 0.0) {
      result.impossible_hits += counts[i];
      continue;
    }
    const double expected = probabilities[i] * static_cast<double>(total);
    // The chi-square approximation needs about 5 expected draws per cell.
    EXPECT_GE(expected, 5.0) << "cell " << i << ": too few draws for a chi-square test";
    result.statistic += (counts[i] - expected) * (counts[i] - expected) / expected;
    ++cells;
  }
  result.degrees_of_freedom = cells - 1;
  return result;
}

}  // namespace dsv3::test
