#pragma once
// The router's statistics as JSON, the input of `dsv3 placement --stats`: {"layers": [[rows per
// expert], ...] (one list per MoE layer), "tokens": rows routed, "top_k", "moe_layers": their
// decoder layer indices, "model"}. `dsv3 generate --expert-stats` writes it; serve answers it at
// GET /expert-stats.
#include <string>

#include "io/model_config.h"
#include "model/model.h"

namespace dsv3::serve {

std::string expert_stats_json(const RouterCounts& counts, const ModelConfig& config, const std::string& model);

}  // namespace dsv3::serve
