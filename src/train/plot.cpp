// A hand-written SVG of a training run: two panels over the step axis, losses on top and the
// expert-load balance (max / mean load per MoE layer) below, each with axes, ticks and a legend.
#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <limits>

#include "core/error.h"
#include "train/train.h"

namespace dsv3::train {
namespace {

struct Series {
  std::string label;
  std::string colour;
  bool dashed = false;
  bool markers = false;
  std::vector<std::pair<double, double>> points;  // (step, value)
};

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// A step of 1, 2 or 5 × 10^k giving about `count` intervals over `span`.
double nice_step(double span, int count) {
  const double raw = span / count;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (m * power >= raw) return m * power;
  return 10.0 * power;
}

std::string number(double v) {
  if (v == 0.0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.0e}", v);
  return fmt::format("{:g}", std::round(v * 1e4) / 1e4);
}

const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

// One panel at (x0, y0) of size w × h: frame, grid, ticks, the series, the legend.
void panel(std::string& svg, double x0, double y0, double w, double h, const std::string& title,
           const std::string& y_label, const Range& steps, const std::vector<Series>& series) {
  Range values;
  for (const Series& s : series)
    for (const auto& p : s.points) values.add(p.second);
  svg += fmt::format(R"(<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>)" "\n", x0, y0 - 10, title);
  svg += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>)" "\n", x0, y0, w, h);
  if (values.empty() || steps.empty()) {
    svg += fmt::format(R"(<text x="{}" y="{}" font-size="13" fill="#666">no data</text>)" "\n", x0 + w / 2 - 25, y0 + h / 2);
    return;
  }
  double lo = values.lo, hi = values.hi;
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const double s_lo = steps.lo, s_hi = steps.hi > steps.lo ? steps.hi : steps.lo + 1;
  auto px = [&](double step) { return x0 + (step - s_lo) / (s_hi - s_lo) * w; };
  auto py = [&](double v) { return y0 + h - (v - lo) / (hi - lo) * h; };

  const double y_step = nice_step(hi - lo, 5);
  for (double v = std::ceil(lo / y_step) * y_step; v <= hi; v += y_step) {
    svg += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#ddd"/>)" "\n", x0, py(v), x0 + w, py(v));
    svg += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#333"/>)" "\n", x0 - 5, py(v), x0, py(v));
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="end">{}</text>)" "\n", x0 - 8, py(v) + 4, number(v));
  }
  const double x_step = nice_step(s_hi - s_lo, 8);
  for (double s = std::ceil(s_lo / x_step) * x_step; s <= s_hi + 1e-9; s += x_step) {
    svg += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#333"/>)" "\n", px(s), y0 + h, px(s), y0 + h + 5);
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="middle">{}</text>)" "\n", px(s), y0 + h + 19, number(s));
  }
  svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="13" text-anchor="middle">step</text>)" "\n", x0 + w / 2, y0 + h + 36);
  svg += fmt::format(R"svg(<text x="{:.1f}" y="{:.1f}" font-size="13" text-anchor="middle" transform="rotate(-90 {:.1f} {:.1f})">{}</text>)svg" "\n",
                     x0 - 50, y0 + h / 2, x0 - 50, y0 + h / 2, y_label);

  for (const Series& s : series) {
    if (s.points.empty()) continue;
    std::string path;
    for (const auto& [step, v] : s.points) path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(step), py(v));
    svg += fmt::format(R"(<path d="{}" fill="none" stroke="{}" stroke-width="1.6"{}/>)" "\n", path, s.colour,
                       s.dashed ? R"( stroke-dasharray="6,4")" : "");
    if (s.markers)
      for (const auto& [step, v] : s.points)
        svg += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>)" "\n", px(step), py(v), s.colour);
  }
  // Legend, top right.
  double ly = y0 + 10;
  const double lx = x0 + w - 190;
  int shown = 0;
  for (const Series& s : series) shown += !s.points.empty();
  svg += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="180" height="{}" fill="white" fill-opacity="0.85" stroke="#999"/>)" "\n",
                     lx, ly, 8 + 18 * shown);
  for (const Series& s : series) {
    if (s.points.empty()) continue;
    ly += 18;
    svg += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2"{}/>)" "\n",
                       lx + 8, ly - 4, lx + 36, ly - 4, s.colour, s.dashed ? R"( stroke-dasharray="6,4")" : "");
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="12">{}</text>)" "\n", lx + 44, ly, s.label);
  }
}

}  // namespace

std::string plot_metrics_svg(const std::vector<nlohmann::json>& records) {
  auto series = [](std::string label, const char* colour, bool dashed, bool markers) {
    Series s;
    s.label = std::move(label);
    s.colour = colour;
    s.dashed = dashed;
    s.markers = markers;
    return s;
  };
  Series train_main = series("train main", kColours[0], false, false);
  Series train_mtp = series("train MTP", kColours[1], true, false);
  Series val_main = series("validation main", kColours[2], false, true);
  Series val_mtp = series("validation MTP", kColours[3], true, true);
  std::map<std::int64_t, Series> load;  // by layer
  Range steps;
  auto value = [](const nlohmann::json& r, const char* key) -> std::optional<double> {
    if (!r.contains(key) || !r[key].is_number()) return std::nullopt;
    return r[key].get<double>();
  };
  for (std::size_t i = 0; i < records.size(); ++i) {
    const nlohmann::json& r = records[i];
    const auto step = value(r, "step");
    if (!step) fail("metrics record {}: no \"step\"", i + 1);
    steps.add(*step);
    if (auto v = value(r, "loss_main")) train_main.points.emplace_back(*step, *v);
    if (auto v = value(r, "loss_mtp")) train_mtp.points.emplace_back(*step, *v);
    if (auto v = value(r, "val_loss_main")) val_main.points.emplace_back(*step, *v);
    if (auto v = value(r, "val_loss_mtp")) val_mtp.points.emplace_back(*step, *v);
    if (r.contains("load") && r["load"].is_array())
      for (const auto& l : r["load"]) {
        const auto layer = l.value("layer", std::int64_t{0});
        Series& s = load[layer];
        if (s.label.empty()) {
          s.label = fmt::format("layer {} max/mean", layer);
          s.colour = kColours[(4 + load.size()) % std::size(kColours)];
        }
        s.points.emplace_back(*step, l.value("max_over_mean", 0.0));
      }
  }
  const double width = 900, height = 720, left = 80, top = 60, plot_w = 780, plot_h = 250;
  std::string svg = fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">)" "\n"
      R"(<rect width="100%" height="100%" fill="white"/>)" "\n",
      width, height, width, height);
  panel(svg, left, top, plot_w, plot_h, "Loss", "cross-entropy (nats)", steps, {train_main, train_mtp, val_main, val_mtp});
  std::vector<Series> balance;
  for (auto& [layer, s] : load) balance.push_back(std::move(s));
  panel(svg, left, top + plot_h + 100, plot_w, plot_h, "Expert load balance (1 = perfectly even)", "max / mean load",
        steps, balance);
  svg += "</svg>\n";
  return svg;
}

}  // namespace dsv3::train
