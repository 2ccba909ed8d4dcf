#include "serve/expert_stats.h"

#include <nlohmann/json.hpp>

namespace dsv3::serve {

std::string expert_stats_json(const RouterCounts& counts, const ModelConfig& config, const std::string& model) {
  const nlohmann::json json = {{"layers", counts.experts},
                               {"tokens", counts.rows},
                               {"top_k", config.num_experts_per_tok},
                               {"moe_layers", counts.layers},
                               {"model", model}};
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace dsv3::serve
