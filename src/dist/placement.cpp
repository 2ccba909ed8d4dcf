#include "dist/placement.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace dsv3::dist {

LayerPlacement place_experts(std::span<const double> counts, int ranks, int redundant_per_rank) {
  const auto experts = static_cast<std::int64_t>(counts.size());
  if (ranks < 1) fail("placement: --ranks {} must be at least 1", ranks);
  if (redundant_per_rank < 0) fail("placement: --redundant {} must not be negative", redundant_per_rank);
  if (experts == 0) fail("placement: a layer has no experts");
  if (experts % ranks != 0)
    fail("placement: {} experts do not split evenly over {} ranks (each rank needs the same number of slots)",
         experts, ranks);
  for (std::int64_t e = 0; e < experts; ++e)
    if (!std::isfinite(counts[e]) || counts[e] < 0) fail("placement: expert {} has count {}", e, counts[e]);

  LayerPlacement out;
  const std::int64_t own = experts / ranks;
  const std::int64_t slots = own + redundant_per_rank;

  // Replicate: each extra slot goes to the expert whose copies now carry the most rows each (ties to
  // the lower expert id, so a plan is a function of its input).
  out.replicas.assign(experts, 1);
  for (std::int64_t extra = 0; extra < static_cast<std::int64_t>(ranks) * redundant_per_rank; ++extra) {
    std::int64_t heaviest = 0;
    for (std::int64_t e = 1; e < experts; ++e)
      if (counts[e] / out.replicas[e] > counts[heaviest] / out.replicas[heaviest]) heaviest = e;
    ++out.replicas[heaviest];
  }

  // Pack: the copies, heaviest first (ties by expert id), each onto the lightest rank that has a
  // free slot (ties to the lower rank).
  struct Copy {
    std::int64_t expert;
    double load;
  };
  std::vector<Copy> copies;
  for (std::int64_t e = 0; e < experts; ++e)
    for (std::int64_t c = 0; c < out.replicas[e]; ++c) copies.push_back({e, counts[e] / out.replicas[e]});
  std::stable_sort(copies.begin(), copies.end(), [](const Copy& a, const Copy& b) { return a.load > b.load; });
  out.rank_experts.assign(ranks, {});
  out.rank_load.assign(ranks, 0.0);
  for (const Copy& copy : copies) {
    int lightest = -1;
    for (int r = 0; r < ranks; ++r) {
      if (static_cast<std::int64_t>(out.rank_experts[r].size()) == slots) continue;
      if (lightest < 0 || out.rank_load[r] < out.rank_load[lightest]) lightest = r;
    }
    out.rank_experts[lightest].push_back(copy.expert);
    out.rank_load[lightest] += copy.load;
  }

  // Without a plan, rank r holds experts [r E/N, (r+1) E/N), as DeepSeek's reference inference does.
  out.unplanned_load.assign(ranks, 0.0);
  for (std::int64_t e = 0; e < experts; ++e) out.unplanned_load[e / own] += counts[e];
  return out;
}

Imbalance imbalance(std::span<const LayerPlacement> layers) {
  double planned_max = 0, unplanned_max = 0, mean = 0;
  for (const LayerPlacement& layer : layers) {
    planned_max += *std::max_element(layer.rank_load.begin(), layer.rank_load.end());
    unplanned_max += *std::max_element(layer.unplanned_load.begin(), layer.unplanned_load.end());
    mean += std::accumulate(layer.unplanned_load.begin(), layer.unplanned_load.end(), 0.0) /
            static_cast<double>(layer.unplanned_load.size());
  }
  Imbalance out;
  if (mean > 0) {
    out.planned = planned_max / mean;
    out.unplanned = unplanned_max / mean;
  }
  return out;
}

}  // namespace dsv3::dist
