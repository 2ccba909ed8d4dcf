// tool_choice end to end on a random model, which never calls a tool by itself: a named function
// or "required" makes the reply a tool call (the server starts it inside one), the same streamed
// and whole; "auto" and "none" answer as before. The streamed deltas are put back together as the
// openai client does (content and arguments appended, by choice and call index).
#include "serve_support.h"

namespace dsv3 {
namespace {

using namespace test_serve;

const std::regex kCallId("^call_[0-9a-f]{16}$");

Json tool(const std::string& name) {
  return {{"type", "function"},
          {"function",
           {{"name", name},
            {"description", "Looks something up"},
            {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}}};
}

Json chat_body(const Json& tool_choice, int max_tokens, Json tools = Json::array({tool("get_weather"), tool("get_time")})) {
  Json body = {{"messages", {{{"role", "user"}, {"content", "What is the weather in Paris?"}}}},
               {"tools", std::move(tools)},
               {"max_tokens", max_tokens},
               {"temperature", 0}};
  if (!tool_choice.is_null()) body["tool_choice"] = tool_choice;
  return body;
}

Json named(const std::string& name) { return {{"type", "function"}, {"function", {{"name", name}}}}; }

// A reply's choices as {content, tool_calls, finish_reason}, and its usage.
struct Reply {
  std::vector<Json> choices;
  Json usage;
};

Reply whole(ServerProcess& server, const Json& body) {
  auto client = server.client();
  int status = 0;
  const Json reply = post(client, "/v1/chat/completions", body, &status);
  EXPECT_EQ(status, 200) << reply.dump() << "\n" << server.log();
  Reply out;
  if (status != 200) return out;
  for (const Json& choice : reply["choices"]) {
    const Json& message = choice["message"];
    out.choices.push_back({{"content", message["content"].is_null() ? "" : message["content"]},
                           {"tool_calls", message.value("tool_calls", Json::array())},
                           {"finish_reason", choice["finish_reason"]}});
  }
  out.usage = reply["usage"];
  return out;
}

Reply streamed(ServerProcess& server, Json body) {
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto client = server.client();
  std::string text;
  httplib::Request request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  request.body = body.dump();
  request.set_header("Content-Type", "application/json");
  request.set_header("Authorization", "Bearer " + kApiKey);
  request.content_receiver = [&](const char* data, std::size_t size, uint64_t, uint64_t) {
    text.append(data, size);
    return true;
  };
  const auto result = client.send(request);
  EXPECT_TRUE(result && result->status == 200) << text << "\n" << server.log();
  Reply out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.starts_with("data: {")) continue;
    const Json event = Json::parse(line.substr(6));
    if (event.contains("usage") && !event["usage"].is_null()) out.usage = event["usage"];
    for (const Json& choice : event["choices"]) {
      const std::size_t c = choice["index"];
      if (out.choices.size() <= c)
        out.choices.resize(c + 1, {{"content", ""}, {"tool_calls", Json::array()}, {"finish_reason", nullptr}});
      Json& into = out.choices[c];
      const Json& delta = choice["delta"];
      if (delta.contains("content") && delta["content"].is_string())
        into["content"] = into["content"].get<std::string>() + delta["content"].get<std::string>();
      for (const Json& call : delta.value("tool_calls", Json::array())) {
        const std::size_t k = call["index"];
        Json& calls = into["tool_calls"];
        while (calls.size() <= k) calls.push_back({{"function", {{"name", ""}, {"arguments", ""}}}});
        if (call.contains("id")) calls[k]["id"] = call["id"];
        if (call.contains("type")) calls[k]["type"] = call["type"];
        const Json& function = call.value("function", Json::object());
        if (function.contains("name")) calls[k]["function"]["name"] = function["name"];
        if (function.contains("arguments"))
          calls[k]["function"]["arguments"] =
              calls[k]["function"]["arguments"].get<std::string>() + function["arguments"].get<std::string>();
      }
      if (!choice["finish_reason"].is_null()) into["finish_reason"] = choice["finish_reason"];
    }
  }
  return out;
}

// Both forms give the same choices; every call has an id of OpenAI's form (ids differ per reply).
void expect_same(const Reply& a, const Reply& b) {
  ASSERT_EQ(a.choices.size(), b.choices.size());
  for (std::size_t c = 0; c < a.choices.size(); ++c) {
    SCOPED_TRACE("choice " + std::to_string(c));
    EXPECT_EQ(a.choices[c]["content"], b.choices[c]["content"]);
    EXPECT_EQ(a.choices[c]["finish_reason"], b.choices[c]["finish_reason"]);
    const Json& x = a.choices[c]["tool_calls"];
    const Json& y = b.choices[c]["tool_calls"];
    ASSERT_EQ(x.size(), y.size()) << x.dump() << "\n" << y.dump();
    for (std::size_t k = 0; k < x.size(); ++k) {
      EXPECT_TRUE(std::regex_match(x[k]["id"].get<std::string>(), kCallId)) << x[k].dump();
      EXPECT_TRUE(std::regex_match(y[k]["id"].get<std::string>(), kCallId)) << y[k].dump();
      EXPECT_EQ(x[k]["type"], "function");
      EXPECT_EQ(x[k]["type"], y[k]["type"]);
      EXPECT_EQ(x[k]["function"], y[k]["function"]);
    }
  }
  EXPECT_EQ(a.usage["completion_tokens"], b.usage["completion_tokens"]);
  EXPECT_EQ(a.usage["prompt_tokens"], b.usage["prompt_tokens"]);
}

std::int64_t token_count(ServerProcess& server, const Json& body) {
  auto client = server.client();
  int status = 0;
  const Json reply = post(client, "/tokenize", body, &status);
  EXPECT_EQ(status, 200) << reply.dump();
  return status == 200 ? reply["count"].get<std::int64_t>() : -1;
}

// The reply is a call of `name` (or any name when empty), with arguments as a string.
void expect_forced_call(const Json& choice, const std::string& name, std::int64_t completion_tokens, int max_tokens) {
  const std::string reason = choice["finish_reason"];
  EXPECT_TRUE(reason == "tool_calls" || reason == "length") << choice.dump();
  if (reason == "length") EXPECT_EQ(completion_tokens, max_tokens);
  ASSERT_GE(choice["tool_calls"].size(), 1u) << choice.dump();
  const Json& call = choice["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_TRUE(call["function"]["name"].is_string()) << call.dump();
  if (!name.empty()) EXPECT_EQ(call["function"]["name"], name);
  EXPECT_TRUE(call["function"]["arguments"].is_string()) << call.dump();
  // What the server forced is never given back as text.
  EXPECT_EQ(choice["content"].get<std::string>().find("<｜tool▁sep｜>"), std::string::npos) << choice.dump();
}

TEST(ServeToolChoice, ANamedFunctionIsCalledStreamedOrNot) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const int max_tokens = 6;
  const Json body = chat_body(named("get_weather"), max_tokens);
  const Reply a = whole(server, body);
  ASSERT_EQ(a.choices.size(), 1u);
  expect_forced_call(a.choices[0], "get_weather", a.usage["completion_tokens"], max_tokens);
  expect_same(a, streamed(server, body));
  // The forced text counts as prompt tokens (the client's prompt, then the call's opening), never
  // as completion tokens.
  Json unforced = body;
  unforced.erase("tool_choice");
  const std::int64_t own = token_count(server, unforced);
  const std::int64_t forced = token_count(
      server, {{"prompt", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"},
               {"add_special_tokens", false}});
  EXPECT_EQ(forced, 11);
  EXPECT_EQ(a.usage["prompt_tokens"], own + forced);
  EXPECT_EQ(token_count(server, body), own + forced);
  EXPECT_LE(a.usage["completion_tokens"].get<int>(), max_tokens);
  EXPECT_EQ(a.usage["total_tokens"], a.usage["prompt_tokens"].get<int>() + a.usage["completion_tokens"].get<int>());

  // Sampled, several choices: every one is the call, streamed as whole.
  Json sampled = body;
  sampled["n"] = 3;
  sampled["temperature"] = 1.0;
  sampled["seed"] = 7;
  const Reply b = whole(server, sampled);
  ASSERT_EQ(b.choices.size(), 3u);
  for (const Json& choice : b.choices) expect_forced_call(choice, "get_weather", max_tokens, max_tokens);
  expect_same(b, streamed(server, sampled));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeToolChoice, AForcedCallTheModelEndsFinishesWithToolCalls) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  auto client = server.client();
  int status = 0;
  const Json eos = post(client, "/tokenize", {{"prompt", "<｜end▁of▁sentence｜>"}, {"add_special_tokens", false}}, &status);
  ASSERT_EQ(status, 200);
  ASSERT_EQ(eos["count"], 1);
  // The end of the reply as its first token: the forced call is all there is.
  Json body = chat_body(named("get_time"), 8);
  body["logit_bias"] = {{std::to_string(eos["tokens"][0].get<int>()), 100}};
  const Reply a = whole(server, body);
  ASSERT_EQ(a.choices.size(), 1u);
  EXPECT_EQ(a.choices[0]["finish_reason"], "tool_calls");
  ASSERT_EQ(a.choices[0]["tool_calls"].size(), 1u);
  EXPECT_EQ(a.choices[0]["tool_calls"][0]["function"], (Json{{"name", "get_time"}, {"arguments", ""}}));
  EXPECT_EQ(a.choices[0]["content"], "");
  EXPECT_EQ(a.usage["completion_tokens"], 1);
  expect_same(a, streamed(server, body));
  // Unforced, the same reply is an empty answer.
  body["tool_choice"] = "auto";
  const Reply b = whole(server, body);
  ASSERT_EQ(b.choices.size(), 1u);
  EXPECT_EQ(b.choices[0]["finish_reason"], "stop");
  EXPECT_TRUE(b.choices[0]["tool_calls"].empty());
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeToolChoice, RequiredGivesAToolCall) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const int max_tokens = 6;
  // Two functions: the model writes the name (a random model's is no function's: it is returned
  // as written, for the client to check, as OpenAI's may be).
  const Json body = chat_body("required", max_tokens);
  const Reply a = whole(server, body);
  ASSERT_EQ(a.choices.size(), 1u);
  expect_forced_call(a.choices[0], "", a.usage["completion_tokens"], max_tokens);
  expect_same(a, streamed(server, body));
  // One function: that one.
  const Json one = chat_body("required", max_tokens, Json::array({tool("get_time")}));
  const Reply b = whole(server, one);
  ASSERT_EQ(b.choices.size(), 1u);
  expect_forced_call(b.choices[0], "get_time", b.usage["completion_tokens"], max_tokens);
  expect_same(b, streamed(server, one));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeToolChoice, AutoAndNoneAnswerAsWithoutToolChoice) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const int max_tokens = 8;
  Json without_tools = chat_body(nullptr, max_tokens);
  without_tools.erase("tools");
  const Reply plain = whole(server, without_tools);
  ASSERT_EQ(plain.choices.size(), 1u);
  EXPECT_TRUE(plain.choices[0]["tool_calls"].empty());
  for (const Json& choice : {Json(nullptr), Json("auto"), Json("none")}) {
    SCOPED_TRACE(choice.dump());
    const Reply reply = whole(server, chat_body(choice, max_tokens));
    EXPECT_EQ(reply.choices, plain.choices);
    EXPECT_EQ(reply.usage["prompt_tokens"], plain.usage["prompt_tokens"]);
    EXPECT_EQ(reply.usage["completion_tokens"], plain.usage["completion_tokens"]);
  }
  EXPECT_EQ(server.stop(), 0) << server.log();
}

}  // namespace
}  // namespace dsv3
