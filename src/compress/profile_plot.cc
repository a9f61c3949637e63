#include "compress/profile_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "util/error.h"

namespace eigenkv::compress {
namespace {

struct Point {
  double fraction, error;
};

// The r_K = r_V points of a profile, by KV fraction.
std::vector<Point> diagonal(const LayerProfile& p, int64_t head_dim) {
  std::vector<Point> out;
  for (const Candidate& c : p) {
    if (c.key_rank != c.value_rank) continue;
    out.push_back({static_cast<double>(c.key_rank + c.value_rank) / (2.0 * head_dim),
                   std::max(c.error, 1e-12)});
  }
  std::sort(out.begin(), out.end(),
            [](const Point& a, const Point& b) { return a.fraction < b.fraction; });
  return out;
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

}  // namespace

std::string profile_svg(const StiefResult& result, int64_t head_dim, const std::string& title) {
  constexpr double kW = 720, kH = 440, kLeft = 80, kRight = 170, kTop = 50, kBottom = 60;
  const char* colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                           "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  const bool heldout = !result.layers.empty() && !result.layers[0].stief_heldout.empty();
  std::vector<std::vector<Point>> eigen, stief;
  double x0 = 1, x1 = 0, y0 = 1e300, y1 = 0;
  for (const StiefLayer& l : result.layers) {
    eigen.push_back(diagonal(heldout ? l.eigen_heldout : l.eigen_profile, head_dim));
    stief.push_back(diagonal(heldout ? l.stief_heldout : l.stief_profile, head_dim));
    for (const auto* line : {&eigen.back(), &stief.back()}) {
      for (const Point& p : *line) {
        x0 = std::min(x0, p.fraction);
        x1 = std::max(x1, p.fraction);
        y0 = std::min(y0, p.error);
        y1 = std::max(y1, p.error);
      }
    }
  }
  EKV_CHECK(x1 > 0, "no r_K = r_V candidates to plot");
  if (x1 - x0 < 1e-9) x1 = x0 + 0.1;
  // Log-scale y over whole decades around the data.
  const double d0 = std::floor(std::log10(y0)), d1 = std::max(std::ceil(std::log10(y1)), d0 + 1);
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return kTop + (d1 - std::log10(y)) / (d1 - d0) * ph; };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << kH
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kW / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" << title
    << "</text>\n";
  // Axes, grid and ticks.
  for (double d = d0; d <= d1 + 1e-9; d += 1) {
    const double y = py(std::pow(10.0, d));
    s << "<line x1=\"" << kLeft << "\" y1=\"" << y << "\" x2=\"" << kLeft + pw << "\" y2=\"" << y
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << kLeft - 8 << "\" y=\"" << y + 4
      << "\" text-anchor=\"end\">1e" << static_cast<int>(d) << "</text>\n";
  }
  // Ticks at multiples of 0.1 (the candidate fractions), or at the ends of a narrower range.
  std::vector<double> ticks;
  for (int i = static_cast<int>(std::ceil(x0 * 10 - 1e-9)); i <= std::floor(x1 * 10 + 1e-9); ++i)
    ticks.push_back(i / 10.0);
  if (ticks.size() < 2) ticks = {x0, x1};
  for (double f : ticks) {
    const double x = px(f);
    s << "<line x1=\"" << x << "\" y1=\"" << kTop << "\" x2=\"" << x << "\" y2=\"" << kTop + ph
      << "\" stroke=\"#eee\"/>\n<text x=\"" << x << "\" y=\"" << kTop + ph + 18
      << "\" text-anchor=\"middle\">" << fmt(ticks.size() > 2 ? "%.1f" : "%.2f", f) << "</text>\n";
  }
  s << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n"
    << "<text x=\"" << kLeft + pw / 2 << "\" y=\"" << kH - 18
    << "\" text-anchor=\"middle\">KV fraction (r_K + r_V) / 2 d_h, r_K = r_V</text>\n"
    << "<text transform=\"translate(22," << kTop + ph / 2
    << ") rotate(-90)\" text-anchor=\"middle\">relative layer-output error"
    << (heldout ? " (held-out)" : " (calibration)") << "</text>\n";
  // One colour per layer; Eigen dashed, Stief solid with dots.
  for (size_t l = 0; l < stief.size(); ++l) {
    const char* colour = colours[l % (sizeof(colours) / sizeof(colours[0]))];
    for (int method = 0; method < 2; ++method) {
      const std::vector<Point>& line = method ? stief[l] : eigen[l];
      s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\""
        << (method ? "" : " stroke-dasharray=\"6,4\"") << " points=\"";
      for (const Point& p : line) s << px(p.fraction) << "," << py(p.error) << " ";
      s << "\"/>\n";
      if (method) {
        for (const Point& p : line) {
          s << "<circle cx=\"" << px(p.fraction) << "\" cy=\"" << py(p.error)
            << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
        }
      }
    }
    const double ly = kTop + 10 + 20.0 * static_cast<double>(l);
    s << "<line x1=\"" << kW - kRight + 15 << "\" y1=\"" << ly << "\" x2=\"" << kW - kRight + 45
      << "\" y2=\"" << ly << "\" stroke=\"" << colour << "\" stroke-width=\"2\"/>\n<text x=\""
      << kW - kRight + 52 << "\" y=\"" << ly + 4 << "\">layer " << l << "</text>\n";
  }
  const double ly = kTop + 20 + 20.0 * static_cast<double>(stief.size());
  s << "<line x1=\"" << kW - kRight + 15 << "\" y1=\"" << ly << "\" x2=\"" << kW - kRight + 45
    << "\" y2=\"" << ly << "\" stroke=\"black\" stroke-width=\"2\"/>\n<text x=\""
    << kW - kRight + 52 << "\" y=\"" << ly + 4 << "\">Stief</text>\n"
    << "<line x1=\"" << kW - kRight + 15 << "\" y1=\"" << ly + 20 << "\" x2=\"" << kW - kRight + 45
    << "\" y2=\"" << ly + 20
    << "\" stroke=\"black\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/>\n<text x=\""
    << kW - kRight + 52 << "\" y=\"" << ly + 24 << "\">Eigen</text>\n</svg>\n";
  return s.str();
}

void write_profile_svg(const StiefResult& result, int64_t head_dim, const std::string& path) {
  const std::string svg =
      profile_svg(result, head_dim, "Error-rank profile: StiefAttention vs Eigen Attention");
  std::ofstream out(path);
  EKV_CHECK(out.good(), path, ": cannot open for writing");
  out << svg;
  out.close();
  EKV_CHECK(out.good(), path, ": write failed");
}

}  // namespace eigenkv::compress
