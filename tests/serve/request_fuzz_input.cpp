#include "request_fuzz_input.h"

#include <stdexcept>
#include <string>

#include "serve/request.h"

namespace dsv3::fuzz {
namespace {

// The real DeepSeek-V3 tokenizer and template, with the limits of a 2048-token model.
struct Served {
  Tokenizer tokenizer = Tokenizer::load(std::string(DSV3_DATA_DIR) + "/tokenizer/deepseek-v3");
  ChatTemplate chat_template{tokenizer.chat_template()};
  serve::ModelLimits limits;
  Served() {
    limits.tokenizer = &tokenizer;
    limits.chat_template = &chat_template;
    limits.vocab_size = 129280;
    limits.context = 2048;
    limits.most_choices = 16;
  }
};

const Served& served() {
  static const Served instance;
  return instance;
}

}  // namespace

bool serve_request_one_input(const std::uint8_t* data, std::size_t size) {
  const Served& s = served();
  if (size == 0) return false;
  const char route = static_cast<char>(data[0]);
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const serve::Json parsed = serve::parse_body(body);
    switch (route) {
      case 'p':
        serve::parse_completion_request(parsed, s.limits);
        break;
      case 't':
        serve::tokenize(parsed, s.limits);
        break;
      case 'd':
        serve::detokenize(parsed, s.limits);
        break;
      default:
        serve::parse_chat_request(parsed, s.limits);
    }
    return true;
  } catch (const serve::ApiError& e) {
    if (e.status < 400 || e.status >= 500) throw std::logic_error("an ApiError that is not 4xx: " + std::string(e.what()));
    return false;
  }
}

}  // namespace dsv3::fuzz
