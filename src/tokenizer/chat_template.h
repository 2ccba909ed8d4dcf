#pragma once
// Renders a model's own chat template (the Jinja `chat_template` of tokenizer_config.json) the way
// Hugging Face transformers does: Jinja2's ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks on, loop controls, `raise_exception`, `strftime_now` and transformers' `tojson`
// (non-ASCII kept, insertion order kept). It interprets the Jinja subset chat templates use rather
// than hard-coding any one model's format; tests/chat_template/ checks it against real Jinja2.
//
// Templates are treated as untrusted: syntax errors, unknown filters, undefined values in
// arithmetic, the template's own raise_exception, and every resource limit (nesting depth, loop
// iterations, range() length, string and output size, macro recursion, integers beyond 64 bits;
// see jinja::Limits in jinja_ast.h) throw dsv3::Error naming the line and column in the template.
//
// Objects keep their insertion order (pass nlohmann::ordered_json to keep a client's key order;
// a plain nlohmann::json arrives with its keys already sorted).
#include <nlohmann/json.hpp>

#include <ctime>
#include <memory>
#include <optional>
#include <string>

namespace dsv3 {

// A parsed template, for rendering many conversations without parsing each time.
class ChatTemplate {
 public:
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // `context` is a JSON object whose keys become template variables: typically what
  // chat_template_context() builds. `now` fixes the clock strftime_now() reads (tests); by default
  // it reads the current local time, as transformers does.
  std::string render(const nlohmann::ordered_json& context, std::optional<std::time_t> now = std::nullopt) const;

 private:
  struct Parsed;
  std::unique_ptr<Parsed> parsed_;
};

std::string render_chat_template(const std::string& template_source, const nlohmann::ordered_json& context);

// The context transformers' apply_chat_template builds: `messages`, `tools` and `documents` (null
// when not given: always defined, as in transformers), `add_generation_prompt`, and the special
// tokens of tokenizer_config.json (given there either as strings or as {"content": ...} objects).
nlohmann::ordered_json chat_template_context(const nlohmann::json& tokenizer_config,
                                             const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                             const nlohmann::ordered_json& tools = nullptr,
                                             const nlohmann::ordered_json& documents = nullptr);

}  // namespace dsv3
