// The layering of src/ (DESIGN.md) as a fact about the includes: each folder includes only the
// folders below it. The model and training see the op interface (kernels/ops.h), never a backend;
// only the programs (cli/) pick one. CMake's per-folder libraries link along the same lines.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

// A file's folder below src/ ("kernels/cpu", "model").
std::string folder_of(const fs::path& relative) { return relative.parent_path().generic_string(); }

// What each folder may include besides itself.
const std::map<std::string, std::set<std::string>> kAllowed = {
    {"core", {}},
    {"io", {"core"}},
    {"tokenizer", {"core", "io"}},
    {"kernels", {"core"}},
    {"dist", {"core", "dist/mpi"}},  // communicator (its factory picks MPI), expert placement: no model, no HTTP
    {"dist/mpi", {"core", "dist"}},
    {"kernels/cpu", {"core", "kernels"}},
    {"kernels/reference", {"core", "kernels"}},
    {"model", {"core", "io", "kernels", "dist"}},
    {"engine", {"core", "io", "kernels", "model", "tokenizer", "dist"}},
    {"train", {"core", "io", "kernels", "model", "tokenizer", "dist"}},
    {"serve", {"core", "io", "kernels", "model", "tokenizer", "engine", "dist"}},
    {"serve/page", {}},  // the chat page: HTML, CSS and JavaScript
};

TEST(Layering, EachFolderIncludesOnlyTheFoldersBelowIt) {
  const fs::path src = fs::path(DSV3_SOURCE_DIR) / "src";
  const std::regex include(R"(^\s*#\s*include\s*"([^"]+)\")");
  int files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(src)) {
    if (!entry.is_regular_file()) continue;
    const fs::path relative = fs::relative(entry.path(), src);
    const std::string folder = folder_of(relative);
    if (folder == "cli") continue;  // the programs: anything
    const auto allowed = kAllowed.find(folder);
    ASSERT_NE(allowed, kAllowed.end()) << "src/" << folder << " is not in the layering table (test_layering.cpp)";
    ++files;
    std::ifstream in(entry.path());
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      std::smatch m;
      if (!std::regex_search(line, m, include)) continue;
      const std::string target = folder_of(fs::path(m[1].str()));
      EXPECT_TRUE(target == folder || allowed->second.contains(target))
          << "src/" << relative.generic_string() << ":" << number << " includes \"" << m[1] << "\": " << folder
          << " may not depend on " << target;
    }
  }
  EXPECT_GT(files, 50);
}

}  // namespace
}  // namespace dsv3
