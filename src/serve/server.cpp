#include "serve/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "core/error.h"
#include "engine/stop.h"
#include "engine/thinking.h"
#include "serve/expert_stats.h"
#include "serve/page.h"
#include "serve/reply.h"
#include "serve/request.h"
#include "serve/scheduler.h"
#include "serve/tool_calls.h"

namespace dsv3::serve {
namespace {

std::atomic<int> received_signal{0};
extern "C" void on_signal(int signal) { received_signal = signal; }

// How long a handler waits for tokens before it checks on its client and the shutdown.
constexpr int kPollMilliseconds = 100;

std::string dump(const Json& json) { return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::max_tokens:
    case FinishReason::external:
      return "length";
    default:
      return "stop";
  }
}

class Server {
 public:
  Server(const Model& model, const Tokenizer& tokenizer, Engine& engine, const ServeOptions& options)
      : model_(model),
        tokenizer_(tokenizer),
        options_(options),
        speculating_(engine.options().mtp_drafts > 0),
        scheduler_(engine, options.max_batch, options.max_queue) {
    if (!tokenizer.chat_template().empty()) chat_template_.emplace(tokenizer.chat_template());
    limits_.tokenizer = &tokenizer_;
    limits_.chat_template = chat_template_ ? &*chat_template_ : nullptr;
    limits_.vocab_size = model.config().vocab_size;
    limits_.context = std::min(model.config().max_position_embeddings, scheduler_.capacity_tokens());
    limits_.most_choices = std::max<std::int64_t>(1, std::min<std::int64_t>(options.max_batch, 64));
    limits_.logit_bias = options.logit_bias;
    limits_.end_of_sequence_ids = options.end_of_sequence_ids;
    model_name_ = options.served_model_name;
    created_ = static_cast<std::int64_t>(std::time(nullptr));
  }

  int run();

 private:
  void routes();
  void generate(const httplib::Request& request, httplib::Response& response, Endpoint endpoint);
  Delta add_token(ChoiceState& state, const JobItem& item, const GenerationRequest& request, Job& job);
  Json usage(const GenerationRequest& request, const std::vector<ChoiceState>& states, Job& job) const;
  Json chunk(const std::string& id, const GenerationRequest& request, Json choices) const;
  bool collect(Reply& reply, const std::function<bool()>& client_here);
  std::string whole_body(const Reply& reply) const {
    return dump(whole_reply(reply, model_name_, usage(reply.request, reply.states, *reply.job)));
  }
  std::string metrics() const;
  void reply_error(httplib::Response& response, const ApiError& error) const {
    response.status = error.status;
    response.set_content(dump(error_body(error)), "application/json");
  }
  std::string next_id(const char* prefix) { return fmt::format("{}-{:016x}", prefix, ++request_counter_ * 0x9e3779b97f4a7c15ull); }

  const Model& model_;
  const Tokenizer& tokenizer_;
  const ServeOptions& options_;
  const bool speculating_;  // MTP is on: usage reports each request's drafts
  std::optional<ChatTemplate> chat_template_;
  ModelLimits limits_;
  std::string model_name_;
  std::int64_t created_ = 0;
  std::atomic<std::uint64_t> request_counter_{0};
  std::atomic<std::uint64_t> tool_call_counter_{0};
  std::atomic<bool> stopping_{false};
  RequestCounts counts_;
  std::atomic<std::int64_t> prompt_tokens_{0}, completion_tokens_{0};
  std::atomic<std::int64_t> cancelled_requests_{0};
  Histogram time_to_first_token_{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram inter_token_latency_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
  httplib::Server http_;
  Scheduler scheduler_;  // last: stopped first, while the rest still stands
};

Json Server::usage(const GenerationRequest& request, const std::vector<ChoiceState>& states, Job& job) const {
  std::int64_t prompt = 0, completion = 0, reasoning = 0, drafted = 0, accepted = 0;
  for (const auto& ids : request.prompts) prompt += static_cast<std::int64_t>(ids.size());
  for (const auto& state : states) {
    completion += state.tokens;
    reasoning += state.reasoning_tokens;
    drafted += state.drafted;
    accepted += state.accepted;
  }
  const std::int64_t cached = job.cached_prompt_tokens();
  Json out = {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_cache_hit_tokens", cached},
          {"prompt_cache_miss_tokens", prompt - cached},
          {"prompt_tokens_details", {{"cached_tokens", cached}}},
          {"completion_tokens_details", {{"reasoning_tokens", reasoning}}}};
  // An extension: MTP drafts tried and accepted for this request (all its choices).
  if (speculating_) out["speculation"] = {{"drafted", drafted}, {"accepted", accepted}};
  return out;
}

Json Server::chunk(const std::string& id, const GenerationRequest& request, Json choices) const {
  const bool chat = request.endpoint == Endpoint::chat;
  Json out = {{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", static_cast<std::int64_t>(std::time(nullptr))},
              {"model", model_name_},
              {"system_fingerprint", "dsv3"},
              {"choices", std::move(choices)}};
  if (request.include_usage) out["usage"] = nullptr;
  return out;
}

Delta Server::add_token(ChoiceState& state, const JobItem& item, const GenerationRequest& request, Job& job) {
  Delta delta;
  if (state.done) return delta;
  auto take = [&](const ToolCallUpdate& update) {
    state.content += update.content;
    delta.content += update.content;
    for (const ToolCall& call : update.calls) {
      Json entry = {{"id", fmt::format("call_{:016x}", ++tool_call_counter_ * 0x9e3779b97f4a7c15ull)},
                    {"type", "function"},
                    {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
      Json streamed = {{"index", state.tool_calls.size()}};
      streamed.update(entry);
      state.tool_calls.push_back(std::move(entry));
      delta.tool_calls.push_back(std::move(streamed));
    }
  };
  // Answer text goes through the tool-call parser when the request gave tools.
  auto answer = [&](const std::string& text) {
    if (text.empty()) return;
    if (state.tools) {
      take(state.tools->add(text));
    } else {
      state.content += text;
      delta.content += text;
    }
  };
  auto spans = [&](const std::vector<ReplySpan>& spans) {
    for (const ReplySpan& span : spans) {
      if (span.thinking) {
        state.reasoning += span.text;
        delta.reasoning += span.text;
      } else {
        answer(span.text);
      }
    }
  };
  auto append = [&](const std::string& text) {
    if (text.empty()) return;
    if (state.splitter)
      spans(state.splitter->add(text));
    else
      answer(text);
  };
  const std::int32_t token = item.sampled.token;
  const bool cancelled = item.reason == FinishReason::external;
  if (!cancelled) {
    const auto now = std::chrono::steady_clock::now();
    if (state.tokens == 0)
      time_to_first_token_.observe(std::chrono::duration<double>(now - state.submitted).count());
    else
      inter_token_latency_.observe(std::chrono::duration<double>(now - state.last_token).count());
    state.last_token = now;
    state.drafted = item.drafted;
    state.accepted = item.accepted;
    ++completion_tokens_;
    ++state.tokens;
    const bool thinking_before = state.splitter && state.splitter->thinking();
    const StopUpdate update = state.stops.add(token, state.decoder.push(token));
    const std::size_t offset_before = state.content.size();
    append(update.text);
    if (thinking_before || (state.splitter && state.splitter->thinking())) ++state.reasoning_tokens;
    const bool hidden_stop = item.finished && item.reason == FinishReason::stop_token;
    if (request.logprobs && !hidden_stop) {
      auto text_of = [&](std::int32_t id) {
        try {
          return tokenizer_.decode(std::span(&id, 1));
        } catch (const Error&) {
          return std::string();  // the model's padding rows have no text
        }
      };
      const std::string text = text_of(token);
      if (request.endpoint == Endpoint::chat) {
        Json top = Json::array();
        for (const TokenLogprob& entry : item.sampled.top_logprobs) {
          const std::string t = text_of(entry.token);
          top.push_back({{"token", t}, {"logprob", entry.logprob}, {"bytes", std::vector<unsigned char>(t.begin(), t.end())}});
        }
        Json entry = {{"token", text},
                      {"logprob", item.sampled.logprob},
                      {"bytes", std::vector<unsigned char>(text.begin(), text.end())},
                      {"top_logprobs", std::move(top)}};
        state.logprobs.push_back(entry);
        delta.logprobs.push_back(std::move(entry));
      } else {
        Json top = Json::object();
        for (const TokenLogprob& entry : item.sampled.top_logprobs) top[text_of(entry.token)] = entry.logprob;
        state.tokens_text.push_back(text);
        state.token_logprobs.push_back(item.sampled.logprob);
        state.top_logprobs.push_back(request.params.logprobs > 0 ? std::move(top) : Json(nullptr));
        state.text_offsets.push_back(offset_before);
        delta.logprobs.push_back({{"token", text},
                                  {"logprob", item.sampled.logprob},
                                  {"top", state.top_logprobs.back()},
                                  {"offset", offset_before}});
      }
    }
    if (!update.finished && !item.finished) return delta;
  }
  // The choice ends here: by a stop the checker saw (the engine is told to end the sequence), by
  // the engine (stop token, max_tokens), or cancelled.
  FinishReason reason = state.stops.finished() ? state.stops.reason() : item.reason;
  if (!item.finished && !cancelled) job.cancel(static_cast<std::size_t>(item.choice));
  const bool by_string = state.stops.reason() == FinishReason::stop_string;
  append(state.stops.finish());
  if (!by_string) append(state.decoder.finish());
  if (state.splitter) spans(state.splitter->finish());
  if (state.tools) take(state.tools->finish());
  if (cancelled && reason == FinishReason::none) reason = FinishReason::external;
  state.done = true;
  state.finish_reason = finish_reason_name(reason);
  if (!state.tool_calls.empty() && reason == FinishReason::stop_token) state.finish_reason = "tool_calls";
  delta.finished = true;
  return delta;
}

// Feeds a whole (non-streamed) reply its tokens until every choice is done: false when
// `client_here` says the client is gone, asked at least every poll (tokens may come faster than
// the wait's timeout); throws ApiError when the job fails.
bool Server::collect(Reply& reply, const std::function<bool()>& client_here) {
  std::vector<JobItem> items = std::move(reply.first);
  std::size_t remaining = reply.states.size();
  auto asked = std::chrono::steady_clock::now();
  for (;;) {
    for (const JobItem& item : items) {
      if (!item.error.empty()) {
        reply.job->cancel_all();
        throw ApiError(item.status, item.error, "", "", "server_error");
      }
      ChoiceState& state = reply.states.at(static_cast<std::size_t>(item.choice));
      if (state.done) continue;
      if (add_token(state, item, reply.request, *reply.job).finished) --remaining;
    }
    items.clear();
    if (remaining == 0) return true;
    const bool idle = !reply.job->wait(items, kPollMilliseconds);
    const auto now = std::chrono::steady_clock::now();
    if (idle || now - asked >= std::chrono::milliseconds(kPollMilliseconds)) {
      asked = now;
      if (!client_here()) return false;
    }
  }
}

void Server::generate(const httplib::Request& http_request, httplib::Response& response, Endpoint endpoint) {
  const Json body = parse_body(http_request.body);
  GenerationRequest request =
      endpoint == Endpoint::chat ? parse_chat_request(body, limits_) : parse_completion_request(body, limits_);
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<SamplingParams> params;
  // Each sequence must fit the cache alone, not all together: when running sequences outgrow it,
  // the engine preempts the newest and computes them again later, so choices can take turns.
  std::int64_t reserved = 0;
  for (std::size_t c = 0; c < request.choices(); ++c) {
    prompts.push_back(request.prompt_of(c));
    params.push_back(request.params_of(c));
    reserved = std::max(reserved, scheduler_.reservation(static_cast<std::int64_t>(prompts.back().size()),
                                                         *params.back().max_tokens));
  }
  if (reserved > scheduler_.capacity_tokens())
    throw ApiError(400,
                   fmt::format("a sequence of this request needs {} tokens of KV cache (its prompt + max_tokens), and "
                               "the cache holds {} (--kv-cache-tokens)",
                               reserved, scheduler_.capacity_tokens()),
                   "max_tokens", "cache_too_small");
  auto job = std::make_shared<Job>(std::move(prompts), params);
  switch (scheduler_.submit(job)) {
    case Scheduler::Submitted::queue_full:
      throw ApiError(429, fmt::format("the server is busy: {} requests are already waiting", options_.max_queue), "",
                     "queue_full", "rate_limit_error");
    case Scheduler::Submitted::stopping:
      throw ApiError(503, "the server is shutting down", "", "shutting_down", "server_error");
    case Scheduler::Submitted::accepted:
      break;
  }
  const auto submitted = std::chrono::steady_clock::now();
  for (const auto& ids : request.prompts) prompt_tokens_ += static_cast<std::int64_t>(ids.size());
  std::vector<ChoiceState> states;
  for (std::size_t c = 0; c < request.choices(); ++c) {
    states.emplace_back(tokenizer_, params[c], options_.end_of_sequence_ids, endpoint == Endpoint::chat,
                        request.starts_thinking[c / static_cast<std::size_t>(request.n)], request.parse_tool_calls);
    if (!request.forced_tool_call.empty()) states.back().force_tool_call(request.forced_tool_call);
    states.back().submitted = submitted;
  }
  // The first items decide between an error answer and a reply.
  std::vector<JobItem> first;
  while (!job->wait(first, kPollMilliseconds)) {
  }
  if (!first.front().error.empty()) {
    job->cancel_all();
    throw ApiError(first.front().status, first.front().error, "", "", first.front().status >= 500 ? "server_error" : "invalid_request_error");
  }
  const bool chat = endpoint == Endpoint::chat;
  auto reply = std::make_shared<Reply>(
      Reply{std::move(request), std::move(states), job, std::move(first), next_id(chat ? "chatcmpl" : "cmpl")});
  // httplib lets go of a reply when it is written, the client is gone, or a shutdown came before
  // its provider ran (httplib then calls no provider): the last two leave sequences to cancel.
  auto release = [this, reply](bool) {
    if (reply->ended) return;
    ++cancelled_requests_;
    reply->job->cancel_all();
  };

  if (!reply->request.stream) {
    // Why a content provider: it is where httplib 0.11.4 lets a handler see its client go
    // (Request has no is_connection_closed; DataSink::is_writable peeks at the socket, where a
    // closed one reads EOF or a reset), with no patched httplib and no socket found behind its
    // back. It waits for the last token, then writes the body at once. Its cost: the head goes
    // out first, so the errors known only after queueing (the engine's 400 refusal, a shutdown's
    // 503) are awaited above, with the first item, and a client gone before then is seen then; an
    // engine failure after it cannot change the 200, so the connection ends without the last
    // chunk (the client sees a failed reply; the log says why).
    // HTTP/1.0 clients take no chunks, and a stopping httplib calls no provider: those wait here.
    if (stopping_ || http_request.version == "HTTP/1.0") {
      collect(*reply, [] { return true; });
      response.set_content(whole_body(*reply), "application/json");
      return;
    }
    response.set_chunked_content_provider(
        "application/json",
        [this, reply](std::size_t, httplib::DataSink& sink) {
          try {
            if (!collect(*reply, [&sink] { return sink.is_writable(); })) return false;
            reply->ended = true;
            const std::string body = whole_body(*reply);
            sink.write(body.data(), body.size());
            sink.done();
            return true;
          } catch (const std::exception& e) {
            reply->ended = true;
            reply->job->cancel_all();
            std::fprintf(stderr, "dsv3 serve: %s failed after its reply began: %s\n", reply->id.c_str(), e.what());
            return false;
          }
        },
        release);
    return;
  }

  // Streaming: the whole stream is written from one call of the content provider, so that a
  // shutdown (which httplib checks between calls) lets it finish.
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [this, reply, chat](std::size_t, httplib::DataSink& sink) {
        const GenerationRequest& request = reply->request;
        auto send = [&](const Json& json) {
          const std::string event = "data: " + dump(json) + "\n\n";
          return sink.write(event.data(), event.size());
        };
        bool open = true;
        if (chat)
          for (std::size_t c = 0; c < reply->states.size() && open; ++c)
            open = send(chunk(reply->id, request,
                              Json::array({{{"index", c},
                                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                                            {"logprobs", nullptr},
                                            {"finish_reason", nullptr}}})));
        std::vector<JobItem> items = std::move(reply->first);
        std::size_t remaining = reply->states.size();
        while (open && remaining > 0) {
          for (const JobItem& item : items) {
            if (!open) break;
            if (!item.error.empty()) {
              send({{"error", {{"message", item.error}, {"type", "server_error"}, {"param", nullptr}, {"code", nullptr}}}});
              remaining = 0;
              break;
            }
            ChoiceState& state = reply->states.at(static_cast<std::size_t>(item.choice));
            if (state.done) continue;
            Delta delta = add_token(state, item, request, *reply->job);
            const auto c = static_cast<std::size_t>(item.choice);
            Json logprobs = nullptr;
            if (request.logprobs && !delta.logprobs.empty()) {
              if (chat) {
                logprobs = {{"content", delta.logprobs}};
              } else {
                logprobs = {{"tokens", Json::array()}, {"token_logprobs", Json::array()}, {"top_logprobs", Json::array()},
                            {"text_offset", Json::array()}};
                for (const Json& entry : delta.logprobs) {
                  logprobs["tokens"].push_back(entry["token"]);
                  logprobs["token_logprobs"].push_back(entry["logprob"]);
                  logprobs["top_logprobs"].push_back(entry["top"]);
                  logprobs["text_offset"].push_back(entry["offset"]);
                }
              }
            }
            if (!delta.content.empty() || !delta.reasoning.empty() || !logprobs.is_null() || !delta.tool_calls.empty()) {
              Json choice;
              if (chat) {
                Json d = Json::object();
                if (!delta.reasoning.empty()) d["reasoning_content"] = delta.reasoning;
                if (!delta.content.empty()) d["content"] = delta.content;
                if (!delta.tool_calls.empty()) d["tool_calls"] = delta.tool_calls;
                choice = {{"index", c}, {"delta", std::move(d)}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}};
              } else {
                choice = {{"index", c}, {"text", delta.content}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}};
              }
              open = send(chunk(reply->id, request, Json::array({std::move(choice)})));
            }
            if (delta.finished) {
              --remaining;
              Json choice = chat ? Json{{"index", c}, {"delta", Json::object()}, {"logprobs", nullptr},
                                        {"finish_reason", state.finish_reason}}
                                 : Json{{"index", c}, {"text", ""}, {"logprobs", nullptr},
                                        {"finish_reason", state.finish_reason}};
              if (open) open = send(chunk(reply->id, request, Json::array({std::move(choice)})));
            }
          }
          items.clear();
          if (!open || remaining == 0) break;
          if (!reply->job->wait(items, kPollMilliseconds) && !sink.is_writable()) open = false;
        }
        // The client is gone (a closed connection, a page's stop button): `release` ends its
        // sequences now, which frees their pages.
        if (!open) return false;
        reply->ended = true;
        if (request.include_usage) {
          Json last = chunk(reply->id, request, Json::array());
          last["usage"] = usage(request, reply->states, *reply->job);
          send(last);
        }
        const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      },
      release);
}

std::string Server::metrics() const {
  const SchedulerStats s = scheduler_.stats();
  std::string out;
  out += "# HELP dsv3_requests_total HTTP requests by route and status.\n# TYPE dsv3_requests_total counter\n";
  for (const auto& [key, count] : counts_.snapshot())
    out += fmt::format("dsv3_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, count);
  auto metric = [&](const char* name, const char* type, const char* help, std::int64_t value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  metric("dsv3_engine_steps_total", "counter", "Engine steps.", s.steps);
  metric("dsv3_engine_batched_steps_total", "counter", "Engine steps with more than one sequence.", s.batched_steps);
  metric("dsv3_engine_most_batch", "gauge", "The most sequences one step has carried.", s.most_batch);
  metric("dsv3_generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens);
  metric("dsv3_running_sequences", "gauge", "Sequences in the engine.", s.running);
  metric("dsv3_queued_requests", "gauge", "Requests waiting to join the batch.", s.queued);
  metric("dsv3_preemptions_total", "counter", "Sequences preempted (pages taken back, computed again later).",
         s.preemptions);
  metric("dsv3_preempted_sequences", "gauge", "Preempted sequences waiting to be computed again.", s.waiting);
  metric("dsv3_kv_cache_free_tokens", "gauge",
         "KV cache tokens free for new work (free blocks and evictable cached ones).", s.cache_free_tokens);
  metric("dsv3_kv_cache_capacity_tokens", "gauge", "KV cache capacity in tokens.", scheduler_.capacity_tokens());
  metric("dsv3_kv_cache_used_tokens", "gauge", "KV cache tokens held by sequences.",
         scheduler_.capacity_tokens() - s.cache_free_tokens);
  metric("dsv3_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", prompt_tokens_);
  metric("dsv3_completion_tokens_total", "counter", "Tokens delivered to requests.", completion_tokens_);
  metric("dsv3_requests_cancelled_total", "counter", "Requests whose client left before their reply was written.",
         cancelled_requests_);
  metric("dsv3_sequences_cancelled_total", "counter",
         "Sequences ended before they finished (a stop string, a client gone, a shutdown).", s.cancelled);
  metric("dsv3_prefix_cache_hit_tokens_total", "counter",
         "Tokens taken from the prefix cache instead of computed (prompts, and preempted sequences computed again).",
         s.prefix_cache.hit_tokens);
  metric("dsv3_prefix_cache_evicted_blocks_total", "counter", "Cached KV blocks evicted for new work.",
         s.prefix_cache.evicted_blocks);
  out += "# HELP dsv3_kv_cache_blocks KV cache blocks: used by sequences, cached (kept for later prompts, evictable), "
         "free.\n# TYPE dsv3_kv_cache_blocks gauge\n";
  out += fmt::format("dsv3_kv_cache_blocks{{state=\"used\"}} {}\ndsv3_kv_cache_blocks{{state=\"cached\"}} {}\n"
                     "dsv3_kv_cache_blocks{{state=\"free\"}} {}\n",
                     s.prefix_cache.used_blocks, s.prefix_cache.cached_blocks, s.prefix_cache.free_blocks);
  if (!s.speculation.drafted.empty()) {
    out += "# HELP dsv3_mtp_drafted_tokens_total MTP draft tokens tried, by draft position.\n"
           "# TYPE dsv3_mtp_drafted_tokens_total counter\n";
    for (std::size_t i = 0; i < s.speculation.drafted.size(); ++i)
      out += fmt::format("dsv3_mtp_drafted_tokens_total{{position=\"{}\"}} {}\n", i + 1, s.speculation.drafted[i]);
    out += "# HELP dsv3_mtp_accepted_tokens_total MTP draft tokens accepted, by draft position.\n"
           "# TYPE dsv3_mtp_accepted_tokens_total counter\n";
    for (std::size_t i = 0; i < s.speculation.accepted.size(); ++i)
      out += fmt::format("dsv3_mtp_accepted_tokens_total{{position=\"{}\"}} {}\n", i + 1, s.speculation.accepted[i]);
  }
  out += scheduler_.batch_rows().text("dsv3_batch_rows", "Sequences per engine step.");
  out += time_to_first_token_.text("dsv3_time_to_first_token_seconds", "From request to its first token.");
  out += inter_token_latency_.text("dsv3_inter_token_latency_seconds", "Between consecutive tokens of a choice.");
  return out;
}

void Server::routes() {
  // Every route answers errors as OpenAI does, and counts itself for /metrics.
  auto wrap = [this](const std::string& route, auto handler) {
    return [this, route, handler](const httplib::Request& request, httplib::Response& response) {
      try {
        handler(request, response);
      } catch (const ApiError& e) {
        reply_error(response, e);
      } catch (const std::exception& e) {
        reply_error(response, ApiError(500, e.what(), "", "", "server_error"));
      }
      counts_.add(route, response.status);
    };
  };
  auto chat = wrap("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) {
    generate(q, r, Endpoint::chat);
  });
  auto completions = wrap("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) {
    generate(q, r, Endpoint::completion);
  });
  http_.Post("/v1/chat/completions", chat);
  http_.Post("/chat/completions", chat);
  http_.Post("/v1/completions", completions);
  http_.Post("/completions", completions);
  auto models = wrap("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
    const Json list = {{"object", "list"},
                       {"data", Json::array({{{"id", model_name_},
                                              {"object", "model"},
                                              {"created", created_},
                                              {"owned_by", "dsv3"},
                                              {"max_model_len", limits_.context}}})}};
    r.set_content(dump(list), "application/json");
  });
  http_.Get("/v1/models", models);
  http_.Get("/models", models);
  http_.Get("/health", wrap("/health", [this](const httplib::Request&, httplib::Response& r) {
              if (stopping_) throw ApiError(503, "the server is shutting down", "", "shutting_down", "server_error");
              r.set_content("{\"status\":\"ok\"}", "application/json");
            }));
  http_.Get("/metrics", wrap("/metrics", [this](const httplib::Request&, httplib::Response& r) {
              r.set_content(metrics(), "text/plain; version=0.0.4");
            }));
  http_.Get("/expert-stats", wrap("/expert-stats", [this](const httplib::Request&, httplib::Response& r) {
              const SchedulerStats stats = scheduler_.stats();
              if (!stats.router_counts)
                throw ApiError(404, "expert statistics are off (dsv3 serve --expert-stats on)", "", "not_found");
              r.set_content(expert_stats_json(*stats.router_counts, model_.config(), options_.served_model_name),
                            "application/json");
            }));
  http_.Post("/tokenize", wrap("/tokenize", [this](const httplib::Request& q, httplib::Response& r) {
               r.set_content(dump(tokenize(parse_body(q.body), limits_)), "application/json");
             }));
  http_.Post("/detokenize", wrap("/detokenize", [this](const httplib::Request& q, httplib::Response& r) {
               r.set_content(dump(detokenize(parse_body(q.body), limits_)), "application/json");
             }));
  // The chat page: static files, served without the API key (the page asks for it on a 401).
  auto page = [this](const httplib::Request& q, httplib::Response& r) {
    const std::optional<PageFile> file = page_file(q.path);
    if (!file) throw ApiError(404, fmt::format("no route GET {}", q.path), "", "not_found");
    r.set_content(file->content.data(), file->content.size(), file->content_type);
  };
  http_.Get("/", wrap("/", page));
  http_.Get("/index.html", wrap("/", page));
  http_.Get("/chat.css", wrap("/", page));
  http_.Get("/chat.js", wrap("/", page));
  http_.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    const bool open = request.path == "/health" || (request.method == "GET" && page_file(request.path));
    if (options_.api_key.empty() || open) return httplib::Server::HandlerResponse::Unhandled;
    if (request.get_header_value("Authorization") == "Bearer " + options_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    reply_error(response, ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'", "",
                                   "invalid_api_key", "authentication_error"));
    counts_.add("unauthorized", 401);
    return httplib::Server::HandlerResponse::Handled;
  });
  // httplib's own refusals (no route, body too large, a malformed request) as JSON errors too.
  http_.set_error_handler([this](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    const std::string message = response.status == 404   ? fmt::format("no route {} {}", request.method, request.path)
                                : response.status == 413 ? std::string("the request body is too large")
                                                         : fmt::format("the request was refused ({})", response.status);
    response.set_content(dump(error_body(ApiError(response.status, message, "", response.status == 404 ? "not_found" : ""))),
                         "application/json");
  });
}

int Server::run() {
  routes();
  http_.new_task_queue = [] { return new httplib::ThreadPool(64); };
  http_.set_payload_max_length(16u << 20);
  http_.set_read_timeout(30, 0);
  http_.set_write_timeout(30, 0);
  http_.set_keep_alive_timeout(5);
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which would let a second server
  // share the port silently instead of failing to listen.
  http_.set_socket_options([](socket_t socket) {
    int yes = 1;
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  if (!http_.bind_to_port(options_.host, options_.port))
    fail("cannot listen on {}:{} (in use, or not an address of this machine)", options_.host, options_.port);
  std::signal(SIGPIPE, SIG_IGN);
  received_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::fprintf(stderr, "dsv3 serve: %s on http://%s:%d (context %lld tokens, KV cache %lld tokens, batch %lld)\n",
               model_name_.c_str(), options_.host.c_str(), options_.port, static_cast<long long>(limits_.context),
               static_cast<long long>(scheduler_.capacity_tokens()), static_cast<long long>(options_.max_batch));
  std::atomic<bool> listening_done{false};
  std::thread watcher([this, &listening_done] {
    while (received_signal == 0 && !listening_done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (listening_done) return;
    std::fprintf(stderr, "dsv3 serve: signal %d: no new requests; finishing those in flight (up to %.0f s)\n",
                 received_signal.load(), options_.grace_seconds);
    stopping_ = true;
    http_.stop();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.grace_seconds);
    while (!listening_done && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (listening_done) return;
    std::fprintf(stderr, "dsv3 serve: the grace period is over; cancelling the requests still running\n");
    scheduler_.cancel_all();
  });
  const bool listened = http_.listen_after_bind();
  listening_done = true;
  watcher.join();
  scheduler_.stop();
  if (received_signal == 0 && !listened) fail("the server stopped unexpectedly");
  std::fprintf(stderr, "dsv3 serve: stopped\n");
  return 0;
}

}  // namespace

int serve(const Model& model, const Tokenizer& tokenizer, const EngineOptions& engine_options,
          const ServeOptions& options) {
  // Decoding sequences go first in every step: a full batch must leave room for prompts.
  const std::int64_t decode_tokens = options.max_batch * (1 + engine_options.mtp_drafts);
  if (engine_options.max_step_tokens <= decode_tokens)
    fail("--max-step-tokens {} leaves no room for prompts when --max-batch {} sequences decode {} tokens each a step "
         "(raise it above {})",
         engine_options.max_step_tokens, options.max_batch, 1 + engine_options.mtp_drafts, decode_tokens);
  Engine engine(model, engine_options);
  Server server(model, tokenizer, engine, options);
  return server.run();
}

}  // namespace dsv3::serve
