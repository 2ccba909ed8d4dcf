#pragma once
// The chat page (src/serve/page), compiled into the binary: its files by URL path.
#include <optional>
#include <string_view>

namespace dsv3::serve {

struct PageFile {
  std::string_view content;
  const char* content_type;
};

// The file served at `path` ("/" is index.html), or nothing when the page has no such file.
std::optional<PageFile> page_file(std::string_view path);

}  // namespace dsv3::serve
