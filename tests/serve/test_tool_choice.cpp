// tool_choice "required" and a named function, as the request parser enforces them: the prompt
// ends inside a tool call, written as the model's own chat template writes an earlier tool call
// (the reference: the real DeepSeek-V3 template rendering a history with that call, through the
// real tokenizer); "auto" and "none" leave the prompt alone; a tokenizer without the tool-call
// tokens, a template that opens a thinking block, and chat prefix completion are 400s naming
// tool_choice.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "serve/request.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv3::serve {
namespace {

using Ids = std::vector<std::int32_t>;

struct Served {
  explicit Served(Tokenizer t) : tokenizer(std::move(t)), chat_template(tokenizer.chat_template()) {
    limits.tokenizer = &tokenizer;
    limits.chat_template = &chat_template;
    limits.vocab_size = static_cast<std::int64_t>(tokenizer.vocab_size());
    limits.context = 4096;
  }
  Tokenizer tokenizer;
  ChatTemplate chat_template;
  ModelLimits limits;
};

const Served& deepseek() {
  static const Served served(Tokenizer::load(std::string(DSV3_DATA_DIR) + "/tokenizer/deepseek-v3"));
  return served;
}

// A byte-level tokenizer with `added` special tokens and a one-line chat template.
Served small(const std::vector<std::string>& added, const std::string& chat_template) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_encode(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json tokens = nlohmann::json::array();
  for (std::size_t i = 0; i < added.size(); ++i) {
    vocab[added[i]] = 256 + i;
    tokens.push_back({{"id", 256 + i}, {"content", added[i]}, {"single_word", false}, {"lstrip", false},
                      {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", nlohmann::json::array()}}},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", tokens},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab},
        {"merges", nlohmann::json::array()}}}};
  return Served(Tokenizer::from_json(tokenizer, {{"chat_template", chat_template}}));
}

const char* kPlainTemplate = "{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}<｜Assistant｜>";
const std::vector<std::string> kToolTokens = {"<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"};

Json tool(const std::string& name) {
  return {{"type", "function"},
          {"function", {{"name", name}, {"parameters", {{"type", "object"}, {"properties", Json::object()}}}}}};
}

Json request(Json tool_choice, Json tools = Json::array({tool("get_weather"), tool("get_time")})) {
  Json body = {{"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}}, {"tools", std::move(tools)}};
  if (!tool_choice.is_null()) body["tool_choice"] = std::move(tool_choice);
  return body;
}

Json named(const std::string& name) { return {{"type", "function"}, {"function", {{"name", name}}}}; }

ApiError refusal(const Json& body, const ModelLimits& limits) {
  try {
    parse_chat_request(body, limits);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return ApiError(0, "");
}

bool starts_with(const Ids& ids, const Ids& prefix) {
  return ids.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), ids.begin());
}

TEST(ToolChoice, ANamedFunctionEndsThePromptWhereTheTemplateWritesThatCallsArguments) {
  const Served& s = deepseek();
  const GenerationRequest plain = parse_chat_request(request(nullptr), s.limits);
  const GenerationRequest forced = parse_chat_request(request(named("get_weather")), s.limits);
  // The reference: the template's own rendering of a turn in which the assistant made that call.
  const Json history = {{"messages",
                         {{{"role", "user"}, {"content", "Weather in Paris?"}},
                          {{"role", "assistant"},
                           {"content", nullptr},
                           {"tool_calls",
                            {{{"type", "function"},
                              {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Paris\"}"}}}}}}}}},
                        {"tools", nullptr},
                        {"add_generation_prompt", false},
                        {"bos_token", s.tokenizer.bos_token()},
                        {"eos_token", s.tokenizer.eos_token()}};
  const Ids called = s.tokenizer.encode_chat(s.chat_template.render(history));
  const Ids& prompt = forced.prompts.at(0);
  ASSERT_TRUE(starts_with(called, prompt)) << s.tokenizer.decode(prompt);
  ASSERT_LT(prompt.size(), called.size());
  EXPECT_TRUE(s.tokenizer.decode(Ids(called.begin() + static_cast<std::ptrdiff_t>(prompt.size()), called.end()))
                  .starts_with("{\"city\": \"Paris\"}\n```"));
  // The prompt is the request's own, then the forced text (which counts as prompt tokens).
  ASSERT_TRUE(starts_with(prompt, plain.prompts.at(0)));
  const auto own = static_cast<std::ptrdiff_t>(plain.prompts[0].size());
  EXPECT_EQ(s.tokenizer.decode(Ids(prompt.begin() + own, prompt.end())), forced.forced_tool_call);
  EXPECT_EQ(forced.forced_tool_call,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n");
  EXPECT_TRUE(forced.parse_tool_calls);

  // "required": the same, cut before the name, which the model writes.
  const GenerationRequest required = parse_chat_request(request("required"), s.limits);
  ASSERT_TRUE(starts_with(called, required.prompts.at(0)));
  const auto cut = static_cast<std::ptrdiff_t>(required.prompts[0].size());
  EXPECT_TRUE(s.tokenizer.decode(Ids(called.begin() + cut, called.end())).starts_with("get_weather\n```json\n"));
  EXPECT_EQ(required.forced_tool_call, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>");
  // "required" with one function to call: that one, named.
  const GenerationRequest only = parse_chat_request(request("required", Json::array({tool("get_weather")})), s.limits);
  EXPECT_EQ(only.prompts.at(0), prompt);
  EXPECT_EQ(only.forced_tool_call, forced.forced_tool_call);
}

TEST(ToolChoice, AutoAndNoneLeaveThePromptAlone) {
  const Served& s = deepseek();
  const GenerationRequest plain = parse_chat_request(request(nullptr), s.limits);
  const GenerationRequest automatic = parse_chat_request(request("auto"), s.limits);
  const GenerationRequest none = parse_chat_request(request("none"), s.limits);
  EXPECT_EQ(automatic.prompts, plain.prompts);
  EXPECT_EQ(none.prompts, plain.prompts);
  EXPECT_TRUE(automatic.forced_tool_call.empty());
  EXPECT_TRUE(none.forced_tool_call.empty());
  EXPECT_TRUE(automatic.parse_tool_calls);
  EXPECT_FALSE(none.parse_tool_calls);
}

TEST(ToolChoice, AForcedCallWithChatPrefixCompletionIsA400NamingBoth) {
  const Served& s = deepseek();
  for (const Json& choice : {Json("required"), named("get_weather")}) {
    Json body = request(choice);
    body["messages"].push_back({{"role", "assistant"}, {"content", "The weather"}, {"prefix", true}});
    const ApiError e = refusal(body, s.limits);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tool_choice");
    EXPECT_NE(std::string(e.what()).find("prefix"), std::string::npos) << e.what();
    body["tool_choice"] = "auto";
    EXPECT_NO_THROW(parse_chat_request(body, s.limits));
  }
}

TEST(ToolChoice, AFunctionNameToForceMustBeOnePlainWord) {
  const Served& s = deepseek();
  const std::vector<std::string> names = {"get weather", "f<｜end▁of▁sentence｜>", "a\nb", std::string(65, 'x')};
  for (const std::string& name : names) {
    const ApiError e = refusal(request(named(name), Json::array({tool(name)})), s.limits);
    EXPECT_EQ(e.status, 400) << name;
    EXPECT_EQ(e.param, "tool_choice.function.name") << name;
  }
  // "required" with one such function lets the model write the name.
  EXPECT_EQ(parse_chat_request(request("required", Json::array({tool("get weather")})), s.limits).forced_tool_call,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>");
}

TEST(ToolChoice, ATokenizerWithoutTheToolCallTokensCannotForceACall) {
  const Served without = small({"<｜User｜>", "<｜Assistant｜>"}, kPlainTemplate);
  for (const Json& choice : {Json("required"), named("get_weather")}) {
    const ApiError e = refusal(request(choice), without.limits);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tool_choice");
    EXPECT_NE(std::string(e.what()).find("<｜tool▁calls▁begin｜>"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(parse_chat_request(request("auto"), without.limits));
  // With them, the same template forces the call: the prompt ends with their ids.
  std::vector<std::string> added = {"<｜User｜>", "<｜Assistant｜>"};
  added.insert(added.end(), kToolTokens.begin(), kToolTokens.end());
  const Served with = small(added, kPlainTemplate);
  const Ids prompt = parse_chat_request(request("required"), with.limits).prompts.at(0);
  const Ids function = with.tokenizer.encode("function");
  Ids tail = {258, 259};
  tail.insert(tail.end(), function.begin(), function.end());
  tail.push_back(260);
  ASSERT_GE(prompt.size(), tail.size());
  EXPECT_EQ(Ids(prompt.end() - static_cast<std::ptrdiff_t>(tail.size()), prompt.end()), tail);
}

TEST(ToolChoice, ATemplateThatOpensAThinkingBlockCannotForceACall) {
  std::vector<std::string> added = {"<｜User｜>", "<｜Assistant｜>"};
  added.insert(added.end(), kToolTokens.begin(), kToolTokens.end());
  const Served thinking = small(added, std::string(kPlainTemplate) + "<think>\n");
  const ApiError e = refusal(request(named("get_weather")), thinking.limits);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "tool_choice");
  EXPECT_NE(std::string(e.what()).find("<think>"), std::string::npos) << e.what();
  EXPECT_NO_THROW(parse_chat_request(request("auto"), thinking.limits));
}

}  // namespace
}  // namespace dsv3::serve
