#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace dsv3 {

struct ChatTemplate::Parsed {
  std::string source;
  jinja::Body body;
};

namespace {

// Jinja2's lexer turns every newline sequence into "\n" and drops one trailing newline of the
// template (keep_trailing_newline=False); doing it once here keeps the lexer and line counts simple.
std::string normalise_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source) : parsed_(std::make_unique<Parsed>()) {
  parsed_->source = normalise_newlines(source);
  parsed_->body = jinja::parse(parsed_->source, jinja::tokenize(parsed_->source));
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context, std::optional<std::time_t> now) const {
  jinja::RenderOptions options;
  options.now = now;
  return jinja::render(parsed_->source, parsed_->body, context, options);
}

std::string render_chat_template(const std::string& template_source, const nlohmann::ordered_json& context) {
  return ChatTemplate(template_source).render(context);
}

nlohmann::ordered_json chat_template_context(const nlohmann::json& tokenizer_config,
                                             const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                             const nlohmann::ordered_json& tools,
                                             const nlohmann::ordered_json& documents) {
  nlohmann::ordered_json context = {{"messages", messages},
                                    {"tools", tools},
                                    {"documents", documents},
                                    {"add_generation_prompt", add_generation_prompt}};
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
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
