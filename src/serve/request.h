#pragma once
// The OpenAI/DeepSeek request schema: a parsed JSON body becomes prompts and sampling parameters,
// or an ApiError naming the parameter at fault. Unknown fields are ignored, as OpenAI does;
// a known field of the wrong type or out of range is an error, and null counts as absent.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

using Json = nlohmann::ordered_json;

// An error the client caused (or a limit it hit), answered as {"error": {...}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)),
        type(std::move(type)) {}
  int status;
  std::string param;
  std::string code;
  std::string type;
};

Json error_body(const ApiError& error);

// What parsing needs to know about the model being served.
struct ModelLimits {
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;  // null: the tokenizer has none
  std::int64_t vocab_size = 0;                   // the model's rows (>= the tokenizer's ids)
  std::int64_t context = 0;                      // most tokens of prompt + completion
  std::int64_t most_choices = 64;                // n times the number of prompts
  std::map<std::int32_t, float> logit_bias;      // always applied (the model's padding rows)
  std::vector<std::int32_t> end_of_sequence_ids; // what "ignore_eos" keeps from being sampled
};

enum class Endpoint { chat, completion };

struct GenerationRequest {
  Endpoint endpoint = Endpoint::chat;
  std::vector<std::vector<std::int32_t>> prompts;  // one per prompt (chat: one)
  std::vector<bool> starts_thinking;               // per prompt: the template opened <think>
  SamplingParams params;                           // max_tokens set; seed is choice 0's
  std::int32_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;          // report log-probabilities (params.logprobs is the top-N)
  bool parse_tool_calls = false;  // tools were given (and tool_choice is not "none")
  // tool_choice "required" or a named function: the start of a tool call the prompt ends with, so
  // that the reply continues inside it (its tokens count as prompt tokens, never as completion).
  std::string forced_tool_call;
  std::vector<std::int32_t> max_tokens;  // per prompt: what was asked, or the room left

  std::size_t choices() const { return prompts.size() * static_cast<std::size_t>(n); }
  // Choice i's prompt and parameters (seed + i when a seed is given, so choices differ).
  const std::vector<std::int32_t>& prompt_of(std::size_t choice) const { return prompts[choice / n]; }
  SamplingParams params_of(std::size_t choice) const;
};

GenerationRequest parse_chat_request(const Json& body, const ModelLimits& limits);
GenerationRequest parse_completion_request(const Json& body, const ModelLimits& limits);

// Checks the body of a POST is a JSON object; throws ApiError otherwise.
Json parse_body(const std::string& body);

// /tokenize and /detokenize (vLLM's shapes).
Json tokenize(const Json& body, const ModelLimits& limits);
Json detokenize(const Json& body, const ModelLimits& limits);

}  // namespace dsv3::serve
