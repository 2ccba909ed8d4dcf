#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace dsv3 {

struct ChatTemplate::Parsed {
  std::string source;
  jinja::Body body;
};

ChatTemplate::ChatTemplate(std::string source) : parsed_(std::make_unique<Parsed>()) {
  parsed_->source = std::move(source);
  parsed_->body = jinja::parse(parsed_->source, jinja::tokenize(parsed_->source));
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::json& context) const {
  return jinja::render(parsed_->source, parsed_->body, context);
}

std::string render_chat_template(const std::string& template_source, const nlohmann::json& context) {
  return ChatTemplate(template_source).render(context);
}

nlohmann::json chat_template_context(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                     bool add_generation_prompt) {
  nlohmann::json context = {{"messages", messages}, {"add_generation_prompt", add_generation_prompt}};
  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"}) {
    if (!tokenizer_config.contains(key)) continue;
    const auto& token = tokenizer_config[key];
    if (token.is_string()) {
      context[key] = token;
    } else if (token.is_object() && token.contains("content") && token["content"].is_string()) {
      context[key] = token["content"];
    } else if (!token.is_null()) {
      fail("tokenizer_config.json: '{}' must be a string or an object with a string 'content', got {}", key,
           token.dump());
    }
  }
  return context;
}

}  // namespace dsv3
