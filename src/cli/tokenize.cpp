// dsv3 tokenize: text <-> token ids with a model folder's tokenizer.json.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "cli/numeric_option.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer_dir, text, jsonl, chat;
  bool bos = false, decode = false, add_generation_prompt = false;
};

// --chat FILE.json: a list of messages, or an object with "messages" (as in the fixtures) and
// optionally "tools" and "documents".
int run_chat(const Tokenizer& tokenizer, const TokenizeOptions& options) {
  std::ifstream in(options.chat);
  if (!in) fail("{}: cannot open", options.chat);
  nlohmann::ordered_json conversation;  // ordered: the template must see the file's key order
  try {
    conversation = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", options.chat, e.what());
  }
  const nlohmann::ordered_json messages =
      conversation.is_object() ? conversation.value("messages", nlohmann::ordered_json()) : conversation;
  if (!messages.is_array())
    fail("{}: expected a list of messages or an object with \"messages\"", options.chat);
  if (tokenizer.chat_template().empty())
    fail("{}: the tokenizer has no chat_template in tokenizer_config.json", options.tokenizer_dir);
  const nlohmann::ordered_json tools = conversation.is_object() ? conversation.value("tools", nlohmann::ordered_json()) : nullptr;
  const nlohmann::ordered_json documents =
      conversation.is_object() ? conversation.value("documents", nlohmann::ordered_json()) : nullptr;
  const nlohmann::ordered_json context = {{"messages", messages},
                                          {"tools", tools},
                                          {"documents", documents},
                                          {"add_generation_prompt", options.add_generation_prompt},
                                          {"bos_token", tokenizer.bos_token()},
                                          {"eos_token", tokenizer.eos_token()}};
  const std::string text = render_chat_template(tokenizer.chat_template(), context);
  std::cout << text << '\n' << fmt::format("{}", fmt::join(tokenizer.encode_chat(text), ",")) << '\n';
  return 0;
}

int run_jsonl(const Tokenizer& tokenizer, const TokenizeOptions& options) {
  std::ifstream in(options.jsonl);
  if (!in) fail("{}: cannot open", options.jsonl);
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto where = [&] { return fmt::format("{}:{}", options.jsonl, number); };
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", where(), e.what());
    }
    try {
      if (options.decode) {
        if (!record.is_object() || !record.contains("ids") || !record["ids"].is_array())
          fail("expected {{\"ids\": [...]}}");
        auto ids = record["ids"].get<std::vector<std::int32_t>>();
        std::cout << nlohmann::json{{"text", tokenizer.decode(ids)}}.dump() << '\n';
      } else {
        if (!record.is_object() || !record.contains("text") || !record["text"].is_string())
          fail("expected {{\"text\": \"...\"}}");
        auto ids = tokenizer.encode(record["text"].get_ref<const std::string&>(), options.bos);
        std::cout << nlohmann::json{{"ids", ids}}.dump() << '\n';
      }
    } catch (const Error& e) {
      fail("{}: {}", where(), e.what());
    } catch (const nlohmann::json::exception& e) {
      fail("{}: {}", where(), e.what());
    }
  }
  return 0;
}

int run(const TokenizeOptions& options) {
  Tokenizer tokenizer = Tokenizer::load(options.tokenizer_dir);
  if (!options.jsonl.empty()) return run_jsonl(tokenizer, options);
  if (!options.chat.empty()) return run_chat(tokenizer, options);
  if (options.decode) {
    std::cout << tokenizer.decode(parse_token_ids("--text", options.text)) << '\n';
    return 0;
  }
  std::vector<std::int32_t> ids = tokenizer.encode(options.text, options.bos);
  std::cout << fmt::format("{}", fmt::join(ids, ",")) << '\n';
  return 0;
}

const bool registered = register_command({
    "tokenize",
    "Encode text to token ids (or decode ids to text) with a tokenizer.json",
    [](CLI::App& app) -> Run {
      auto options = std::make_shared<TokenizeOptions>();
      app.add_option("--tokenizer", options->tokenizer_dir,
                     "Folder with tokenizer.json (and tokenizer_config.json)")
          ->required()
          ->check(CLI::ExistingDirectory);
      auto* inputs = app.add_option_group("input", "What to tokenize");
      inputs->add_option("--text", options->text, "Text to encode (with --decode: comma-separated ids)");
      inputs->add_option("--jsonl", options->jsonl,
                         "File of {\"text\": ...} lines; writes {\"ids\": [...]} lines "
                         "(with --decode: {\"ids\"} in, {\"text\"} out)")
          ->check(CLI::ExistingFile);
      inputs->add_option("--chat", options->chat,
                         "Conversation JSON (a list of messages, or {\"messages\": [...], \"tools\": [...], "
                         "\"documents\": [...]}): prints the rendered chat template and its ids")
          ->check(CLI::ExistingFile);
      inputs->require_option(1);
      app.add_flag("--add-generation-prompt", options->add_generation_prompt,
                   "With --chat: end with the assistant prompt, ready for generation");
      app.add_flag("--bos", options->bos, "Put the BOS token first");
      app.add_flag("--decode", options->decode, "Decode ids to text instead of encoding");
      return [options] { return run(*options); };
    },
});

}  // namespace
}  // namespace dsv3::cli
