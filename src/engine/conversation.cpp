#include "engine/conversation.h"

#include "core/error.h"

namespace dsv3 {
namespace {

std::string checked_template(std::string source) {
  if (source.empty()) fail("the chat template is empty");
  return source;
}

}  // namespace

Conversation::Conversation(std::string chat_template, std::string bos_token, std::string eos_token,
                           std::string system_prompt)
    : template_(checked_template(std::move(chat_template))),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      system_prompt_(std::move(system_prompt)) {
  reset();
}

void Conversation::add_user(std::string text) { messages_.push_back({"user", std::move(text)}); }

void Conversation::add_assistant(std::string text) { messages_.push_back({"assistant", std::move(text)}); }

void Conversation::drop_last() {
  if (messages_.empty() || messages_.back().role == "system") fail("drop_last: no user or assistant message to drop");
  messages_.pop_back();
}

void Conversation::reset() {
  messages_.clear();
  if (!system_prompt_.empty()) messages_.push_back({"system", system_prompt_});
}

std::string Conversation::render_prompt() const {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (const ChatMessage& message : messages_)
    messages.push_back({{"role", message.role}, {"content", message.content}});
  // As transformers' apply_chat_template: tools and documents are always defined, null here.
  return template_.render({{"messages", std::move(messages)},
                           {"tools", nullptr},
                           {"documents", nullptr},
                           {"add_generation_prompt", true},
                           {"bos_token", bos_token_},
                           {"eos_token", eos_token_}});
}

}  // namespace dsv3
