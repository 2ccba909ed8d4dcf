#pragma once
// Renders a model's own chat template (the Jinja `chat_template` of tokenizer_config.json) the way
// Hugging Face transformers does (trim_blocks and lstrip_blocks on, `raise_exception`, HF's
// `tojson`). It interprets the Jinja subset chat templates use rather than hard-coding any one
// model's format. Errors (syntax, unknown filter, undefined values in arithmetic, the template's
// own raise_exception) throw dsv3::Error naming the line and column in the template.
//
// Known difference from Python: nlohmann::json keeps object keys sorted, so `tojson` of a dict
// lists its keys in sorted rather than insertion order.
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace dsv3 {

// A parsed template, for rendering many conversations without parsing each time.
class ChatTemplate {
 public:
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // `context` is a JSON object whose keys become template variables: typically `messages`,
  // `add_generation_prompt`, `bos_token`, `eos_token`, and optionally `tools`.
  std::string render(const nlohmann::json& context) const;

 private:
  struct Parsed;
  std::unique_ptr<Parsed> parsed_;
};

std::string render_chat_template(const std::string& template_source, const nlohmann::json& context);

// The context HF builds from a tokenizer_config.json: its special tokens (given there either as
// strings or as {"content": ...} objects) plus the conversation.
nlohmann::json chat_template_context(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                     bool add_generation_prompt);

}  // namespace dsv3
