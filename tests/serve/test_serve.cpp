// `dsv3 serve` end to end: a server process on a small model made by `dsv3 init` with the real
// DeepSeek-V3 tokenizer, on 127.0.0.1 and a free port, driven by the official openai npm package
// (openai_client.js) and by httplib's client (or a plain socket) for what a well-behaved client
// never sends or does. Every server is stopped by the test (SIGTERM, then SIGKILL after a bound)
// and every wait is bounded.
#include <tuple>

#include "serve_support.h"

namespace dsv3 {
namespace {

using namespace test_serve;

TEST(Serve, OpenAiClientEndToEnd) {
  ASSERT_TRUE(fs::exists(fs::path(DSV3_DATA_DIR) / "npm" / "node_modules" / "openai" / "package.json"))
      << "the openai npm package is missing from " << DSV3_DATA_DIR << "/npm: run scripts/setup.sh";
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  ServerProcess speculating("--mtp 2");  // for usage.speculation
  ASSERT_TRUE(speculating.ready()) << speculating.log();
  // The reference: `dsv3 generate`'s greedy continuation of the same prompt.
  const std::string prompt = "The quick brown fox";
  const int max_tokens = 16;
  int code = -1;
  std::string generated = run_capture(std::string(DSV3_BINARY) + " generate --model " + model_dir().string() +
                                          " --prompt '" + prompt + "' --max-tokens " + std::to_string(max_tokens) +
                                          " 2>/dev/null",
                                      &code);
  ASSERT_EQ(code, 0) << generated;
  ASSERT_TRUE(generated.ends_with("\n"));
  generated.pop_back();
  const fs::path expected = fs::temp_directory_path() / ("dsv3-test-serve-expected-" + std::to_string(::getpid()) + ".json");
  std::ofstream(expected) << Json{{"prompt", prompt},
                                  {"max_tokens", max_tokens},
                                  {"greedy_text", generated},
                                  {"mtp_url", speculating.url() + "/v1"},
                                  {"mtp_drafts", 2}}
                                 .dump();
  const std::string output = run_capture("DSV3_API_KEY=" + kApiKey + " DSV3_NPM_DIR=" + DSV3_DATA_DIR +
                                             "/npm timeout 120 node " + DSV3_SOURCE_DIR +
                                             "/tests/serve/openai_client.js " + server.url() + "/v1 small-dsv3 " +
                                             expected.string(),
                                         &code);
  fs::remove(expected);
  std::printf("%s", output.c_str());
  EXPECT_EQ(code, 0) << output << "\nserver log:\n" << server.log();
  EXPECT_NE(output.find("checks passed"), std::string::npos) << output;
  EXPECT_EQ(server.stop(), 0) << server.log();
  EXPECT_EQ(speculating.stop(), 0) << speculating.log();
}

struct BadRequest {
  BadRequest(std::string name, std::string method, std::string path, std::string body,
             std::string authorization = "Bearer " + kApiKey, std::string param = "")
      : name(std::move(name)), method(std::move(method)), path(std::move(path)), body(std::move(body)),
        authorization(std::move(authorization)), param(std::move(param)) {}
  std::string name;
  std::string method;
  std::string path;
  std::string body;
  std::string authorization;  // empty: no Authorization header
  std::string param;          // the parameter the error must name ("" when none)
};

std::vector<BadRequest> bad_requests() {
  const std::string messages = R"("messages":[{"role":"user","content":"hi"}])";
  auto chat = [&](const std::string& name, const std::string& fields, const std::string& param) {
    return BadRequest{name, "POST", "/v1/chat/completions", "{" + messages + "," + fields + "}", "Bearer " + kApiKey, param};
  };
  auto completion = [&](const std::string& name, const std::string& fields, const std::string& param) {
    return BadRequest{name, "POST", "/v1/completions", "{" + fields + "}", "Bearer " + kApiKey, param};
  };
  std::string many_stops = "[";
  for (int i = 0; i < 40; ++i) many_stops += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
  many_stops += "]";
  std::string long_prompt = "[";
  for (int i = 0; i < 3000; ++i) long_prompt += (i ? ",100" : "100");
  long_prompt += "]";
  std::vector<BadRequest> cases = {
      {"empty body", "POST", "/v1/chat/completions", ""},
      {"truncated JSON", "POST", "/v1/chat/completions", "{\"messages\": ["},
      {"not an object", "POST", "/v1/chat/completions", "[1,2,3]"},
      {"null body", "POST", "/v1/chat/completions", "null"},
      {"invalid UTF-8", "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xc3\"}]}"},
      {"deeply nested", "POST", "/v1/chat/completions", std::string(100000, '[') + std::string(100000, ']')},
      {"no messages", "POST", "/v1/chat/completions", "{}", "Bearer " + kApiKey, "messages"},
      {"messages not a list", "POST", "/v1/chat/completions", R"({"messages":"hi"})", "Bearer " + kApiKey, "messages"},
      {"empty messages", "POST", "/v1/chat/completions", R"({"messages":[]})", "Bearer " + kApiKey, "messages"},
      {"message not an object", "POST", "/v1/chat/completions", R"({"messages":["hi"]})", "Bearer " + kApiKey, "messages[0]"},
      {"unknown role", "POST", "/v1/chat/completions", R"({"messages":[{"role":"wizard","content":"x"}]})",
       "Bearer " + kApiKey, "messages[0].role"},
      {"no role", "POST", "/v1/chat/completions", R"({"messages":[{"content":"x"}]})", "Bearer " + kApiKey,
       "messages[0].role"},
      {"no content", "POST", "/v1/chat/completions", R"({"messages":[{"role":"user"}]})", "Bearer " + kApiKey,
       "messages[0].content"},
      {"content a number", "POST", "/v1/chat/completions", R"({"messages":[{"role":"user","content":5}]})",
       "Bearer " + kApiKey, "messages[0].content"},
      {"image part", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})", "Bearer " + kApiKey,
       "messages[0].content[0].type"},
      chat("temperature a string", R"("temperature":"hot")", "temperature"),
      chat("negative temperature", R"("temperature":-1)", "temperature"),
      chat("absurd temperature", R"("temperature":1e300)", "temperature"),
      chat("top_p zero", R"("top_p":0)", "top_p"),
      chat("top_p above one", R"("top_p":1.5)", "top_p"),
      chat("top_k a string", R"("top_k":"5")", "top_k"),
      chat("min_p above one", R"("min_p":2)", "min_p"),
      chat("max_tokens zero", R"("max_tokens":0)", "max_tokens"),
      chat("negative max_tokens", R"("max_tokens":-5)", "max_tokens"),
      chat("absurd max_tokens", R"("max_tokens":1000000000000)", "max_tokens"),
      chat("fractional max_tokens", R"("max_tokens":3.5)", "max_tokens"),
      chat("max_tokens beyond the context", R"("max_tokens":5000)", "max_tokens"),
      chat("n zero", R"("n":0)", "n"),
      chat("absurd n", R"("n":100000)", "n"),
      chat("stop a number", R"("stop":5)", "stop"),
      chat("empty stop string", R"("stop":[""])", "stop"),
      chat("too many stops", "\"stop\":" + many_stops, "stop"),
      chat("logit_bias a list", R"("logit_bias":[1,2])", "logit_bias"),
      chat("logit_bias key not an id", R"("logit_bias":{"abc":1})", "logit_bias"),
      chat("logit_bias id out of vocabulary", R"("logit_bias":{"99999999":1})", "logit_bias"),
      chat("logit_bias value out of range", R"("logit_bias":{"5":1000})", "logit_bias"),
      chat("seed a string", R"("seed":"x")", "seed"),
      chat("stream not a boolean", R"("stream":"yes")", "stream"),
      chat("stream_options without stream", R"("stream_options":{"include_usage":true})", "stream_options"),
      chat("logprobs a number", R"("logprobs":1)", "logprobs"),
      chat("too many top_logprobs", R"("logprobs":true,"top_logprobs":50)", "top_logprobs"),
      chat("presence_penalty out of range", R"("presence_penalty":3)", "presence_penalty"),
      chat("frequency_penalty a string", R"("frequency_penalty":"a")", "frequency_penalty"),
      chat("user a number", R"("user":5)", "user"),
      chat("tools not a list", R"("tools":{"type":"function"})", "tools"),
      chat("unknown tool_choice", R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"always")",
           "tool_choice"),
      chat("tool_choice required without tools", R"("tool_choice":"required")", "tool_choice"),
      chat("tool_choice naming an unknown function",
           R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}})",
           "tool_choice.function.name"),
      chat("tool_choice without a function name",
           R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function"})",
           "tool_choice.function.name"),
      chat("tool_choice forcing a function name that is not one word",
           R"("tools":[{"type":"function","function":{"name":"get weather"}}],"tool_choice":{"type":"function","function":{"name":"get weather"}})",
           "tool_choice.function.name"),
      {"tool_choice forcing a call with chat prefix completion", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"The","prefix":true}],
           "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"})",
       "Bearer " + kApiKey, "tool_choice"},
      {"tool call without a function", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"a"}]}]})",
       "Bearer " + kApiKey, "messages[1].tool_calls[0].function"},
      {"tool calls on a user message", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":"x","tool_calls":[]}]})", "Bearer " + kApiKey, "messages[0].tool_calls"},
      {"prefix not on the last message", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"assistant","content":"x","prefix":true},{"role":"user","content":"y"}]})",
       "Bearer " + kApiKey, "messages[0].prefix"},
      {"prefix on a user message", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":"y","prefix":true}]})", "Bearer " + kApiKey, "messages[0].prefix"},
      completion("no prompt", R"("max_tokens":3)", "prompt"),
      completion("empty prompt list", R"("prompt":[])", "prompt"),
      completion("negative token id", R"("prompt":[1,-1])", "prompt"),
      completion("token id out of vocabulary", R"("prompt":[999999999])", "prompt"),
      completion("huge token id", R"("prompt":[18446744073709551615])", "prompt"),
      completion("empty token list", R"("prompt":[[]])", "prompt"),
      completion("mixed prompt list", R"("prompt":[1,"a"])", "prompt"),
      completion("prompt an object", R"("prompt":{"a":1})", "prompt"),
      completion("prompt a boolean", R"("prompt":true)", "prompt"),
      completion("prompt beyond the context", "\"prompt\":" + long_prompt, "prompt"),
      completion("too many logprobs", R"("prompt":"hi","logprobs":100)", "logprobs"),
      completion("suffix a number", R"("prompt":"hi","suffix":5)", "suffix"),
      completion("suffix with token ids", R"("prompt":[1,2],"suffix":"x")", "prompt"),
      {"tokenize without a prompt", "POST", "/tokenize", "{}", "Bearer " + kApiKey, "prompt"},
      {"detokenize a negative id", "POST", "/detokenize", R"({"tokens":[-1]})", "Bearer " + kApiKey, "tokens"},
      {"detokenize a string", "POST", "/detokenize", R"({"tokens":"abc"})", "Bearer " + kApiKey, "tokens"},
      {"no such route", "POST", "/v1/embeddings", "{}"},
      {"wrong method", "GET", "/v1/chat/completions", ""},
      {"no API key", "POST", "/v1/chat/completions", "{" + messages + "}", ""},
      {"wrong API key", "POST", "/v1/chat/completions", "{" + messages + "}", "Bearer wrong"},
      {"API key without Bearer", "GET", "/v1/models", "", kApiKey},
      {"body too large", "POST", "/v1/completions", "{\"prompt\":\"" + std::string(17u << 20, 'a') + "\"}"},
  };
  return cases;
}

TEST(Serve, APortInUseIsAnError) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  int code = -1;
  const std::string output = run_capture("timeout 30 " + std::string(DSV3_BINARY) + " serve --model " +
                                             model_dir().string() + " --port " + std::to_string(server.port()),
                                         &code);
  EXPECT_EQ(code, 1) << output;
  EXPECT_NE(output.find("cannot listen on 127.0.0.1:" + std::to_string(server.port())), std::string::npos) << output;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(Serve, MalformedRequestsGet4xxJsonErrorsAndTheServerKeepsServing) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const auto cases = bad_requests();
  EXPECT_GE(cases.size(), 30u);
  for (const BadRequest& bad : cases) {
    SCOPED_TRACE(bad.name);
    httplib::Client client = server.client(false);
    httplib::Headers headers;
    if (!bad.authorization.empty()) headers.emplace("Authorization", bad.authorization);
    auto response = bad.method == "GET" ? client.Get(bad.path, headers)
                                        : client.Post(bad.path, headers, bad.body, "application/json");
    ASSERT_TRUE(response) << "no response: " << httplib::to_string(response.error()) << "\n" << server.log();
    EXPECT_GE(response->status, 400);
    EXPECT_LT(response->status, 500);
    const Json body = Json::parse(response->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << response->body.substr(0, 300);
    ASSERT_TRUE(body.contains("error")) << response->body.substr(0, 300);
    const Json& error = body["error"];
    EXPECT_TRUE(error["message"].is_string());
    EXPECT_TRUE(error["type"].is_string());
    EXPECT_TRUE(error.contains("param"));
    EXPECT_TRUE(error.contains("code"));
    if (!bad.param.empty()) {
      EXPECT_EQ(error["param"], bad.param) << response->body;
    }
  }
  // Still serving, and /health needs no key.
  auto client = server.client(false);
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto keyed = server.client();
  int status = 0;
  const Json reply = post(keyed, "/v1/chat/completions",
                          {{"messages", {{{"role", "user"}, {"content", "Still there?"}}}}, {"max_tokens", 5}}, &status);
  EXPECT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(reply["usage"]["completion_tokens"], 5);
  // A tool_choice naming one of the tools is accepted, and that function is called.
  const Json named = post(keyed, "/v1/chat/completions",
                          Json::parse(R"({"messages":[{"role":"user","content":"Weather?"}],"max_tokens":3,
                                          "tools":[{"type":"function","function":{"name":"get_weather"}}],
                                          "tool_choice":{"type":"function","function":{"name":"get_weather"}}})"),
                          &status);
  EXPECT_EQ(status, 200) << named.dump();
  EXPECT_EQ(named["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather") << named.dump();
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Sends a greedy completion of `max_tokens` and, once it is being generated, SIGTERM to the
// server; returns the completion's status and body (a failure is recorded as a test failure).
std::pair<int, Json> complete_through_sigterm(ServerProcess& server, const std::string& prompt, int max_tokens) {
  auto reply = std::async(std::launch::async, [&] {
    auto client = server.client();
    int status = 0;
    Json body = post(client, "/v1/completions", {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}}, &status);
    return std::pair(status, body);
  });
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (metric(server, "dsv3_running_sequences") < 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(metric(server, "dsv3_running_sequences"), 1);
  ::kill(server.pid(), SIGTERM);
  if (reply.wait_for(60s) != std::future_status::ready) {
    ADD_FAILURE() << "the completion did not finish within 60 s of SIGTERM";
    return {0, Json()};
  }
  return reply.get();
}

TEST(Serve, SigtermFinishesTheRequestInFlightAndExitsZero) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const auto [status, body] = complete_through_sigterm(server, "Count with me:", 400);
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["usage"]["completion_tokens"], 400);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(server.wait_exit(20), 0) << server.log();
  EXPECT_NE(server.log().find("finishing those in flight"), std::string::npos) << server.log();
}

TEST(Serve, AfterTheGracePeriodRequestsInFlightAreCutShortAndTheServerExitsZero) {
  ServerProcess server("--grace-period 0.3");
  ASSERT_TRUE(server.ready()) << server.log();
  const auto [status, body] = complete_through_sigterm(server, "On and on:", 1900);
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 1900) << body.dump();
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(server.wait_exit(20), 0) << server.log();
  EXPECT_NE(server.log().find("the grace period is over"), std::string::npos) << server.log();
}

// httplib calls no content provider once it is stopping: a whole reply that was still queued at
// SIGTERM is written by its handler instead, whole, with its Content-Length.
TEST(Serve, SigtermFinishesAQueuedWholeReplyToo) {
  ServerProcess server("--max-batch 1");
  ASSERT_TRUE(server.ready()) << server.log();
  auto send = [&](int max_tokens) {
    return std::async(std::launch::async, [&server, max_tokens] {
      auto client = server.client();
      auto response = client.Post("/v1/completions",
                                  Json{{"prompt", "Hello"}, {"max_tokens", max_tokens}, {"temperature", 0}}.dump(),
                                  "application/json");
      return response ? std::pair(response->status, Json::parse(response->body, nullptr, false))
                      : std::pair(-1, Json());
    });
  };
  auto wait_for = [&](const char* name) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (metric(server, name) < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
    return metric(server, name);
  };
  auto running = send(400);
  ASSERT_EQ(wait_for("dsv3_running_sequences"), 1);
  auto queued = send(5);
  ASSERT_EQ(wait_for("dsv3_queued_requests"), 1);
  ::kill(server.pid(), SIGTERM);
  ASSERT_EQ(running.wait_for(60s), std::future_status::ready);
  ASSERT_EQ(queued.wait_for(60s), std::future_status::ready);
  auto [status, body] = queued.get();
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_EQ(body["usage"]["completion_tokens"], 5) << body.dump();
  EXPECT_EQ(running.get().second["usage"]["completion_tokens"], 400);
  EXPECT_EQ(server.wait_exit(20), 0) << server.log();
}

TEST(Serve, AFullQueueAnswers429) {
  ServerProcess server("--max-batch 1 --max-queue 1");
  ASSERT_TRUE(server.ready()) << server.log();
  auto send = [&](int max_tokens) {
    return std::async(std::launch::async, [&server, max_tokens] {
      auto client = server.client();
      int status = 0;
      post(client, "/v1/completions", {{"prompt", "Hello"}, {"max_tokens", max_tokens}, {"temperature", 0}}, &status);
      return status;
    });
  };
  auto running = send(600);
  auto wait_for = [&](const char* name) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (metric(server, name) < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
    return metric(server, name);
  };
  ASSERT_EQ(wait_for("dsv3_running_sequences"), 1);
  auto queued = send(3);
  ASSERT_EQ(wait_for("dsv3_queued_requests"), 1);
  auto client = server.client();
  int status = 0;
  const Json refused = post(client, "/v1/completions", {{"prompt", "Hello"}, {"max_tokens", 3}}, &status);
  EXPECT_EQ(status, 429);
  EXPECT_EQ(refused["error"]["code"], "queue_full") << refused.dump();
  ASSERT_EQ(running.wait_for(60s), std::future_status::ready);
  ASSERT_EQ(queued.wait_for(60s), std::future_status::ready);
  EXPECT_EQ(running.get(), 200);
  EXPECT_EQ(queued.get(), 200);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(Serve, AClientThatDisconnectsMidStreamFreesItsCachePages) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const std::int64_t capacity = metric(server, "dsv3_kv_cache_capacity_tokens");
  ASSERT_GT(capacity, 0);
  {
    httplib::Client client = server.client();
    int chunks = 0;
    const std::string body =
        Json{{"prompt", "A long story:"}, {"max_tokens", 1800}, {"temperature", 0}, {"stream", true}}.dump();
    httplib::Request request;
    request.method = "POST";
    request.path = "/v1/completions";
    request.body = body;
    request.set_header("Content-Type", "application/json");
    request.set_header("Authorization", "Bearer " + kApiKey);
    // Returning false from the receiver closes the connection: the client is gone after 5 chunks.
    request.content_receiver = [&](const char*, std::size_t, uint64_t, uint64_t) { return ++chunks < 5; };
    client.send(request);
    EXPECT_EQ(chunks, 5);
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (metric(server, "dsv3_running_sequences") != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(metric(server, "dsv3_running_sequences"), 0);
  EXPECT_EQ(metric(server, "dsv3_kv_cache_free_tokens"), capacity);
  // Cancelled long before its 1800 tokens, and counted so.
  EXPECT_LT(metric(server, "dsv3_generated_tokens_total"), 1000);
  EXPECT_EQ(metric(server, "dsv3_requests_cancelled_total"), 1);
  EXPECT_EQ(metric(server, "dsv3_sequences_cancelled_total"), 1);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// A whole (non-streamed) reply sends nothing until its last token, so the server must watch the
// socket itself: a client that closes it, with a FIN after reading the head or with a reset,
// cancels its sequence and frees its pages long before max_tokens.
TEST(Serve, AClientThatDisconnectsBeforeAWholeReplyFreesItsCachePages) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  const std::int64_t capacity = metric(server, "dsv3_kv_cache_capacity_tokens");
  const std::string free_blocks = R"(dsv3_kv_cache_blocks\{state="free"\})";
  const std::string cached_blocks = R"(dsv3_kv_cache_blocks\{state="cached"\})";
  const std::string used_blocks = R"(dsv3_kv_cache_blocks\{state="used"\})";
  const std::int64_t blocks = metric(server, free_blocks);
  ASSERT_GT(capacity, 0);
  ASSERT_GT(blocks, 0);
  auto wait_for_running = [&](std::int64_t wanted) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (metric(server, "dsv3_running_sequences") != wanted && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(2ms);
    return metric(server, "dsv3_running_sequences");
  };
  const int max_tokens = 1900;
  int cancelled = 0;
  for (const bool reset : {false, true}) {
    SCOPED_TRACE(reset ? "closed with a reset" : "closed after reading the head");
    const std::int64_t generated = metric(server, "dsv3_generated_tokens_total");
    RawClient client(server.port());
    ASSERT_TRUE(client.post("/v1/completions",
                            Json{{"prompt", "A long story:"}, {"max_tokens", max_tokens}, {"temperature", 0}}.dump()));
    ASSERT_EQ(wait_for_running(1), 1);
    if (!reset) {
      std::string body;
      const std::string head = client.read(body);
      EXPECT_TRUE(head.starts_with("HTTP/1.1 200 ")) << head;
      EXPECT_NE(head.find("Content-Type: application/json\r\n"), std::string::npos) << head;
      EXPECT_EQ(body, "");  // nothing of the reply before its last token
    }
    client.close(reset);
    EXPECT_EQ(wait_for_running(0), 0);
    EXPECT_EQ(metric(server, "dsv3_kv_cache_free_tokens"), capacity);
    EXPECT_EQ(metric(server, used_blocks), 0);
    EXPECT_EQ(metric(server, free_blocks) + metric(server, cached_blocks), blocks);
    EXPECT_LT(metric(server, "dsv3_generated_tokens_total") - generated, max_tokens);
    ++cancelled;
    EXPECT_EQ(metric(server, "dsv3_requests_cancelled_total"), cancelled);
    EXPECT_EQ(metric(server, "dsv3_sequences_cancelled_total"), cancelled);
  }
  // The server keeps serving whole replies: JSON, with its Content-Type.
  auto http = server.client();
  auto response = http.Post("/v1/completions", Json{{"prompt", "Hello"}, {"max_tokens", 3}, {"temperature", 0}}.dump(),
                            "application/json");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(Json::parse(response->body, nullptr, false)["usage"]["completion_tokens"], 3) << response->body;
  EXPECT_EQ(metric(server, "dsv3_requests_cancelled_total"), cancelled);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// HTTP/1.0 has no chunks: its whole reply comes with a Content-Length, as one body.
TEST(Serve, AnHttp10ClientGetsAWholeReplyWithItsLength) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  RawClient client(server.port());
  ASSERT_TRUE(client.post("/v1/completions", Json{{"prompt", "Hello"}, {"max_tokens", 3}, {"temperature", 0}}.dump(),
                          "HTTP/1.0"));
  std::string body;
  std::string head = client.read(body);
  std::smatch length;
  ASSERT_TRUE(std::regex_search(head, length, std::regex("\r\nContent-Length: ([0-9]+)\r\n"))) << head;
  const std::size_t content_length = std::stoul(length[1]);  // `length` points into `head`, read again below
  head = client.read(body, content_length);
  EXPECT_TRUE(head.starts_with("HTTP/1.1 200 ")) << head;
  EXPECT_EQ(head.find("Transfer-Encoding"), std::string::npos) << head;
  EXPECT_NE(head.find("Content-Type: application/json\r\n"), std::string::npos) << head;
  EXPECT_EQ(body.size(), content_length);
  EXPECT_EQ(Json::parse(body, nullptr, false)["usage"]["completion_tokens"], 3) << body;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// The chat page's files need no API key (the page asks for it); the API and other paths still do.
TEST(Serve, ExpertStatsCountEveryRoutedRowBehindTheKey) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  auto stats = [&server] {
    auto response = server.client().Get("/expert-stats");
    EXPECT_TRUE(response && response->status == 200) << (response ? response->body : "no response");
    return response ? Json::parse(response->body, nullptr, false) : Json();
  };
  auto anonymous = server.client(false).Get("/expert-stats");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  EXPECT_EQ(stats()["tokens"], 0);

  auto client = server.client();
  int status = 0;
  const Json body = post(client, "/v1/completions", {{"prompt", "Hello there"}, {"max_tokens", 6}, {"temperature", 0}},
                         &status);
  ASSERT_EQ(status, 200) << body.dump();
  // Every prompt token, and every generated token but the last, went through the experts; the
  // scheduler publishes the counts just after it hands out a step's tokens.
  const std::int64_t rows = body["usage"]["prompt_tokens"].get<std::int64_t>() +
                            body["usage"]["completion_tokens"].get<std::int64_t>() - 1;
  Json counts = stats();
  for (int i = 0; i < 100 && counts["tokens"] != rows; ++i) {
    std::this_thread::sleep_for(20ms);
    counts = stats();
  }
  EXPECT_EQ(counts["tokens"], rows);
  EXPECT_EQ(counts["model"], "small-dsv3");
  ASSERT_EQ(counts["layers"].size(), 1u);  // one MoE layer of 8 experts, 2 per token
  ASSERT_EQ(counts["layers"][0].size(), 8u);
  std::int64_t routed = 0;
  for (const Json& count : counts["layers"][0]) routed += count.get<std::int64_t>();
  EXPECT_EQ(routed, rows * 2);
  EXPECT_EQ(server.stop(), 0) << server.log();

  ServerProcess off("--expert-stats off");
  ASSERT_TRUE(off.ready()) << off.log();
  auto response = off.client().Get("/expert-stats");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  EXPECT_NE(response->body.find("expert statistics are off"), std::string::npos) << response->body;
  EXPECT_EQ(off.stop(), 0) << off.log();
}

TEST(Serve, TheChatPageIsServedWithoutTheKey) {
  ServerProcess server;
  ASSERT_TRUE(server.ready()) << server.log();
  httplib::Client client = server.client(false);
  for (const auto& [path, type, text] : {std::tuple{"/", "text/html; charset=utf-8", "<script src=\"/chat.js\">"},
                                         std::tuple{"/chat.js", "text/javascript; charset=utf-8", "/v1/chat/completions"},
                                         std::tuple{"/chat.css", "text/css; charset=utf-8", ":focus-visible"}}) {
    auto response = client.Get(path);
    ASSERT_TRUE(response) << path;
    EXPECT_EQ(response->status, 200) << path;
    EXPECT_EQ(response->get_header_value("Content-Type"), type) << path;
    EXPECT_NE(response->body.find(text), std::string::npos) << path;
  }
  for (const char* path : {"/v1/models", "/missing.js", "/metrics"}) {
    auto response = client.Get(path);
    ASSERT_TRUE(response) << path;
    EXPECT_EQ(response->status, 401) << path;
  }
  auto missing = server.client().Get("/missing.js");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(Serve, ConcurrentRequestsGiveTheirSingleRequestResults) {
  ServerProcess server("--max-batch 8");
  ASSERT_TRUE(server.ready()) << server.log();
  struct Case {
    Json body;
    std::string path;
  };
  std::vector<Case> cases;
  const char* words[] = {"apple", "river", "mountain", "quiet", "seven", "garden", "light", "stone"};
  for (int i = 0; i < 32; ++i) {
    std::string prompt;
    for (int w = 0; w <= i % 7; ++w) prompt += std::string(words[(i + w) % 8]) + " ";
    if (i % 2 == 0)
      cases.push_back({{{"prompt", prompt}, {"max_tokens", 4 + i % 9}, {"temperature", 0}}, "/v1/completions"});
    else
      cases.push_back({{{"messages", {{{"role", "user"}, {"content", prompt}}}}, {"max_tokens", 4 + i % 11}, {"temperature", 0}},
                       "/v1/chat/completions"});
  }
  auto text_of = [](const Json& reply) {
    const Json& choice = reply["choices"][0];
    return choice.contains("text") ? choice["text"].get<std::string>() : choice["message"]["content"].get<std::string>();
  };
  std::vector<std::string> alone;
  for (const Case& c : cases) {
    auto client = server.client();
    int status = 0;
    const Json reply = post(client, c.path, c.body, &status);
    ASSERT_EQ(status, 200) << reply.dump();
    alone.push_back(text_of(reply));
  }
  const std::int64_t batched_before = metric(server, "dsv3_engine_batched_steps_total");
  std::vector<std::string> together(cases.size());
  std::vector<int> statuses(cases.size(), 0);
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t)
    clients.emplace_back([&, t] {
      auto client = server.client();
      for (std::size_t i = static_cast<std::size_t>(t); i < cases.size(); i += 8) {
        const Json reply = post(client, cases[i].path, cases[i].body, &statuses[i]);
        if (statuses[i] == 200) together[i] = text_of(reply);
      }
    });
  for (auto& thread : clients) thread.join();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(statuses[i], 200) << i;
    EXPECT_EQ(together[i], alone[i]) << "request " << i;
  }
  EXPECT_GT(metric(server, "dsv3_engine_batched_steps_total"), batched_before);
  EXPECT_GT(metric(server, "dsv3_engine_most_batch"), 1);
  // /metrics is Prometheus text: comments, or a name, optional labels and a number.
  auto client = server.client();
  auto response = client.Get("/metrics");
  ASSERT_TRUE(response);
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$)");
  std::istringstream lines(response->body);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    ++samples;
  }
  EXPECT_GT(samples, 30);
  // Every one of the 64 requests had a first token; steps with one sequence are fewer than all.
  EXPECT_EQ(metric(response->body, "dsv3_time_to_first_token_seconds_count"), 64);
  EXPECT_LT(metric(response->body, "dsv3_batch_rows_bucket\\{le=\"1\"\\}"),
            metric(response->body, "dsv3_batch_rows_count"));
  EXPECT_GT(metric(response->body, "dsv3_prompt_tokens_total"), 64);
  EXPECT_GT(metric(response->body, "dsv3_completion_tokens_total"), 64 * 4 - 1);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(Serve, MtpSpeculationInTheBatchKeepsTheGreedyText) {
  ServerProcess server("--mtp 2 --max-batch 4");
  ASSERT_TRUE(server.ready()) << server.log();
  const std::vector<std::string> prompts = {"Alpha beta", "One two three four", "The sea", "Numbers: 1, 2, 3"};
  std::vector<std::future<std::pair<int, Json>>> replies;
  for (const std::string& prompt : prompts)
    replies.push_back(std::async(std::launch::async, [&server, prompt] {
      auto client = server.client();
      int status = 0;
      Json body = post(client, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}}, &status);
      return std::pair(status, body);
    }));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(replies[i].wait_for(60s), std::future_status::ready);
    const auto [status, body] = replies[i].get();
    ASSERT_EQ(status, 200) << body.dump();
    int code = -1;
    std::string alone = run_capture(std::string(DSV3_BINARY) + " generate --model " + model_dir().string() +
                                        " --prompt '" + prompts[i] + "' --max-tokens 12 2>/dev/null",
                                    &code);
    ASSERT_EQ(code, 0);
    alone.pop_back();
    EXPECT_EQ(body["choices"][0]["text"], alone) << prompts[i];
  }
  auto client = server.client();
  auto response = client.Get("/metrics");
  ASSERT_TRUE(response);
  EXPECT_GT(metric(response->body, "dsv3_mtp_drafted_tokens_total\\{position=\"2\"\\}"), 0) << response->body;
  EXPECT_GE(metric(response->body, "dsv3_mtp_accepted_tokens_total\\{position=\"1\"\\}"), 0) << response->body;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

}  // namespace
}  // namespace dsv3
