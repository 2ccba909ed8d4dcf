#include "core/env.h"

#include <cstdlib>
#include <string_view>

#include "core/error.h"

namespace dsv3 {

bool env_flag(const char* name, bool fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  const std::string_view text(value);
  if (text == "1") return true;
  if (text == "0") return false;
  fail("{}={}: expected 1 or 0", name, text);
}

}  // namespace dsv3
