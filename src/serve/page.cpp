#include "serve/page.h"

#include "serve/page_files.h"

namespace dsv3::serve {

std::optional<PageFile> page_file(std::string_view path) {
  if (path == "/") path = "/index.html";
  if (!path.starts_with('/')) return std::nullopt;
  path.remove_prefix(1);
  for (const embedded::File& file : embedded::files) {
    if (file.name != path) continue;
    const char* type = path.ends_with(".html") ? "text/html; charset=utf-8"
                       : path.ends_with(".css") ? "text/css; charset=utf-8"
                       : path.ends_with(".js")  ? "text/javascript; charset=utf-8"
                                                : "application/octet-stream";
    return PageFile{file.content, type};
  }
  return std::nullopt;
}

}  // namespace dsv3::serve
