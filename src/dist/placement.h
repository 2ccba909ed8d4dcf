#pragma once
// Redundant experts (DeepSeek-V3 paper, section 3.4; DeepSeek's EPLB, its global policy): from how
// many rows the router sent each expert of a layer, decide which experts each rank holds when every
// rank has E/N slots plus R redundant ones. The heaviest experts get the extra copies (a copy takes
// an equal share of its expert's rows), then the copies are packed onto ranks, heaviest first onto
// the lightest rank with a free slot. EPLB's hierarchical policy (expert groups kept on one node)
// is left out: with one node it is the global policy.
#include <cstdint>
#include <span>
#include <vector>

namespace dsv3::dist {

struct LayerPlacement {
  std::vector<std::vector<std::int64_t>> rank_experts;  // per rank, the expert of each slot (E/N + R)
  std::vector<std::int64_t> replicas;                   // per expert, how many ranks hold a copy (>= 1)
  std::vector<double> rank_load;                        // per rank, its expected rows under the plan
  std::vector<double> unplanned_load;                   // per rank, its rows with experts r*E/N.. only
};

// One layer's plan. `counts` holds the rows routed to each expert (non-negative, finite); throws
// when the expert count is not a multiple of `ranks` or an argument is out of range.
LayerPlacement place_experts(std::span<const double> counts, int ranks, int redundant_per_rank);

// Load imbalance over layers, as the slowest rank sets the pace of each layer: the sum over layers
// of the busiest rank's rows divided by the sum of the mean rank's rows (1 is perfect balance).
struct Imbalance {
  double planned = 1.0;
  double unplanned = 1.0;
};
Imbalance imbalance(std::span<const LayerPlacement> layers);

}  // namespace dsv3::dist
