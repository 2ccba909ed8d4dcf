#include "serve/reply.h"

#include <ctime>
#include <utility>

namespace dsv3::serve {

Json whole_reply(const Reply& reply, const std::string& model, Json usage) {
  const GenerationRequest& request = reply.request;
  const bool chat = request.endpoint == Endpoint::chat;
  Json choices = Json::array();
  for (std::size_t c = 0; c < reply.states.size(); ++c) {
    const ChoiceState& s = reply.states[c];
    if (chat) {
      Json message = {{"role", "assistant"}, {"content", s.content}};
      if (!s.reasoning.empty() || request.starts_thinking[c / request.n]) message["reasoning_content"] = s.reasoning;
      if (!s.tool_calls.empty()) {
        if (s.content.empty()) message["content"] = nullptr;
        message["tool_calls"] = s.tool_calls;
      }
      choices.push_back({{"index", c},
                         {"message", std::move(message)},
                         {"logprobs", request.logprobs ? Json{{"content", s.logprobs}} : Json(nullptr)},
                         {"finish_reason", s.finish_reason}});
    } else {
      Json logprobs = nullptr;
      if (request.logprobs)
        logprobs = {{"tokens", s.tokens_text},
                    {"token_logprobs", s.token_logprobs},
                    {"top_logprobs", s.top_logprobs},
                    {"text_offset", s.text_offsets}};
      choices.push_back(
          {{"index", c}, {"text", s.content}, {"logprobs", std::move(logprobs)}, {"finish_reason", s.finish_reason}});
    }
  }
  return {{"id", reply.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", static_cast<std::int64_t>(std::time(nullptr))},
          {"model", model},
          {"system_fingerprint", "dsv3"},
          {"choices", std::move(choices)},
          {"usage", std::move(usage)}};
}

}  // namespace dsv3::serve
