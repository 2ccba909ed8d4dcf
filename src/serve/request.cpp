#include "serve/request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "engine/thinking.h"
#include "serve/tool_calls.h"

namespace dsv3::serve {
namespace {

constexpr std::size_t kMostStops = 16;
constexpr std::size_t kMostPrompts = 64;
constexpr std::int32_t kMostTopLogprobs = 20;

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

// The field, or null when absent or JSON null.
const Json* field(const Json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const Json& body, const char* name, double lo, double hi, double fallback) {
  const Json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number()) throw bad(name, fmt::format("'{}' must be a number", name));
  const double x = value->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad(name, fmt::format("'{}' is {}, and must be between {} and {}", name, value->dump(), lo, hi));
  return x;
}

std::optional<std::int64_t> integer(const Json& body, const char* name, std::int64_t lo, std::int64_t hi) {
  const Json* value = field(body, name);
  if (!value) return std::nullopt;
  std::int64_t x = 0;
  if (value->is_number_unsigned()) {
    const auto u = value->get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(hi))
      throw bad(name, fmt::format("'{}' is {}, and must be between {} and {}", name, u, lo, hi));
    x = static_cast<std::int64_t>(u);
  } else if (value->is_number_integer()) {
    x = value->get<std::int64_t>();
  } else if (value->is_number_float() && std::isfinite(value->get<double>()) &&
             std::floor(value->get<double>()) == value->get<double>() && std::fabs(value->get<double>()) < 9e15) {
    x = static_cast<std::int64_t>(value->get<double>());
  } else {
    throw bad(name, fmt::format("'{}' must be an integer", name));
  }
  if (x < lo || x > hi) throw bad(name, fmt::format("'{}' is {}, and must be between {} and {}", name, x, lo, hi));
  return x;
}

bool boolean(const Json& body, const char* name, bool fallback) {
  const Json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_boolean()) throw bad(name, fmt::format("'{}' must be true or false", name));
  return value->get<bool>();
}

void check_string(const Json& body, const char* name) {
  const Json* value = field(body, name);
  if (value && !value->is_string()) throw bad(name, fmt::format("'{}' must be a string", name));
}

std::vector<std::string> stop_strings(const Json& body) {
  const Json* value = field(body, "stop");
  if (!value) return {};
  std::vector<std::string> stops;
  if (value->is_string()) {
    stops.push_back(value->get<std::string>());
  } else if (value->is_array()) {
    if (value->size() > kMostStops) throw bad("stop", fmt::format("'stop' has {} strings; at most {}", value->size(), kMostStops));
    for (const Json& item : *value) {
      if (!item.is_string()) throw bad("stop", "'stop' must be a string or a list of strings");
      stops.push_back(item.get<std::string>());
    }
  } else {
    throw bad("stop", "'stop' must be a string or a list of strings");
  }
  for (const std::string& stop : stops)
    if (stop.empty()) throw bad("stop", "'stop' strings must not be empty");
  return stops;
}

// The sampling fields both endpoints share; max_tokens is resolved per prompt later.
void parse_sampling(const Json& body, const ModelLimits& limits, GenerationRequest& request) {
  SamplingParams& p = request.params;
  // OpenAI's default temperature is 1; 0 is greedy.
  p.temperature = static_cast<float>(number(body, "temperature", 0.0, 2.0, 1.0));
  p.top_p = static_cast<float>(number(body, "top_p", 0.0, 1.0, 1.0));
  if (p.top_p <= 0.0f) throw bad("top_p", "'top_p' must be greater than 0 and at most 1");
  // -1 is vLLM's spelling of "off".
  const auto top_k = integer(body, "top_k", -1, std::numeric_limits<std::int32_t>::max());
  p.top_k = top_k && *top_k > 0 ? static_cast<std::int32_t>(*top_k) : 0;
  p.min_p = static_cast<float>(number(body, "min_p", 0.0, 1.0, 0.0));
  p.presence_penalty = static_cast<float>(number(body, "presence_penalty", -2.0, 2.0, 0.0));
  p.frequency_penalty = static_cast<float>(number(body, "frequency_penalty", -2.0, 2.0, 0.0));
  p.repetition_penalty = static_cast<float>(number(body, "repetition_penalty", 0.01, 100.0, 1.0));
  // Any 64-bit integer, signed or not, is a seed.
  if (const Json* seed = field(body, "seed"); seed && seed->is_number_unsigned())
    p.seed = seed->get<std::uint64_t>();
  else if (const auto value = integer(body, "seed", std::numeric_limits<std::int64_t>::min(),
                                      std::numeric_limits<std::int64_t>::max()))
    p.seed = static_cast<std::uint64_t>(*value);
  p.stop = stop_strings(body);
  p.logit_bias = limits.logit_bias;
  if (const Json* bias = field(body, "logit_bias")) {
    if (!bias->is_object()) throw bad("logit_bias", "'logit_bias' must be an object of token id -> bias");
    for (const auto& [key, value] : bias->items()) {
      std::int64_t id = -1;
      const bool digits = !key.empty() && key.size() <= 10 && key.find_first_not_of("0123456789") == std::string::npos;
      if (digits) id = std::stoll(key);
      if (!digits || id >= limits.vocab_size)
        throw bad("logit_bias", fmt::format("'logit_bias' key \"{}\" is not a token id in [0, {})", key, limits.vocab_size));
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < -100.0 ||
          value.get<double>() > 100.0)
        throw bad("logit_bias", fmt::format("'logit_bias' value for {} must be a number between -100 and 100", key));
      float& slot = p.logit_bias[static_cast<std::int32_t>(id)];
      if (slot > -1e29f) slot = value.get<float>();  // the padding rows stay excluded
    }
  }
  // vLLM's extension for benchmarks: end-of-sequence is never sampled, so replies run to max_tokens.
  if (boolean(body, "ignore_eos", false))
    for (const std::int32_t id : limits.end_of_sequence_ids) p.logit_bias[id] = -1e30f;
  const auto n = integer(body, "n", 1, limits.most_choices);
  request.n = static_cast<std::int32_t>(n.value_or(1));
  request.stream = boolean(body, "stream", false);
  if (const Json* options = field(body, "stream_options")) {
    if (!options->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    request.include_usage = boolean(*options, "include_usage", false);
    if (!request.stream) throw bad("stream_options", "'stream_options' is only allowed with \"stream\": true");
  }
  check_string(body, "user");
  check_string(body, "model");
}

// max_tokens (or max_completion_tokens) per prompt: what was asked, which must fit the context,
// or all the room the context leaves.
void resolve_max_tokens(const Json& body, const ModelLimits& limits, GenerationRequest& request) {
  std::optional<std::int64_t> asked = integer(body, "max_completion_tokens", 1, std::numeric_limits<std::int32_t>::max());
  const char* asked_name = "max_completion_tokens";
  if (!asked) {
    asked = integer(body, "max_tokens", 1, std::numeric_limits<std::int32_t>::max());
    asked_name = "max_tokens";
  }
  for (const auto& prompt : request.prompts) {
    const auto length = static_cast<std::int64_t>(prompt.size());
    const std::int64_t room = limits.context - length;
    if (room < 1)
      throw ApiError(400,
                     fmt::format("this model's context is {} tokens, and the prompt has {}: no room to generate",
                                 limits.context, length),
                     request.endpoint == Endpoint::chat ? "messages" : "prompt", "context_length_exceeded");
    if (asked && *asked > room)
      throw ApiError(400,
                     fmt::format("this model's context is {} tokens: the prompt has {} and '{}' asks for {} more",
                                 limits.context, length, asked_name, *asked),
                     asked_name, "context_length_exceeded");
    request.max_tokens.push_back(static_cast<std::int32_t>(asked ? *asked : room));
  }
  if (request.choices() > static_cast<std::size_t>(limits.most_choices))
    throw bad("n", fmt::format("{} prompts times n = {} is {} sequences; at most {}", request.prompts.size(), request.n,
                               request.choices(), limits.most_choices));
}

void check_token_ids(const Json& ids, const ModelLimits& limits, const char* param, std::vector<std::int32_t>& out) {
  for (const Json& id : ids) {
    if (!id.is_number_integer()) throw bad(param, fmt::format("'{}' token ids must be integers", param));
    const auto value = id.get<std::int64_t>();
    if (id.is_number_unsigned() && id.get<std::uint64_t>() > static_cast<std::uint64_t>(limits.vocab_size))
      throw bad(param, fmt::format("'{}' has token id {} outside the vocabulary [0, {})", param, id.dump(), limits.vocab_size));
    if (value < 0 || value >= limits.vocab_size)
      throw bad(param, fmt::format("'{}' has token id {} outside the vocabulary [0, {})", param, value, limits.vocab_size));
    out.push_back(static_cast<std::int32_t>(value));
  }
}

std::vector<std::int32_t> encode_text(const Tokenizer& tokenizer, const std::string& text, bool add_bos,
                                      const char* param) {
  try {
    return tokenizer.encode(text, add_bos);
  } catch (const Error& e) {
    throw bad(param, fmt::format("'{}' cannot be encoded: {}", param, e.what()));
  }
}

// A message's content as text: a string, or a list of text parts.
std::string content_text(const Json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) throw bad(param, fmt::format("'{}' must be a string or a list of text parts", param));
  std::string text;
  for (std::size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string where = fmt::format("{}[{}]", param, i);
    if (!part.is_object()) throw bad(where, fmt::format("'{}' must be an object", where));
    const auto type = part.find("type");
    if (type == part.end() || !type->is_string())
      throw bad(where + ".type", fmt::format("'{}.type' must be a string", where));
    if (*type != "text")
      throw bad(where + ".type", fmt::format("'{}.type' is {}: only \"text\" parts are supported", where, type->dump()));
    const auto part_text = part.find("text");
    if (part_text == part.end() || !part_text->is_string())
      throw bad(where + ".text", fmt::format("'{}.text' must be a string", where));
    text += part_text->get<std::string>();
  }
  return text;
}

// tool_choice: "none", "auto", "required", or {"type": "function", "function": {"name": NAME}}
// with NAME one of the tools' functions. "required" and a named function are enforced by starting
// the reply with a tool call (ToolChoice::forced: the function's name, or "" when the model is to
// write it); "required" with a single function in `tools` forces that one.
struct ToolChoice {
  bool none = false;
  std::optional<std::string> forced;
};

bool plain_function_name(const std::string& name) {
  return !name.empty() && name.size() <= 64 &&
         std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
}

ToolChoice parse_tool_choice(const Json& body, const Json& tools, const Tokenizer& tokenizer) {
  const char* shape = "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function";
  std::vector<std::string> names;  // the tools' functions, each once
  if (tools.is_array())
    for (const Json& tool : tools)
      if (const Json* f = field(tool, "function"); f && f->is_object())
        if (const Json* n = field(*f, "name"); n && n->is_string()) names.push_back(n->get<std::string>());
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  ToolChoice choice;
  const Json* given = field(body, "tool_choice");
  if (!given) return choice;
  if (given->is_string()) {
    const std::string value = given->get<std::string>();
    if (value != "none" && value != "auto" && value != "required") throw bad("tool_choice", shape);
    choice.none = value == "none";
    if (value == "required") {
      if (tools.is_null()) throw bad("tool_choice", "'tool_choice' \"required\" needs 'tools'");
      choice.forced = names.size() == 1 && plain_function_name(names.front()) ? names.front() : std::string();
    }
  } else if (given->is_object()) {
    const Json* function = field(*given, "function");
    const Json* name = function && function->is_object() ? field(*function, "name") : nullptr;
    if (!name || !name->is_string())
      throw bad("tool_choice.function.name",
                "a named 'tool_choice' needs {\"type\": \"function\", \"function\": {\"name\": ...}}");
    if (std::find(names.begin(), names.end(), name->get<std::string>()) == names.end())
      throw bad("tool_choice.function.name",
                fmt::format("'tool_choice' names the function '{}', which is not among 'tools'", name->get<std::string>()));
    choice.forced = name->get<std::string>();
    // The name goes into the prompt as text: OpenAI's rule for function names keeps it one plain word.
    if (!plain_function_name(*choice.forced))
      throw bad("tool_choice.function.name",
                fmt::format("'tool_choice' names the function '{}': a function name to force must be 1 to 64 of "
                            "a-z, A-Z, 0-9, '_' and '-'",
                            *choice.forced));
  } else {
    throw bad("tool_choice", shape);
  }
  if (choice.forced)
    for (const std::string_view token : forced_tool_call_tokens()) {
      const auto id = tokenizer.token_to_id(token);
      if (!id || tokenizer.encode(token) != std::vector<std::int32_t>{*id})
        throw bad("tool_choice", fmt::format("'tool_choice' \"required\" or a named function is enforced by starting "
                                             "the reply with a DeepSeek-V3 tool call, and this tokenizer has no {} "
                                             "token; use \"auto\"",
                                             token));
    }
  return choice;
}

}  // namespace

Json error_body(const ApiError& error) {
  return {{"error",
           {{"message", error.what()},
            {"type", error.type},
            {"param", error.param.empty() ? Json(nullptr) : Json(error.param)},
            {"code", error.code.empty() ? Json(nullptr) : Json(error.code)}}}};
}

Json parse_body(const std::string& body) {
  Json parsed;
  try {
    parsed = Json::parse(body);
  } catch (const nlohmann::json::exception& e) {
    throw ApiError(400, fmt::format("the body is not valid JSON: {}", e.what()), "", "invalid_json");
  }
  if (!parsed.is_object()) throw ApiError(400, "the body must be a JSON object", "", "invalid_json");
  return parsed;
}

SamplingParams GenerationRequest::params_of(std::size_t choice) const {
  SamplingParams p = params;
  p.max_tokens = max_tokens[choice / n];
  if (p.seed) p.seed = *p.seed + choice % n;
  return p;
}

GenerationRequest parse_chat_request(const Json& body, const ModelLimits& limits) {
  GenerationRequest request;
  request.endpoint = Endpoint::chat;
  if (!limits.chat_template)
    throw ApiError(400, "the served tokenizer has no chat template; use /v1/completions", "messages");
  const Json* messages = field(body, "messages");
  if (!messages) throw bad("messages", "'messages' is required");
  if (!messages->is_array()) throw bad("messages", "'messages' must be a list of messages");
  if (messages->empty()) throw bad("messages", "'messages' must not be empty");
  Json rendered_messages = Json::array();
  std::optional<std::string> prefix;
  for (std::size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!message.is_object()) throw bad(where, fmt::format("'{}' must be an object", where));
    const auto role_it = message.find("role");
    if (role_it == message.end() || !role_it->is_string())
      throw bad(where + ".role", fmt::format("'{}.role' must be a string", where));
    std::string role = role_it->get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      throw bad(where + ".role", fmt::format("'{}.role' is \"{}\": expected system, user, assistant or tool", where,
                                             role_it->get<std::string>()));
    Json out = {{"role", role}};
    const Json* content = field(message, "content");
    const Json* tool_calls = field(message, "tool_calls");
    if (content) {
      out["content"] = content_text(*content, where + ".content");
    } else if (role == "assistant" && tool_calls) {
      out["content"] = nullptr;
    } else {
      throw bad(where + ".content", fmt::format("'{}.content' is required", where));
    }
    if (tool_calls) {
      if (role != "assistant" || !tool_calls->is_array())
        throw bad(where + ".tool_calls", fmt::format("'{}.tool_calls' must be a list, on an assistant message", where));
      Json calls = Json::array();
      for (std::size_t k = 0; k < tool_calls->size(); ++k) {
        const Json& call = (*tool_calls)[k];
        const std::string at = fmt::format("{}.tool_calls[{}]", where, k);
        const Json* function = call.is_object() ? field(call, "function") : nullptr;
        if (!function || !function->is_object())
          throw bad(at + ".function", fmt::format("'{}.function' must be an object", at));
        const Json* name = field(*function, "name");
        if (!name || !name->is_string()) throw bad(at + ".function.name", fmt::format("'{}.function.name' must be a string", at));
        const Json* arguments = field(*function, "arguments");
        if (arguments && !arguments->is_string() && !arguments->is_object())
          throw bad(at + ".function.arguments", fmt::format("'{}.function.arguments' must be a JSON string", at));
        const Json* type = field(call, "type");
        if (type && !type->is_string()) throw bad(at + ".type", fmt::format("'{}.type' must be a string", at));
        Json rendered = {{"type", type ? type->get<std::string>() : "function"},
                         {"function",
                          {{"name", *name},
                           {"arguments", !arguments ? "{}" : arguments->is_string() ? arguments->get<std::string>()
                                                                                     : arguments->dump()}}}};
        if (const Json* id = field(call, "id"); id && id->is_string()) rendered["id"] = *id;
        calls.push_back(std::move(rendered));
      }
      // The template writes an assistant turn as tool calls only when its content is null.
      if (out["content"].is_string() && out["content"].get<std::string>().empty()) out["content"] = nullptr;
      out["tool_calls"] = std::move(calls);
    }
    if (const Json* id = field(message, "tool_call_id")) {
      if (!id->is_string()) throw bad(where + ".tool_call_id", fmt::format("'{}.tool_call_id' must be a string", where));
      out["tool_call_id"] = *id;
    }
    if (const Json* name = field(message, "name")) {
      if (!name->is_string()) throw bad(where + ".name", fmt::format("'{}.name' must be a string", where));
    }
    if (boolean(message, "prefix", false)) {
      // DeepSeek's chat prefix completion: the last assistant message is continued, not answered.
      if (role != "assistant" || i + 1 != messages->size())
        throw bad(where + ".prefix", "only the last message, an assistant one, may be a prefix (\"prefix\": true)");
      if (!out["content"].is_string())
        throw bad(where + ".content", fmt::format("'{}.content' must be the text to continue", where));
      prefix = out["content"].get<std::string>();
      continue;
    }
    rendered_messages.push_back(std::move(out));
  }
  if (rendered_messages.empty()) throw bad("messages", "'messages' needs a message before the assistant prefix");
  Json tools = nullptr;
  if (const Json* given = field(body, "tools")) {
    if (!given->is_array()) throw bad("tools", "'tools' must be a list of tools");
    for (std::size_t i = 0; i < given->size(); ++i)
      if (!(*given)[i].is_object()) throw bad(fmt::format("tools[{}]", i), "every tool must be an object");
    if (!given->empty()) tools = *given;
  }
  const ToolChoice tool_choice = parse_tool_choice(body, tools, *limits.tokenizer);
  if (tool_choice.forced && prefix)
    throw bad("tool_choice", "a forced 'tool_choice' (\"required\" or a named function) cannot be combined with chat "
                             "prefix completion (an assistant message with \"prefix\": true): the reply would have to "
                             "continue both");
  request.parse_tool_calls = !tools.is_null() && !tool_choice.none;
  parse_sampling(body, limits, request);
  request.logprobs = boolean(body, "logprobs", false);
  const auto top = integer(body, "top_logprobs", 0, kMostTopLogprobs);
  if (top && !request.logprobs) throw bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
  request.params.logprobs = static_cast<std::int32_t>(top.value_or(0));
  request.params.token_logprob = request.logprobs;

  std::string rendered;
  try {
    rendered = limits.chat_template->render({{"messages", rendered_messages},
                                             {"tools", tools},
                                             {"documents", nullptr},
                                             {"add_generation_prompt", true},
                                             {"bos_token", limits.tokenizer->bos_token()},
                                             {"eos_token", limits.tokenizer->eos_token()}});
  } catch (const Error& e) {
    throw bad("messages", fmt::format("the chat template cannot render these messages: {}", e.what()));
  }
  if (prefix) rendered += *prefix;
  if (tool_choice.forced) {
    if (prompt_opens_thinking(rendered))
      throw bad("tool_choice", "this chat template opens a thinking block (<think>) where the reply starts, so a "
                               "forced 'tool_choice' cannot put a tool call there; use \"auto\"");
    request.forced_tool_call = forced_tool_call_prefix(*tool_choice.forced);
    rendered += request.forced_tool_call;
  }
  request.prompts.push_back(encode_text(*limits.tokenizer, rendered, false, "messages"));
  request.starts_thinking.push_back(prompt_opens_thinking(rendered));
  resolve_max_tokens(body, limits, request);
  return request;
}

GenerationRequest parse_completion_request(const Json& body, const ModelLimits& limits) {
  GenerationRequest request;
  request.endpoint = Endpoint::completion;
  const Json* prompt = field(body, "prompt");
  if (!prompt) throw bad("prompt", "'prompt' is required");
  const Tokenizer& tokenizer = *limits.tokenizer;
  const bool add_bos = tokenizer.add_bos_token();
  const char* shape = "'prompt' must be a string, a list of token ids, or a list of either";
  if (const Json* suffix = field(body, "suffix")) {
    // Fill in the middle, DeepSeek's way: <｜fim▁begin｜>PREFIX<｜fim▁hole｜>SUFFIX<｜fim▁end｜>, then the middle.
    if (!suffix->is_string()) throw bad("suffix", "'suffix' must be a string");
    if (!prompt->is_string()) throw bad("prompt", "fill-in-the-middle ('suffix') needs 'prompt' as one string");
    const auto begin = tokenizer.token_to_id("<｜fim▁begin｜>");
    const auto hole = tokenizer.token_to_id("<｜fim▁hole｜>");
    const auto end = tokenizer.token_to_id("<｜fim▁end｜>");
    if (!begin || !hole || !end)
      throw bad("suffix", "this tokenizer has no fill-in-the-middle tokens (<｜fim▁begin｜>, <｜fim▁hole｜>, <｜fim▁end｜>)");
    std::vector<std::int32_t> ids;
    if (add_bos) ids.push_back(tokenizer.bos_id());
    ids.push_back(*begin);
    for (const std::int32_t id : encode_text(tokenizer, prompt->get<std::string>(), false, "prompt")) ids.push_back(id);
    ids.push_back(*hole);
    for (const std::int32_t id : encode_text(tokenizer, suffix->get<std::string>(), false, "suffix")) ids.push_back(id);
    ids.push_back(*end);
    request.prompts.push_back(std::move(ids));
  } else if (prompt->is_string()) {
    request.prompts.push_back(encode_text(tokenizer, prompt->get<std::string>(), add_bos, "prompt"));
  } else if (prompt->is_array()) {
    if (prompt->empty()) throw bad("prompt", "'prompt' must not be empty");
    if (prompt->size() > kMostPrompts && !(*prompt)[0].is_number())
      throw bad("prompt", fmt::format("'prompt' has {} prompts; at most {}", prompt->size(), kMostPrompts));
    if ((*prompt)[0].is_number()) {
      request.prompts.emplace_back();
      check_token_ids(*prompt, limits, "prompt", request.prompts.back());
    } else {
      for (const Json& item : *prompt) {
        if (item.is_string()) {
          request.prompts.push_back(encode_text(tokenizer, item.get<std::string>(), add_bos, "prompt"));
        } else if (item.is_array()) {
          if (item.empty()) throw bad("prompt", "'prompt' token lists must not be empty");
          request.prompts.emplace_back();
          check_token_ids(item, limits, "prompt", request.prompts.back());
        } else {
          throw bad("prompt", shape);
        }
      }
    }
  } else {
    throw bad("prompt", shape);
  }
  for (const auto& ids : request.prompts)
    if (ids.empty()) throw bad("prompt", "'prompt' is empty (and the tokenizer adds no BOS token)");
  request.starts_thinking.assign(request.prompts.size(), false);
  if (boolean(body, "echo", false)) throw bad("echo", "'echo' is not supported");
  parse_sampling(body, limits, request);
  if (const auto best_of = integer(body, "best_of", 1, limits.most_choices); best_of && *best_of != request.n)
    throw bad("best_of", "'best_of' other than n is not supported");
  const auto logprobs = integer(body, "logprobs", 0, kMostTopLogprobs);
  request.logprobs = logprobs.has_value();
  request.params.logprobs = static_cast<std::int32_t>(logprobs.value_or(0));
  request.params.token_logprob = request.logprobs;
  // OpenAI's default for completions.
  if (!field(body, "max_tokens") && !field(body, "max_completion_tokens")) {
    Json with_default = body;
    with_default["max_tokens"] = 16;
    // Clipped to the room the context leaves, so the default never makes a short context an error.
    for (const auto& ids : request.prompts)
      with_default["max_tokens"] =
          std::max<std::int64_t>(1, std::min<std::int64_t>(with_default["max_tokens"].get<std::int64_t>(),
                                                             limits.context - static_cast<std::int64_t>(ids.size())));
    resolve_max_tokens(with_default, limits, request);
  } else {
    resolve_max_tokens(body, limits, request);
  }
  return request;
}

Json tokenize(const Json& body, const ModelLimits& limits) {
  std::vector<std::int32_t> ids;
  if (field(body, "messages")) {
    Json chat = body;
    chat.erase("max_tokens");
    chat.erase("max_completion_tokens");
    ids = parse_chat_request(chat, limits).prompts.at(0);
  } else {
    const Json* prompt = field(body, "prompt");
    if (!prompt || !prompt->is_string()) throw bad("prompt", "'prompt' (a string) or 'messages' is required");
    const bool special = boolean(body, "add_special_tokens", true);
    ids = encode_text(*limits.tokenizer, prompt->get<std::string>(), special && limits.tokenizer->add_bos_token(),
                      "prompt");
  }
  return {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", limits.context}};
}

Json detokenize(const Json& body, const ModelLimits& limits) {
  const Json* tokens = field(body, "tokens");
  if (!tokens || !tokens->is_array()) throw bad("tokens", "'tokens' (a list of token ids) is required");
  std::vector<std::int32_t> ids;
  ModelLimits text_limits = limits;
  // Only ids the tokenizer has have text.
  text_limits.vocab_size = static_cast<std::int64_t>(limits.tokenizer->vocab_size());
  check_token_ids(*tokens, text_limits, "tokens", ids);
  try {
    return {{"prompt", limits.tokenizer->decode(ids)}};
  } catch (const Error& e) {
    throw bad("tokens", e.what());
  }
}

}  // namespace dsv3::serve
