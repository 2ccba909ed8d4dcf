#pragma once
// What a request's reply is built from: each choice's state as its tokens come (the same code for
// a streamed reply and a whole one), and a whole (non-streamed) reply's JSON.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/stop.h"
#include "engine/thinking.h"
#include "serve/request.h"
#include "serve/scheduler.h"
#include "serve/tool_calls.h"

namespace dsv3::serve {

// What one choice has produced so far, fed token by token: the decoder, the stop checker and (in
// a chat) the thinking splitter, so that streamed and whole replies come from the same code.
struct ChoiceState {
  ChoiceState(const Tokenizer& tokenizer, const SamplingParams& params, const std::vector<std::int32_t>& eos,
              bool chat, bool starts_thinking, bool tool_calls)
      : decoder(tokenizer, true), stops(params, eos) {
    if (chat) splitter.emplace(starts_thinking);
    if (tool_calls) tools.emplace();
  }
  // The reply starts inside a tool call the request forced (GenerationRequest::forced_tool_call):
  // the parser starts with that text, and no thinking block is looked for in a call.
  void force_tool_call(const std::string& prefix) {
    splitter.reset();
    tools->force(prefix);
  }
  Tokenizer::StreamDecoder decoder;
  StopChecker stops;
  std::optional<ThinkingSplitter> splitter;
  std::optional<ToolCallParser> tools;
  std::string content, reasoning;
  Json tool_calls = Json::array();
  std::int64_t tokens = 0, reasoning_tokens = 0;
  std::int64_t drafted = 0, accepted = 0;  // MTP drafts of this choice, as its latest token reported
  std::size_t text_offset = 0;  // completions' logprobs
  std::chrono::steady_clock::time_point submitted, last_token;
  bool done = false;
  const char* finish_reason = nullptr;
  Json logprobs = Json::array();  // chat: content entries; completions: built at the end
  Json tokens_text = Json::array(), token_logprobs = Json::array(), top_logprobs = Json::array(),
       text_offsets = Json::array();
};

// What a token added to a choice: new text, new reasoning, new logprob entries.
struct Delta {
  std::string content, reasoning;
  Json logprobs = Json::array();
  Json tool_calls = Json::array();  // streamed form: with "index"
  bool finished = false;
};

// A request from its first item to its reply, shared by the handler and the content provider
// that writes the reply.
struct Reply {
  GenerationRequest request;
  std::vector<ChoiceState> states;
  std::shared_ptr<Job> job;
  std::vector<JobItem> first;
  std::string id;
  bool ended = false;  // written whole, or failed: nothing left to cancel when httplib lets go of it
};

// A whole reply: OpenAI's chat.completion or text_completion object.
Json whole_reply(const Reply& reply, const std::string& model, Json usage);

}  // namespace dsv3::serve
