// dsv3 plot: draws a training metrics log (dsv3 train's JSONL) as an SVG: losses and expert load.
#include <fmt/core.h>

#include <fstream>

#include "cli/command.h"
#include "core/error.h"
#include "train/train.h"

namespace dsv3::cli {
namespace {

struct Options {
  std::string metrics, out;
};

int run_plot(const Options& options) {
  std::ifstream in(options.metrics);
  if (!in) fail("{}: cannot open the metrics log", options.metrics);
  std::vector<nlohmann::json> records;
  std::string line;
  for (std::int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    auto record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object()) fail("{}:{}: not a JSON object", options.metrics, number);
    records.push_back(std::move(record));
  }
  const std::string svg = train::plot_metrics_svg(records);
  std::ofstream out(options.out, std::ios::binary | std::ios::trunc);
  out << svg;
  if (!out.flush()) fail("{}: cannot write", options.out);
  fmt::print(stderr, "plotted {} steps into {}\n", records.size(), options.out);
  return 0;
}

const bool registered = register_command(
    {"plot", "Draw a training metrics log (JSONL) as an SVG of losses and expert-load balance",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<Options>();
       app.add_option("metrics", options->metrics, "metrics.jsonl written by dsv3 train")->required();
       app.add_option("--out", options->out, "The SVG file to write")->required();
       return [options] { return run_plot(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
