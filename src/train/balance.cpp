// Auxiliary-loss-free load balancing (the paper's §2.1.2): a per-expert bias added to the routing
// scores only when choosing experts, nudged after every step against the expert's load.
#include <algorithm>

#include "core/error.h"
#include "train/train.h"

namespace dsv3::train {

void add_expert_load(std::vector<std::vector<std::int64_t>>& total, const std::vector<std::vector<std::int64_t>>& load) {
  if (total.size() < load.size()) total.resize(load.size());
  for (std::size_t l = 0; l < load.size(); ++l) {
    if (total[l].size() < load[l].size()) total[l].resize(load[l].size(), 0);
    for (std::size_t e = 0; e < load[l].size(); ++e) total[l][e] += load[l][e];
  }
}

std::vector<LayerBalance> update_router_biases(TrainableModel& model, const std::vector<std::vector<std::int64_t>>& load,
                                               double gamma) {
  std::vector<MoeParameters*> layers;  // by decoder layer index, MTP layers after the main ones
  for (LayerParameters& l : model.layers) layers.push_back(l.moe ? &*l.moe : nullptr);
  for (MtpParameters& m : model.mtp) layers.push_back(m.layer.moe ? &*m.layer.moe : nullptr);
  std::vector<LayerBalance> statistics;
  for (std::size_t l = 0; l < layers.size() && l < load.size(); ++l) {
    if (!layers[l] || load[l].empty()) continue;
    std::vector<float>& bias = layers[l]->e_score_correction_bias;
    if (load[l].size() != bias.size())
      fail("layer {}: load of {} experts for a router of {}", l, load[l].size(), bias.size());
    std::int64_t total = 0;
    for (std::int64_t n : load[l]) total += n;
    LayerBalance s;
    s.layer = static_cast<std::int64_t>(l);
    s.max_load = *std::max_element(load[l].begin(), load[l].end());
    s.mean_load = static_cast<double>(total) / static_cast<double>(load[l].size());
    for (std::size_t e = 0; e < bias.size(); ++e) {
      const auto n = static_cast<double>(load[l][e]);
      // sign(mean - load): an expert exactly at the mean keeps its bias.
      if (n < s.mean_load) bias[e] += static_cast<float>(gamma);
      if (n > s.mean_load) bias[e] -= static_cast<float>(gamma);
    }
    statistics.push_back(s);
  }
  return statistics;
}

}  // namespace dsv3::train
