// dsv3 placement: redundant experts from router statistics (dist/placement.h, DeepSeek's EPLB).
//   --stats FILE   {"layers": [[rows routed to expert 0, expert 1, ...], ...]}, one list per MoE layer
//                  (other keys, such as those dsv3 generate --expert-stats adds, are ignored); given
//                  several times, the files' counts are summed
//   --out FILE     the plan as JSON: per layer, each rank's experts (one per slot) and each expert's
//                  replica count
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "dist/placement.h"

namespace dsv3::cli {
namespace {

// A JSON file; errors name it and what it should hold.
nlohmann::json read_json(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open the {}", path, what);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not JSON: {}", path, e.what());
  }
}

std::vector<std::vector<double>> read_stats(const std::string& path) {
  const nlohmann::json json = read_json(path, "expert statistics");
  if (!json.is_object() || !json.contains("layers") || !json["layers"].is_array() || json["layers"].empty())
    fail("{}: expected {{\"layers\": [[count per expert], ...]}} with at least one layer", path);
  std::vector<std::vector<double>> layers;
  for (std::size_t l = 0; l < json["layers"].size(); ++l) {
    const nlohmann::json& counts = json["layers"][l];
    if (!counts.is_array() || counts.empty()) fail("{}: layers[{}] is not a non-empty list of counts", path, l);
    std::vector<double> row;
    for (std::size_t e = 0; e < counts.size(); ++e) {
      if (!counts[e].is_number() || !std::isfinite(counts[e].get<double>()) || counts[e].get<double>() < 0)
        fail("{}: layers[{}][{}] = {} is not a non-negative count", path, l, e, counts[e].dump());
      row.push_back(counts[e].get<double>());
    }
    if (!layers.empty() && row.size() != layers.front().size())
      fail("{}: layers[{}] has {} experts, layers[0] has {}", path, l, row.size(), layers.front().size());
    layers.push_back(std::move(row));
  }
  return layers;
}

double max_over_mean(const std::vector<double>& load) {
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(load.size());
  return mean > 0 ? *std::max_element(load.begin(), load.end()) / mean : 1.0;
}

// The counts of every file, summed; the files must have the same layers and experts.
std::vector<std::vector<double>> read_all_stats(const std::vector<std::string>& paths) {
  std::vector<std::vector<double>> total = read_stats(paths.front());
  for (std::size_t f = 1; f < paths.size(); ++f) {
    const auto layers = read_stats(paths[f]);
    if (layers.size() != total.size() || layers.front().size() != total.front().size())
      fail("{}: {} layers of {} experts, {} has {} of {}: statistics of different models cannot be summed",
           paths[f], layers.size(), layers.front().size(), paths.front(), total.size(), total.front().size());
    for (std::size_t l = 0; l < layers.size(); ++l)
      for (std::size_t e = 0; e < layers[l].size(); ++e) total[l][e] += layers[l][e];
  }
  return total;
}

}  // namespace

std::vector<dist::LayerPlacement> read_placement_plan(const std::string& path, int ranks) {
  const nlohmann::json plan = read_json(path, "placement plan");
  if (!plan.is_object() || !plan.contains("ranks") || !plan["ranks"].is_number_integer() || !plan.contains("layers") ||
      !plan["layers"].is_array())
    fail("{}: not a plan written by dsv3 placement (\"ranks\" and \"layers\" expected)", path);
  if (plan["ranks"].get<int>() != ranks)
    fail("{}: a plan for {} ranks, this run has {} (make one with dsv3 placement --ranks {})", path,
         plan["ranks"].get<int>(), ranks, ranks);
  std::vector<dist::LayerPlacement> layers;
  for (std::size_t l = 0; l < plan["layers"].size(); ++l) {
    const nlohmann::json& layer = plan["layers"][l];
    if (!layer.is_object() || !layer.contains("rank_experts") || !layer["rank_experts"].is_array() ||
        layer["rank_experts"].size() != static_cast<std::size_t>(ranks))
      fail("{}: layers[{}].rank_experts is not a list of {} ranks' experts", path, l, ranks);
    dist::LayerPlacement placement;
    try {
      placement.rank_experts = layer["rank_experts"].get<std::vector<std::vector<std::int64_t>>>();
    } catch (const nlohmann::json::exception&) {
      fail("{}: layers[{}].rank_experts holds something other than expert numbers", path, l);
    }
    layers.push_back(std::move(placement));
  }
  return layers;
}

namespace {

int run_placement(const std::vector<std::string>& stats_files, int ranks, int redundant, const std::string& out_path) {
  const auto layers = read_all_stats(stats_files);
  const std::string stats = stats_files.size() == 1 ? stats_files.front() : "--stats";
  std::vector<dist::LayerPlacement> plans;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    try {
      plans.push_back(dist::place_experts(layers[l], ranks, redundant));
    } catch (const Error& e) {
      fail("{}: layers[{}]: {}", stats, l, e.what());
    }
  }
  const std::size_t experts = layers.front().size();
  fmt::print("{} layers, {} experts, {} ranks, {} + {} slots per rank\n", layers.size(), experts, ranks,
             experts / ranks, redundant);
  fmt::print("{:>6} {:>16} {:>16}\n", "layer", "max/mean before", "max/mean after");
  for (std::size_t l = 0; l < plans.size(); ++l)
    if (plans.size() <= 20 || l < 5 || l + 5 >= plans.size())
      fmt::print("{:>6} {:>16.3f} {:>16.3f}\n", l, max_over_mean(plans[l].unplanned_load),
                 max_over_mean(plans[l].rank_load));
    else if (l == 5)
      fmt::print("{:>6}\n", "...");
  const dist::Imbalance total = dist::imbalance(plans);
  fmt::print("{:>6} {:>16.3f} {:>16.3f}   (sum over layers of the busiest rank's rows / of the mean rank's)\n",
             "all", total.unplanned, total.planned);

  if (!out_path.empty()) {
    nlohmann::json plan = {{"ranks", ranks}, {"redundant_per_rank", redundant}, {"experts", experts},
                           {"max_over_mean_before", total.unplanned}, {"max_over_mean_after", total.planned},
                           {"layers", nlohmann::json::array()}};
    for (const auto& layer : plans)
      plan["layers"].push_back({{"rank_experts", layer.rank_experts},
                                {"replicas", layer.replicas},
                                {"rank_load", layer.rank_load},
                                {"rank_load_before", layer.unplanned_load}});
    std::ofstream out(out_path);
    out << plan.dump(1) << "\n";
    if (!out) fail("{}: cannot write the plan", out_path);
    fmt::print("plan written to {}\n", out_path);
  }
  return 0;
}

const bool registered = register_command(
    {"placement", "Place redundant experts on ranks from router statistics (EPLB)", [](CLI::App& app) -> Run {
       auto stats = std::make_shared<std::vector<std::string>>();
       auto out = std::make_shared<std::string>();
       auto ranks = std::make_shared<int>(1);
       auto redundant = std::make_shared<int>(0);
       app.add_option("--stats", *stats, "Router statistics: {\"layers\": [[rows per expert], ...]} (several: summed)")
           ->required();
       add_number(app, "--ranks", *ranks, "Ranks the experts are spread over", 1, 1 << 16)->required();
       add_number(app, "--redundant", *redundant, "Redundant expert slots per rank", 0, 1 << 16)->required();
       app.add_option("--out", *out, "Write the plan here as JSON");
       return [=] { return run_placement(*stats, *ranks, *redundant, *out); };
     }});

}  // namespace
}  // namespace dsv3::cli
