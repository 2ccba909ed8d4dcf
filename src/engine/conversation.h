#pragma once
// A chat's message history and how it becomes a prompt: the whole conversation is rendered
// through the model's own chat template every turn (as transformers' apply_chat_template does),
// so the model always sees exactly the format it was trained on, whatever that format is.
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace dsv3 {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class Conversation {
 public:
  // `chat_template` is the Jinja source (throws dsv3::Error when empty or unparsable);
  // `bos_token`/`eos_token` are the template's variables of those names. A non-empty
  // `system_prompt` is the first message and survives reset().
  Conversation(std::string chat_template, std::string bos_token, std::string eos_token,
               std::string system_prompt = "");

  void add_user(std::string text);
  void add_assistant(std::string text);
  // Removes the last message (a turn that could not be answered).
  void drop_last();
  // Back to the system prompt alone.
  void reset();

  // The conversation so far followed by the template's generation prompt (the assistant's turn).
  std::string render_prompt() const;

  const std::vector<ChatMessage>& messages() const { return messages_; }

 private:
  ChatTemplate template_;
  std::string bos_token_;
  std::string eos_token_;
  std::string system_prompt_;
  std::vector<ChatMessage> messages_;
};

}  // namespace dsv3
