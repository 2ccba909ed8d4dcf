#pragma once
// dsv3 serve: an OpenAI/DeepSeek-compatible HTTP server over the engine (cpp-httplib). This is
// the folder's public header; the request schema (request.h) and the scheduler are internal.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;             // empty: no authentication
  std::string served_model_name;   // what /v1/models lists and responses name
  std::int64_t max_batch = 16;     // most sequences stepped together
  std::int64_t max_queue = 64;     // most requests waiting to join the batch; more answer 429
  double grace_seconds = 30.0;     // on SIGINT/SIGTERM, how long in-flight requests may finish
  std::map<std::int32_t, float> logit_bias;     // applied to every request (the model's padding rows)
  std::vector<std::int32_t> end_of_sequence_ids;  // ids that end a reply, hidden from its text
};

// Serves until SIGINT or SIGTERM, then stops accepting, lets in-flight requests finish within the
// grace period and returns 0. Throws dsv3::Error when it cannot listen.
int serve(const Model& model, const Tokenizer& tokenizer, const EngineOptions& engine_options,
          const ServeOptions& options);

}  // namespace dsv3::serve
