// `dsv3 serve`'s KV cache end to end: a second request that shares a long prefix with the first
// takes it from the cache (usage and /metrics say how much) and answers as a server without the
// prefix cache does; a cache too small for every running request preempts and recomputes some,
// and each still gets its single-request result; so do the choices of one request (n) that fit
// the cache only one at a time, while a single sequence too long for the cache is a 400.
#include <cstdlib>

#include "serve_support.h"

namespace dsv3 {
namespace {

using namespace test_serve;

struct Streamed {
  std::string text;
  Json usage;
  double first_token_seconds = 0.0;  // from sending the request to the first event
};

// A greedy streamed completion with usage in its last chunk.
Streamed stream_completion(ServerProcess& server, const std::string& prompt, int max_tokens) {
  auto client = server.client();
  Streamed out;
  std::string body;
  const auto start = std::chrono::steady_clock::now();
  bool first = true;
  httplib::Request request;
  request.method = "POST";
  request.path = "/v1/completions";
  request.body = Json{{"prompt", prompt},
                      {"max_tokens", max_tokens},
                      {"temperature", 0},
                      {"stream", true},
                      {"stream_options", {{"include_usage", true}}}}
                     .dump();
  request.set_header("Content-Type", "application/json");
  request.set_header("Authorization", "Bearer " + kApiKey);
  request.content_receiver = [&](const char* data, std::size_t size, uint64_t, uint64_t) {
    if (first) {
      out.first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      first = false;
    }
    body.append(data, size);
    return true;
  };
  client.send(request);
  std::istringstream lines(body);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.starts_with("data: {")) continue;
    const Json event = Json::parse(line.substr(6));
    if (!event["choices"].empty()) out.text += event["choices"][0].value("text", "");
    if (event.contains("usage") && !event["usage"].is_null()) out.usage = event["usage"];
  }
  return out;
}

// About 1,100 tokens of text that the tokenizer cannot merge across its end.
std::string long_prefix() {
  const char* words[] = {"harbor", "lantern", "meadow", "copper", "violet", "thunder", "pebble", "orchard"};
  std::string text = "Notes from the archive.";
  for (int i = 0; i < 520; ++i) text += " " + std::string(words[(i * 5 + i / 8) % 8]) + std::to_string(i % 10);
  return text + ".\n";
}

TEST(ServeCache, ASecondRequestSharingAThousandTokenPrefixPrefillsOnlyTheRest) {
  const std::string prefix = long_prefix();
  const std::string first_prompt = prefix + "Question one: what is the first word?";
  const std::string second_prompt = prefix + "Question two: which colour appears?";
  const int max_tokens = 12;

  ServerProcess off("--prefix-cache off");
  ASSERT_TRUE(off.ready()) << off.log();
  const Streamed expected = stream_completion(off, second_prompt, max_tokens);
  ASSERT_TRUE(expected.usage.is_object()) << off.log();
  EXPECT_EQ(expected.usage["prompt_cache_hit_tokens"], 0);
  EXPECT_EQ(metric(off, "dsv3_prefix_cache_hit_tokens_total"), 0);
  EXPECT_EQ(off.stop(), 0) << off.log();

  ServerProcess server;  // the prefix cache is on by default
  ASSERT_TRUE(server.ready()) << server.log();
  const Streamed first = stream_completion(server, first_prompt, max_tokens);
  ASSERT_TRUE(first.usage.is_object()) << server.log();
  EXPECT_EQ(first.usage["prompt_cache_hit_tokens"], 0);
  ASSERT_GE(first.usage["prompt_tokens"].get<std::int64_t>(), 1010) << "the shared prefix should be over 1,000 tokens";

  const Streamed second = stream_completion(server, second_prompt, max_tokens);
  ASSERT_TRUE(second.usage.is_object()) << server.log();
  const Json& usage = second.usage;
  const std::int64_t prompt_tokens = usage["prompt_tokens"];
  const std::int64_t hit = usage["prompt_cache_hit_tokens"];
  EXPECT_GE(hit, 960);
  EXPECT_LT(hit, prompt_tokens);
  EXPECT_EQ(usage["prompt_cache_miss_tokens"].get<std::int64_t>(), prompt_tokens - hit);
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"].get<std::int64_t>(), hit);
  EXPECT_EQ(usage["prompt_tokens"], expected.usage["prompt_tokens"]);
  EXPECT_EQ(second.text, expected.text);
  EXPECT_EQ(usage["completion_tokens"], expected.usage["completion_tokens"]);
  EXPECT_EQ(metric(server, "dsv3_prefix_cache_hit_tokens_total"), hit);
  // The scheduler updates /metrics just after it hands out a step's tokens.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (metric(server, "dsv3_running_sequences") != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  EXPECT_GT(metric(server, "dsv3_kv_cache_blocks\\{state=\"cached\"\\}"), hit / 16 - 1);
  EXPECT_EQ(metric(server, "dsv3_kv_cache_blocks\\{state=\"used\"\\}"), 0);
  EXPECT_EQ(metric(server, "dsv3_kv_cache_free_tokens"), metric(server, "dsv3_kv_cache_capacity_tokens"))
      << "cached blocks are free for new work";
  std::printf(
      "prompt %lld tokens; time to first token: %.1f ms without a cache hit, %.1f ms with %lld cached tokens "
      "(%.1f ms with --prefix-cache off)\n",
      static_cast<long long>(prompt_tokens), first.first_token_seconds * 1e3, second.first_token_seconds * 1e3,
      static_cast<long long>(hit), expected.first_token_seconds * 1e3);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeCache, ASmallCachePreemptsAndEveryRequestGetsItsSingleRequestResult) {
  // A preempted request's cache is recomputed by a prefill, whose many-row linears go through the
  // GEMM: with FP32 inputs only the order of the sums differs from decode's, while the BF16 inputs
  // some CPUs default to (AMD) round differently and can flip a near-tie of greedy decoding. So
  // this server multiplies in FP32 (the child inherits DSV3_GEMM).
  ::setenv("DSV3_GEMM", "f32", 1);
  // Each request needs about 150 of the 256 cache tokens by its end; four run together.
  ServerProcess server("--kv-cache-tokens 256 --max-batch 4");
  ::unsetenv("DSV3_GEMM");
  ASSERT_TRUE(server.ready()) << server.log();
  const std::vector<std::string> prompts = {"The history of the lighthouse keeper",
                                            "A recipe for bread:", "Once upon a time, in a valley",
                                            "Rules of the game: first,"};
  const int max_tokens = 130;
  auto complete = [&server, max_tokens](const std::string& prompt) {
    auto client = server.client();
    int status = 0;
    Json body =
        post(client, "/v1/completions",
             {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true}}, &status);
    return std::pair(status, body);
  };
  std::vector<std::string> alone;
  for (const std::string& prompt : prompts) {
    const auto [status, body] = complete(prompt);
    ASSERT_EQ(status, 200) << body.dump();
    alone.push_back(body["choices"][0]["text"]);
  }
  EXPECT_EQ(metric(server, "dsv3_preemptions_total"), 0);
  std::vector<std::future<std::pair<int, Json>>> replies;
  for (const std::string& prompt : prompts)
    replies.push_back(std::async(std::launch::async, [&complete, prompt] { return complete(prompt); }));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(replies[i].wait_for(120s), std::future_status::ready);
    const auto [status, body] = replies[i].get();
    ASSERT_EQ(status, 200) << body.dump();
    EXPECT_EQ(body["choices"][0]["text"], alone[i]) << prompts[i];
    EXPECT_EQ(body["usage"]["completion_tokens"], max_tokens);
  }
  EXPECT_GT(metric(server, "dsv3_preemptions_total"), 0);
  EXPECT_GT(metric(server, "dsv3_engine_most_batch"), 1);
  std::printf("preemptions: %lld\n", static_cast<long long>(metric(server, "dsv3_preemptions_total")));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeCache, ChoicesThatFitTheCacheOnlyOneAtATimeAreServedAndEachGetsTheSingleResult) {
  // Each choice needs about 150 of the 256 cache tokens by its end; three cannot run together.
  ServerProcess server("--kv-cache-tokens 256 --max-batch 4");
  ASSERT_TRUE(server.ready()) << server.log();
  const std::string prompt = "The history of the lighthouse keeper";
  const int max_tokens = 130;
  auto client = server.client();
  auto complete = [&](int n, int tokens) {
    int status = 0;
    Json body = post(client, "/v1/completions",
                     {{"prompt", prompt}, {"max_tokens", tokens}, {"temperature", 0}, {"ignore_eos", true}, {"n", n}},
                     &status);
    return std::pair(status, body);
  };
  const auto [alone_status, alone] = complete(1, max_tokens);
  ASSERT_EQ(alone_status, 200) << alone.dump();
  const auto [status, three] = complete(3, max_tokens);
  ASSERT_EQ(status, 200) << three.dump() << "\n" << server.log();
  ASSERT_EQ(three["choices"].size(), 3u);
  for (const Json& choice : three["choices"]) EXPECT_EQ(choice["text"], alone["choices"][0]["text"]);
  EXPECT_EQ(three["usage"]["completion_tokens"], 3 * max_tokens);
  EXPECT_GT(metric(server, "dsv3_preemptions_total"), 0) << "the three choices did not fit together";
  // One sequence that cannot fit alone is still refused, naming max_tokens.
  int code = 0;
  const Json ids = post(client, "/tokenize", {{"prompt", prompt}}, &code);
  ASSERT_EQ(code, 200);
  const auto [too_long_status, too_long] = complete(1, 256 - ids["count"].get<int>());
  EXPECT_EQ(too_long_status, 400) << too_long.dump();
  EXPECT_EQ(too_long["error"]["code"], "cache_too_small") << too_long.dump();
  EXPECT_EQ(too_long["error"]["param"], "max_tokens") << too_long.dump();
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeCache, BadCacheOptionsAreClearErrors) {
  struct Case {
    std::string options, message;
  };
  for (const Case& c :
       {Case{"--max-batch 600 --max-step-tokens 512", "--max-step-tokens 512 leaves no room for prompts"},
        Case{"--max-step-tokens 0", "--max-step-tokens"}, Case{"--prefix-cache maybe", "--prefix-cache"}}) {
    int code = -1;
    const std::string output =
        run_capture("timeout 30 " + std::string(DSV3_BINARY) + " serve --model " + model_dir().string() + " --port " +
                        std::to_string(free_port()) + " " + c.options,
                    &code);
    EXPECT_NE(code, 0) << c.options << "\n" << output;
    EXPECT_NE(output.find(c.message), std::string::npos) << c.options << "\n" << output;
  }
}

}  // namespace
}  // namespace dsv3
