// SVG chart rendering for dha::svg: margins sized from estimated text widths, "nice" 1/2/5 x 10^k
// ticks, Okabe-Ito lines and bars, viridis heatmaps. Plain std C++17, deterministic output.
#include "dha/svg.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <system_error>
#include <utility>

#include "dha/error.h"
#include "dha/io/atomic_file.h"

namespace dha::svg {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTitleFont = 16;
constexpr double kAxisTitleFont = 13;
constexpr double kTickFont = 11;
constexpr double kLegendFont = 12;
constexpr const char* kTextColour = "#222222";
constexpr const char* kAxisColour = "#333333";
constexpr const char* kGridColour = "#e5e5e5";
constexpr const char* kMissingColour = "#d9d9d9";  // NaN cells: a grey viridis never produces

// Okabe-Ito, reordered so the first colours are the strongest on white; yellow last because
// thin yellow lines are hard to see. Distinguishable under the common colour-vision deficiencies.
constexpr const char* kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                    "#E69F00", "#56B4E9", "#000000", "#F0E442"};
constexpr size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

const char* palette(size_t i) { return kPalette[i % kPaletteSize]; }

// viridis sampled at 10 evenly spaced points (matplotlib / viridisLite); linear interpolation
// between them stays within a few RGB units of the full 256-entry table.
constexpr unsigned char kViridis[10][3] = {
    {0x44, 0x01, 0x54}, {0x48, 0x28, 0x78}, {0x3e, 0x4a, 0x89}, {0x31, 0x68, 0x8e}, {0x26, 0x82, 0x8e},
    {0x1f, 0x9e, 0x89}, {0x35, 0xb7, 0x79}, {0x6d, 0xcd, 0x59}, {0xb4, 0xde, 0x2c}, {0xfd, 0xe7, 0x25}};

// ---- text and numbers ---------------------------------------------------------------------------

// Locale-independent number formatting (printf would write "1,5" under a German LC_NUMERIC
// and break the document). precision as in printf's %.Nf / %.Ne / %.Ng.
std::string format_number(double v, std::chars_format format, int precision) {
  char buf[400];  // %.8f of the largest double fits
  const auto result = std::to_chars(buf, buf + sizeof buf, v, format, precision);
  if (result.ec != std::errc()) return "0";
  return std::string(buf, result.ptr);
}

// "-0", "-0.00" and friends print as "0": a tick at zero must not read as negative.
std::string drop_negative_zero(std::string s) {
  if (s.empty() || s[0] != '-') return s;
  if (s.find_first_not_of("0.", 1) == std::string::npos) s.erase(0, 1);
  return s;
}

// Coordinates and sizes: %.2f with trailing zeros trimmed, so bytes are fixed by the value alone.
std::string num(double v) {
  std::string s = format_number(v, std::chars_format::fixed, 2);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return drop_negative_zero(s);
}

// Cell annotations: always two decimals, as the option documents.
std::string fixed2(double v) { return drop_negative_zero(format_number(v, std::chars_format::fixed, 2)); }

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '\n':  // SVG text is one line anyway
      case '\r':
      case '\t':
        out += ' ';
        break;
      default:
        // Other control characters are not allowed anywhere in XML 1.0: drop them.
        if (static_cast<unsigned char>(c) >= 0x20) out += c;
    }
  }
  return out;
}

// Approximate advance of one character in em, taken from DejaVu Sans (the usual sans-serif on
// Linux and in rsvg); Helvetica/Arial are ~10% narrower, so margins err on the roomy side.
double char_em(unsigned char c) {
  if (c >= 0x80) return (c & 0xC0) == 0x80 ? 0.0 : 0.7;  // UTF-8: count lead bytes only
  if (c == ' ') return 0.32;
  if (std::strchr("il.,:;'|!`", c)) return 0.3;
  if (std::strchr("jftI[]()/\\-r", c)) return 0.41;
  if (std::strchr("mwMW%", c)) return 0.96;
  if (c == '_') return 0.5;
  if (c >= '0' && c <= '9') return 0.64;
  if (c >= 'A' && c <= 'Z') return 0.72;
  if (c >= 'a' && c <= 'z') return 0.61;
  return 0.65;
}

double text_width(std::string_view s, double size, bool bold = false) {
  double em = 0;
  for (char c : s) em += char_em(static_cast<unsigned char>(c));
  return em * size * (bold ? 1.08 : 1.0);
}

double max_width(const std::vector<std::string>& texts, double size) {
  double w = 0;
  for (const auto& t : texts) w = std::max(w, text_width(t, size));
  return w;
}

// Shrinks a title's font (not below 10px) rather than letting it run off the image.
double fit_font(std::string_view s, double size, double available, bool bold) {
  const double w = text_width(s, size, bold);
  if (w <= available || w <= 0) return size;
  return std::max(10.0, std::floor(size * available / w * 2) / 2);
}

std::string where(const std::string& title) {
  return title.empty() ? std::string() : " (chart \"" + title + "\")";
}

// ---- SVG elements -------------------------------------------------------------------------------

class Document {
 public:
  Document(double width, double height, const std::string& title) {
    const std::string w = num(width), h = num(height);
    out_ = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n";
    out_ += "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + w + "\" height=\"" + h +
            "\" viewBox=\"0 0 " + w + " " + h + "\" font-family=\"sans-serif\">\n";
    if (!title.empty()) out_ += "<title>" + escape(title) + "</title>\n";
    out_ += "<rect x=\"0\" y=\"0\" width=\"" + w + "\" height=\"" + h + "\" fill=\"#ffffff\"/>\n";
  }
  void add(const std::string& element) {
    out_ += element;
    out_ += '\n';
  }
  std::string finish() {
    out_ += "</svg>\n";
    return std::move(out_);
  }

 private:
  std::string out_;
};

std::string line(double x1, double y1, double x2, double y2, const char* stroke, double width,
                 const std::string& extra = "") {
  return "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" + num(y2) +
         "\" stroke=\"" + stroke + "\" stroke-width=\"" + num(width) + "\"" + extra + "/>";
}

std::string rect(double x, double y, double w, double h, const std::string& fill,
                 const std::string& extra = "") {
  return "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(w) + "\" height=\"" + num(h) +
         "\" fill=\"" + fill + "\"" + extra + "/>";
}

// anchor: "start", "middle" or "end"; rotate: degrees about (x, y), 0 for none.
std::string text(double x, double y, const std::string& content, double size, const char* anchor,
                 double rotate = 0, const std::string& extra = "") {
  std::string s = "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" font-size=\"" + num(size) + "\"";
  if (std::strcmp(anchor, "start") != 0) s += std::string(" text-anchor=\"") + anchor + "\"";
  if (rotate != 0) s += " transform=\"rotate(" + num(rotate) + " " + num(x) + " " + num(y) + ")\"";
  if (extra.find("fill=") == std::string::npos) s += std::string(" fill=\"") + kTextColour + "\"";
  return s + extra + ">" + escape(content) + "</text>";
}

void add_title(Document& doc, const std::string& title, double width) {
  if (title.empty()) return;
  const double size = fit_font(title, kTitleFont, width - 24, true);
  doc.add(text(width / 2, 28, title, size, "middle", 0, " font-weight=\"bold\""));
}

// Rotated y-axis title; its glyphs sit left of the baseline at x = 23.
void add_y_title(Document& doc, const std::string& label, double centre_y) {
  if (!label.empty()) doc.add(text(23, centre_y, label, kAxisTitleFont, "middle", -90));
}

// ---- axes ---------------------------------------------------------------------------------------

// Rounds up to 1, 2 or 5 x 10^k.
double nice_step(double raw) {
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

// A flat range (constant data, one point) gets a margin so nothing divides by zero.
void widen_if_flat(double& lo, double& hi) {
  if (hi > lo) return;
  const double d = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
  lo -= d;
  hi += d;
}

// Large or tiny magnitudes as "1.5e6" / "2e-5" instead of long digit strings.
std::string scientific(double v, int mantissa_decimals) {
  if (v == 0) return "0";
  std::string s = format_number(v, std::chars_format::scientific, mantissa_decimals);
  const size_t e = s.find('e');
  std::string mantissa = s.substr(0, e);
  const int exponent = std::atoi(s.c_str() + e + 1);
  return mantissa + "e" + std::to_string(exponent);
}

bool wants_scientific(double max_abs, double step) { return max_abs >= 1e6 || step < 1e-4; }

std::string linear_label(double v, double step, double max_abs) {
  if (std::abs(v) < step * 1e-6) v = 0;
  if (wants_scientific(max_abs, step)) {
    const int digits =
        static_cast<int>(std::floor(std::log10(max_abs)) - std::floor(std::log10(step) + 1e-9));
    return scientific(v, std::clamp(digits, 0, 6));
  }
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 8);
  return drop_negative_zero(format_number(v, std::chars_format::fixed, decimals));
}

// m x 10^e on a log axis; `exponent_form` for axes reaching beyond 1e-4..1e5, so that all of
// their labels read alike ("1e-8", "1e0", "1e8") instead of mixing "0.0001" with "1e8".
std::string log_label(int m, int e, bool exponent_form) {
  if (!exponent_form)
    return drop_negative_zero(
        format_number(m * std::pow(10.0, e), std::chars_format::fixed, std::max(0, -e)));
  return std::to_string(m) + "e" + std::to_string(e);
}

struct Axis {
  double lo = 0, hi = 1;  // axis units: data values, or log10 of them on a log axis
  bool log = false;
  double step = 1;            // linear axes: tick spacing
  std::vector<double> ticks;  // labelled, in axis units
  std::vector<std::string> labels;
  std::vector<double> minor;  // unlabelled ticks (log axes)
  double frac(double v) const { return ((log ? std::log10(v) : v) - lo) / (hi - lo); }
  double frac_units(double u) const { return (u - lo) / (hi - lo); }
};

// About `target` ticks at multiples of a nice step; `extend` moves the ends out to ticks.
// min_step: 1 for integer data (layer indices, steps), where ticks at 0.5 would mean nothing.
Axis linear_axis(double lo, double hi, int target, bool extend_lo, bool extend_hi, double min_step = 0) {
  widen_if_flat(lo, hi);
  if (!std::isfinite(hi - lo)) fail("svg: data range [", lo, ", ", hi, "] is too wide to plot");
  Axis a;
  a.step = std::max(nice_step((hi - lo) / std::max(1, target)), min_step);
  if (extend_lo) lo = std::floor(lo / a.step + 1e-9) * a.step;
  if (extend_hi) hi = std::ceil(hi / a.step - 1e-9) * a.step;
  a.lo = lo;
  a.hi = hi;
  const double max_abs = std::max(std::abs(lo), std::abs(hi));
  const double k0 = std::ceil(lo / a.step - 1e-9), k1 = std::floor(hi / a.step + 1e-9);
  for (double k = k0; k <= k1; k += 1) {
    a.ticks.push_back(k * a.step);
    a.labels.push_back(linear_label(k * a.step, a.step, max_abs));
  }
  return a;
}

// Whole decades; 2 and 5 labelled too when the axis spans at most two decades, minor ticks at
// 2..9 up to six decades, and only every n-th decade labelled when there are many.
Axis log_axis(double lo, double hi, int target) {
  Axis a;
  a.log = true;
  const int e0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  int e1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9));
  if (e1 <= e0) e1 = e0 + 1;
  a.lo = e0;
  a.hi = e1;
  const int decades = e1 - e0;
  const bool exponent_form = e0 < -4 || e1 > 5;
  const int every = std::max(1, (decades + std::max(target, 2) - 1) / std::max(target, 2));
  for (int e = e0; e <= e1; ++e) {
    if ((e - e0) % every == 0) {
      a.ticks.push_back(e);
      a.labels.push_back(log_label(1, e, exponent_form));
    } else {
      a.minor.push_back(e);
    }
    if (e == e1) break;
    for (int m = 2; m <= 9; ++m) {
      const double u = e + std::log10(static_cast<double>(m));
      if (decades <= 2 && (m == 2 || m == 5)) {
        a.ticks.push_back(u);
        a.labels.push_back(log_label(m, e, exponent_form));
      } else if (decades <= 6) {
        a.minor.push_back(u);
      }
    }
  }
  return a;
}

// Labels every `step`-th cell, step from 1, 2, 5, 10, 20, ... so that labels are `need` apart.
size_t thin_step(double spacing, double need) {
  for (size_t m = 1; m < 1000000000; m *= 10) {
    for (size_t f : {1, 2, 5}) {
      if (spacing * m * f >= need) return m * f;
    }
  }
  return 1000000000;
}

std::vector<std::string> indices(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back(std::to_string(i));
  return out;
}

// ---- colours ------------------------------------------------------------------------------------

struct Rgb {
  int r, g, b;
};

Rgb viridis(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const double pos = t * 9;
  const int i = std::min(static_cast<int>(pos), 8);
  const double f = pos - i;
  auto mix = [&](int c) {
    return static_cast<int>(std::lround(kViridis[i][c] * (1 - f) + kViridis[i + 1][c] * f));
  };
  return {mix(0), mix(1), mix(2)};
}

std::string hex(Rgb c) {
  static const char digits[] = "0123456789abcdef";
  std::string out = "#";
  for (int v : {c.r, c.g, c.b}) {
    out += digits[(v >> 4) & 15];
    out += digits[v & 15];
  }
  return out;
}

// Black text on light cells, white on dark (relative luminance, sRGB approximated by gamma 2.2).
const char* text_on(Rgb c) {
  auto lin = [](int v) { return std::pow(v / 255.0, 2.2); };
  const double y = 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  return y > 0.22 ? "#000000" : "#ffffff";
}

// ---- line chart ---------------------------------------------------------------------------------

struct Pixel {
  double x, y;
};

struct Box {
  double x, y, w, h;
  bool contains(Pixel p, double pad) const {
    return p.x >= x - pad && p.x <= x + w + pad && p.y >= y - pad && p.y <= y + h + pad;
  }
};

// True when any drawn line segment or marker passes through the box (segments sampled every 2px).
bool covers(const Box& box, const std::vector<std::vector<std::vector<Pixel>>>& runs) {
  for (const auto& series_runs : runs) {
    for (const auto& run : series_runs) {
      if (run.size() == 1 && box.contains(run[0], 5)) return true;
      for (size_t i = 1; i < run.size(); ++i) {
        const Pixel p = run[i - 1], q = run[i];
        const int n = 1 + static_cast<int>(std::hypot(q.x - p.x, q.y - p.y) / 2);
        for (int k = 0; k <= n; ++k) {
          const double t = static_cast<double>(k) / n;
          if (box.contains({p.x + (q.x - p.x) * t, p.y + (q.y - p.y) * t}, 4)) return true;
        }
      }
    }
  }
  return false;
}

}  // namespace

std::string line_chart(const std::vector<Series>& series, const LineChartOptions& options) {
  const char* fn = "svg::line_chart";
  if (series.empty()) fail(fn, ": no series to plot", where(options.title));
  if (options.width < 200 || options.height < 150)
    fail(fn, ": size ", options.width, " x ", options.height, " is too small (need at least 200 x 150)", where(options.title));

  // Data points, NaN/inf (and non-positive on a log axis) marked as gaps.
  struct Point {
    double x, y;
    bool ok;
  };
  std::vector<std::vector<Point>> points(series.size());
  double xlo = kInf, xhi = -kInf, ylo = kInf, yhi = -kInf;
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    if (s.y.empty()) fail(fn, ": series ", i, " \"", s.label, "\" has no y values", where(options.title));
    if (!s.x.empty() && s.x.size() != s.y.size())
      fail(fn, ": series ", i, " \"", s.label, "\" has ", s.x.size(), " x values but ", s.y.size(),
           " y values", where(options.title));
    for (size_t j = 0; j < s.y.size(); ++j) {
      const double x = s.x.empty() ? static_cast<double>(j) : s.x[j], y = s.y[j];
      const bool ok = std::isfinite(x) && std::isfinite(y) && (!options.log_y || y > 0);
      points[i].push_back({x, y, ok});
      if (!ok) continue;
      xlo = std::min(xlo, x);
      xhi = std::max(xhi, x);
      ylo = std::min(ylo, y);
      yhi = std::max(yhi, y);
    }
  }
  bool integer_x = true;
  for (const auto& series_points : points)
    for (const auto& p : series_points) integer_x = integer_x && (!p.ok || p.x == std::round(p.x));
  const bool no_data = xlo > xhi;
  if (no_data) {
    xlo = 0;
    xhi = 1;
    ylo = options.log_y ? 1 : 0;
    yhi = options.log_y ? 10 : 1;
  }

  // Vertical layout first: the y ticks decide the left margin, which decides the x ticks.
  const double width = options.width, height = options.height;
  const double top = options.title.empty() ? 18 : 46;
  const double bottom = 36 + (options.x_label.empty() ? 0 : 22);
  const double plot_h = height - top - bottom;
  const int y_target = std::max(2, static_cast<int>(plot_h / 55));
  const Axis ya = options.log_y ? log_axis(ylo, yhi, y_target) : linear_axis(ylo, yhi, y_target, true, true);
  const double left = 14 + (options.y_label.empty() ? 0 : 22) + max_width(ya.labels, kTickFont) + 10;

  // Legend geometry (drawn only for several series).
  const bool has_legend = series.size() > 1;
  std::vector<std::string> legend_text;
  for (size_t i = 0; i < series.size(); ++i)
    legend_text.push_back(series[i].label.empty() ? "series " + std::to_string(i + 1) : series[i].label);
  const double legend_w = 10 + 26 + 6 + max_width(legend_text, kLegendFont) + 10;
  const double legend_h = 8 + 18.0 * series.size() + 2;

  size_t n_ok_max = 0;
  std::vector<bool> markers(series.size());
  for (size_t i = 0; i < series.size(); ++i) {
    size_t n_ok = 0;
    for (const auto& p : points[i]) n_ok += p.ok;
    markers[i] = n_ok <= 40;  // sparse data: show where the samples are
    n_ok_max = std::max(n_ok_max, n_ok);
  }

  // Horizontal layout; redone once with the legend outside when it would hide data.
  double right = 0, plot_w = 0;
  Axis xa;
  std::vector<std::vector<std::vector<Pixel>>> runs;
  auto layout = [&](double extra_right) {
    right = 24 + extra_right;
    for (int pass = 0; pass < 2; ++pass) {
      plot_w = width - left - right;
      if (plot_w < 40)
        fail(fn, ": size ", options.width, " x ", options.height, " leaves no room for the plot", where(options.title));
      for (int target = std::max(2, static_cast<int>(plot_w / 80)); target >= 1; --target) {
        xa = linear_axis(xlo, xhi, target, true, true, integer_x ? 1 : 0);
        const double spacing = xa.step / (xa.hi - xa.lo) * plot_w;
        if (max_width(xa.labels, kTickFont) + 12 <= spacing) break;
      }
      // The last x label is centred on the plot's right edge: keep half of it inside the image.
      const double half_last = xa.labels.empty() ? 0 : text_width(xa.labels.back(), kTickFont) / 2 + 6;
      if (half_last <= right - extra_right) break;
      right = half_last + extra_right;
    }
    runs.assign(series.size(), {});
    for (size_t i = 0; i < series.size(); ++i) {
      bool open = false;
      for (const auto& p : points[i]) {
        if (!p.ok) {
          open = false;
          continue;
        }
        if (!open) runs[i].emplace_back();
        open = true;
        runs[i].back().push_back({left + xa.frac(p.x) * plot_w, top + plot_h - ya.frac(p.y) * plot_h});
      }
    }
  };
  layout(0);

  Box legend_box{0, 0, legend_w, legend_h};
  if (has_legend) {
    bool placed = false;
    if (legend_w + 16 <= plot_w && legend_h + 16 <= plot_h) {
      const double xr = left + plot_w - legend_w - 8, xl = left + 8;
      const double yt = top + 8, yb = top + plot_h - legend_h - 8;
      for (const Pixel corner : {Pixel{xr, yt}, Pixel{xl, yt}, Pixel{xr, yb}, Pixel{xl, yb}}) {
        legend_box.x = corner.x;
        legend_box.y = corner.y;
        if (!covers(legend_box, runs)) {
          placed = true;
          break;
        }
      }
    }
    if (!placed) {
      layout(legend_w + 12);
      legend_box.x = left + plot_w + 14;
      legend_box.y = top;
    }
  }

  Document doc(width, height, options.title);
  add_title(doc, options.title, width);
  const double plot_bottom = top + plot_h;

  // Grid, axes, ticks and labels.
  for (size_t k = 0; k < ya.ticks.size(); ++k) {
    const double y = plot_bottom - ya.frac_units(ya.ticks[k]) * plot_h;
    doc.add(line(left, y, left + plot_w, y, kGridColour, 1));
    doc.add(line(left - 5, y, left, y, kAxisColour, 1));
    doc.add(text(left - 8, y + 4, ya.labels[k], kTickFont, "end"));
  }
  for (double u : ya.minor) {
    const double y = plot_bottom - ya.frac_units(u) * plot_h;
    doc.add(line(left - 3, y, left, y, kAxisColour, 1));
  }
  for (size_t k = 0; k < xa.ticks.size(); ++k) {
    const double x = left + xa.frac_units(xa.ticks[k]) * plot_w;
    doc.add(line(x, top, x, plot_bottom, kGridColour, 1));
    doc.add(line(x, plot_bottom, x, plot_bottom + 5, kAxisColour, 1));
    doc.add(text(x, plot_bottom + 18, xa.labels[k], kTickFont, "middle"));
  }
  doc.add(line(left, top, left, plot_bottom, kAxisColour, 1));
  doc.add(line(left, plot_bottom, left + plot_w, plot_bottom, kAxisColour, 1));
  if (!options.x_label.empty()) doc.add(text(left + plot_w / 2, height - 12, options.x_label, kAxisTitleFont, "middle"));
  add_y_title(doc, options.y_label, top + plot_h / 2);
  if (no_data)
    doc.add(text(left + plot_w / 2, top + plot_h / 2, "no finite data", kAxisTitleFont, "middle", 0,
                 " fill=\"#888888\""));

  // Data.
  auto dash = [](bool dashed) { return dashed ? std::string(" stroke-dasharray=\"7 4\"") : std::string(); };
  for (size_t i = 0; i < series.size(); ++i) {
    const char* colour = palette(i);
    std::string d;
    for (const auto& run : runs[i]) {
      if (run.size() < 2) continue;
      for (size_t k = 0; k < run.size(); ++k)
        d += (k == 0 ? (d.empty() ? "M" : " M") : " L") + num(run[k].x) + " " + num(run[k].y);
    }
    if (!d.empty())
      doc.add("<path d=\"" + d + "\" fill=\"none\" stroke=\"" + colour +
              "\" stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\"" +
              dash(series[i].dashed) + "/>");
    for (const auto& run : runs[i]) {
      if (!markers[i] && run.size() > 1) continue;  // isolated points always get a marker
      for (const auto& p : run)
        doc.add("<circle cx=\"" + num(p.x) + "\" cy=\"" + num(p.y) + "\" r=\"" +
                (run.size() == 1 ? "3" : "2.5") + "\" fill=\"" + colour + "\"/>");
    }
  }

  if (has_legend) {
    doc.add(rect(legend_box.x, legend_box.y, legend_box.w, legend_box.h, "#ffffff",
                 " fill-opacity=\"0.9\" stroke=\"#bbbbbb\" stroke-width=\"1\""));
    for (size_t i = 0; i < series.size(); ++i) {
      const double cy = legend_box.y + 8 + 18.0 * i + 9;
      const double x0 = legend_box.x + 10;
      doc.add(line(x0, cy, x0 + 26, cy, palette(i), 2, dash(series[i].dashed)));
      if (markers[i])
        doc.add("<circle cx=\"" + num(x0 + 13) + "\" cy=\"" + num(cy) + "\" r=\"2.5\" fill=\"" + palette(i) +
                "\"/>");
      doc.add(text(x0 + 32, cy + 4, legend_text[i], kLegendFont, "start"));
    }
  }
  return doc.finish();
}

// ---- heatmaps -----------------------------------------------------------------------------------

namespace {

using Matrix = std::vector<std::vector<double>>;

void check_matrix(const Matrix& m, const std::string& what) {
  if (m.empty() || m[0].empty()) fail(what, " is empty (need at least 1 x 1 values)");
  for (size_t r = 1; r < m.size(); ++r)
    if (m[r].size() != m[0].size())
      fail(what, ": row ", r, " has ", m[r].size(), " values but row 0 has ", m[0].size());
}

// How a matrix edge's tick labels fit: every `step`-th cell, maybe rotated 45 degrees, and how
// far they reach beyond the matrix (below it for columns, left of it for rows).
struct TickLayout {
  std::vector<std::string> text;
  size_t step = 1;
  bool rotated = false;
  double extent = 0;
};

TickLayout column_ticks(size_t n, const std::vector<std::string>& given, double cell_w) {
  TickLayout t;
  t.text = given.empty() ? indices(n) : given;
  const double w = max_width(t.text, kTickFont);
  if (cell_w >= w + 4 || given.empty()) {
    t.step = thin_step(cell_w, w + 6);
    t.extent = 6 + kTickFont + 4;
  } else {
    // Named columns that do not fit side by side read best slanted, thinned only if crowded.
    t.rotated = true;
    t.step = thin_step(cell_w * 0.7071, kTickFont + 1);
    t.extent = 10 + (w + kTickFont) * 0.7071;
  }
  return t;
}

// How far slanted labels reach left of the first cell's left edge (0 when they do not).
double slanted_reach(const std::vector<std::string>& labels, size_t step, double cell_w) {
  double reach = 0;
  for (size_t c = 0; c < labels.size(); c += step)
    reach = std::max(reach, text_width(labels[c], kTickFont) * 0.7071 - 3 - (c + 0.5) * cell_w);
  return reach;
}

TickLayout row_ticks(size_t n, const std::vector<std::string>& given, double cell_h) {
  TickLayout t;
  t.text = given.empty() ? indices(n) : given;
  t.step = thin_step(cell_h, kTickFont + 2);
  t.extent = max_width(t.text, kTickFont) + 9;
  return t;
}

std::string render_heatmaps(const std::vector<Panel>& panels, int columns, const HeatmapOptions& options,
                            bool single) {
  const char* fn = single ? "svg::heatmap" : "svg::heatmap_grid";
  if (panels.empty()) fail(fn, ": no panels to plot", where(options.title));
  if (columns < 1) fail(fn, ": columns must be at least 1, got ", columns, where(options.title));
  if (options.width < 0 || options.height < 0)
    fail(fn, ": width and height must be positive or 0 (automatic), got ", options.width, " x ", options.height,
         where(options.title));

  const size_t n = panels.size();
  size_t max_r = 0, max_c = 0;
  bool uniform = true, any_title = false, any_missing = false;
  double lo = kInf, hi = -kInf;
  for (size_t p = 0; p < n; ++p) {
    const Matrix& m = panels[p].values;
    const std::string what =
        single ? std::string(fn) + ": values"
               : std::string(fn) + ": panel " + std::to_string(p) + " \"" + panels[p].title + "\"";
    check_matrix(m, what);
    if (!options.x_ticks.empty() && options.x_ticks.size() != m[0].size())
      fail(what, " has ", m[0].size(), " columns but x_ticks has ", options.x_ticks.size(), " labels");
    if (!options.y_ticks.empty() && options.y_ticks.size() != m.size())
      fail(what, " has ", m.size(), " rows but y_ticks has ", options.y_ticks.size(), " labels");
    uniform = uniform && m.size() == panels[0].values.size() && m[0].size() == panels[0].values[0].size();
    max_r = std::max(max_r, m.size());
    max_c = std::max(max_c, m[0].size());
    any_title = any_title || !panels[p].title.empty();
    for (const auto& row : m)
      for (double v : row) {
        if (!std::isfinite(v)) {
          any_missing = true;
          continue;
        }
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
  }

  // One colour scale for every panel.
  if (!std::isnan(options.vmin) && !std::isfinite(options.vmin)) fail(fn, ": vmin must be finite or NaN, got ", options.vmin);
  if (!std::isnan(options.vmax) && !std::isfinite(options.vmax)) fail(fn, ": vmax must be finite or NaN, got ", options.vmax);
  if (lo > hi) {  // nothing finite: any range will do
    lo = 0;
    hi = 1;
  }
  if (!std::isnan(options.vmin)) lo = options.vmin;
  if (!std::isnan(options.vmax)) hi = options.vmax;
  if (lo > hi)
    fail(fn, ": vmin ", lo, " is above vmax ", hi,
         std::isnan(options.vmin) || std::isnan(options.vmax) ? " (one taken from the data)" : "", where(options.title));
  widen_if_flat(lo, hi);  // constant data: every cell mid-scale, no division by zero
  const double span = hi - lo;

  const size_t grid_cols = std::min(static_cast<size_t>(columns), n);
  const size_t grid_rows = (n + grid_cols - 1) / grid_cols;
  const double title_h = options.title.empty() ? 0 : 34;
  const double top = 14 + title_h;
  const double panel_title_h = any_title ? 20 : 0;
  const double bar_w = 14;

  // Colour bar ticks and labels do not depend on the cell size.
  const Axis ca = linear_axis(lo, hi, 5, false, false);
  const double right =
      24 + bar_w + 7 + max_width(ca.labels, kTickFont) + (options.colorbar_label.empty() ? 0 : 26) + 14;

  // Everything else does: tick label thinning and rotation follow the cell size.
  struct Geometry {
    std::vector<TickLayout> xt, yt;  // per panel
    double x_extent = 0, y_extent = 0;
    double left = 0, bottom = 0, hgap = 0, vgap = 0;
  };
  auto measure = [&](double cw, double ch) {
    Geometry g;
    for (const auto& p : panels) {
      g.xt.push_back(column_ticks(p.values[0].size(), options.x_ticks, cw));
      g.yt.push_back(row_ticks(p.values.size(), options.y_ticks, ch));
      g.x_extent = std::max(g.x_extent, g.xt.back().extent);
      g.y_extent = std::max(g.y_extent, g.yt.back().extent);
    }
    g.left = 12 + (options.y_label.empty() ? 0 : 22) + g.y_extent;
    for (const auto& t : g.xt)  // slanted column labels must not run off the left edge
      if (t.rotated) g.left = std::max(g.left, slanted_reach(t.text, t.step, cw) + 8);
    g.bottom = g.x_extent + (options.x_label.empty() ? 0 : 24) + 10;
    g.hgap = 22 + (uniform ? 0 : g.y_extent);
    g.vgap = 14 + (uniform ? 0 : g.x_extent);
    return g;
  };

  double cw, ch;
  if (single) {
    cw = std::clamp(std::floor(440.0 / std::max(max_r, max_c)), 1.0, 56.0);
  } else {
    cw =
        std::clamp(std::floor(std::min(680.0 / (grid_cols * max_c), 900.0 / (grid_rows * max_r))), 1.0, 40.0);
  }
  ch = cw;
  Geometry g = measure(cw, ch);
  if (options.width > 0 || options.height > 0) {
    // Fit the cells to the requested size; labels depend on cells, so settle in a few rounds.
    for (int round = 0; round < 3; ++round) {
      const double fit_w =
          options.width > 0 ? (options.width - g.left - right - (grid_cols - 1) * g.hgap) / (grid_cols * max_c) : kInf;
      const double fit_h =
          options.height > 0 ? (options.height - top - g.bottom - grid_rows * panel_title_h - (grid_rows - 1) * g.vgap) /
                             (grid_rows * max_r)
                       : kInf;
      if (options.width > 0 && options.height > 0) {
        cw = fit_w;
        ch = fit_h;
      } else {
        cw = ch = std::min(fit_w, fit_h);
      }
      if (!(cw >= 1 && ch >= 1))
        fail(fn, ": size ", options.width, " x ", options.height, " is too small for ", max_r, " x ", max_c, " cells",
             n > 1 ? " per panel" : "", where(options.title));
      g = measure(cw, ch);
    }
  }

  const double pw = max_c * cw, ph = max_r * ch;
  const double grid_w = grid_cols * pw + (grid_cols - 1) * g.hgap;
  const double grid_h = grid_rows * (panel_title_h + ph) + (grid_rows - 1) * g.vgap;
  const double missing_h = any_missing ? 28 : 0;
  const double bar_top = top + panel_title_h;
  const double bar_h = std::max(140.0, grid_h - panel_title_h - missing_h);
  double width = options.width > 0 ? options.width : g.left + grid_w + right;
  double height =
      options.height > 0 ? options.height : std::max(top + grid_h + g.bottom, bar_top + bar_h + missing_h + 12);
  if (options.width <= 0) {
    width = std::max(width, text_width(options.title, kTitleFont, true) + 24);
    width = std::max(width, g.left + text_width(options.x_label, kAxisTitleFont) + 12);
  }
  width = std::ceil(width);
  height = std::ceil(height);

  Document doc(width, height, options.title);
  add_title(doc, options.title, width);

  doc.add("<defs><linearGradient id=\"dha-viridis\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
  for (int i = 0; i < 10; ++i)
    doc.add("<stop offset=\"" + num(i / 9.0) + "\" stop-color=\"" +
            hex({kViridis[i][0], kViridis[i][1], kViridis[i][2]}) + "\"/>");
  doc.add("</linearGradient></defs>");

  const bool tooltips = max_r * max_c * n <= 20000;  // hover values in browsers, unless huge
  for (size_t p = 0; p < n; ++p) {
    const Matrix& m = panels[p].values;
    const size_t rows = m.size(), cols = m[0].size();
    const size_t gr = p / grid_cols, gc = p % grid_cols;
    const double x0 = g.left + gc * (pw + g.hgap);
    const double y0 = top + gr * (panel_title_h + ph + g.vgap) + panel_title_h;
    const double mw = cols * cw, mh = rows * ch;
    const std::vector<std::string>& col_names = g.xt[p].text;
    const std::vector<std::string>& row_names = g.yt[p].text;

    if (!panels[p].title.empty())
      doc.add(text(x0 + mw / 2, y0 - 7, panels[p].title, 12, "middle", 0, " font-weight=\"bold\""));

    doc.add("<g shape-rendering=\"crispEdges\">");  // no anti-aliased seams between cells
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) {
        const double v = m[r][c];
        const std::string fill = std::isfinite(v) ? hex(viridis((v - lo) / span)) : kMissingColour;
        const std::string cell = rect(x0 + c * cw, y0 + r * ch, cw, ch, fill);
        if (tooltips) {
          // rect() ends in "/>": reopen it to hold a <title>, which browsers show on hover.
          const std::string value =
              std::isfinite(v) ? format_number(v, std::chars_format::general, 4) : "NaN";
          doc.add(cell.substr(0, cell.size() - 2) + "><title>" + escape(row_names[r]) + ", " +
                  escape(col_names[c]) + ": " + value + "</title></rect>");
        } else {
          doc.add(cell);
        }
      }
    doc.add("</g>");
    doc.add(rect(x0, y0, mw, mh, "none", " stroke=\"#555555\" stroke-width=\"0.8\""));

    if (options.annotate) {
      const double size = std::min(11.0, std::floor(ch * 0.5));
      double need = 0;
      for (const auto& row : m)
        for (double v : row)
          if (std::isfinite(v)) need = std::max(need, text_width(fixed2(v), size));
      if (size >= 7 && cw >= need + 4) {
        for (size_t r = 0; r < rows; ++r)
          for (size_t c = 0; c < cols; ++c) {
            const double v = m[r][c];
            if (!std::isfinite(v)) continue;
            const char* colour = text_on(viridis((v - lo) / span));
            doc.add(text(x0 + (c + 0.5) * cw, y0 + (r + 0.5) * ch + size * 0.35, fixed2(v), size, "middle", 0,
                         std::string(" fill=\"") + colour + "\""));
          }
      }
    }

    // Outer edges only when panels share a shape; x labels also under a panel with an empty
    // slot below it, if they are flat enough not to reach into the next row.
    const bool last_row = gr + 1 == grid_rows;
    const bool slot_below_empty = p + grid_cols >= n;
    const TickLayout& xt = g.xt[p];
    const bool show_x =
        !uniform || last_row || (slot_below_empty && xt.extent <= g.vgap + panel_title_h + ph);
    const bool show_y = !uniform || gc == 0;
    if (show_x) {
      for (size_t c = 0; c < cols; c += xt.step) {
        const double cx = x0 + (c + 0.5) * cw;
        doc.add(line(cx, y0 + mh, cx, y0 + mh + 4, kAxisColour, 1));
        if (xt.rotated)
          doc.add(text(cx + 3, y0 + mh + 11, xt.text[c], kTickFont, "end", -45));
        else
          doc.add(text(cx, y0 + mh + 16, xt.text[c], kTickFont, "middle"));
      }
    }
    if (show_y) {
      const TickLayout& yt = g.yt[p];
      for (size_t r = 0; r < rows; r += yt.step) {
        const double cy = y0 + (r + 0.5) * ch;
        doc.add(line(x0 - 4, cy, x0, cy, kAxisColour, 1));
        doc.add(text(x0 - 7, cy + 4, yt.text[r], kTickFont, "end"));
      }
    }
  }

  if (!options.x_label.empty())
    doc.add(text(g.left + grid_w / 2, top + grid_h + g.x_extent + 18, options.x_label, kAxisTitleFont, "middle"));
  add_y_title(doc, options.y_label, top + grid_h / 2);

  // Colour bar with its own nice ticks, low values at the bottom.
  const double bar_x = g.left + grid_w + 24;
  doc.add(
      rect(bar_x, bar_top, bar_w, bar_h, "url(#dha-viridis)", " stroke=\"#555555\" stroke-width=\"0.8\""));
  for (size_t k = 0; k < ca.ticks.size(); ++k) {
    const double y = bar_top + bar_h - ca.frac_units(ca.ticks[k]) * bar_h;
    doc.add(line(bar_x + bar_w, y, bar_x + bar_w + 4, y, kAxisColour, 1));
    doc.add(text(bar_x + bar_w + 7, y + 4, ca.labels[k], kTickFont, "start"));
  }
  if (!options.colorbar_label.empty())
    doc.add(text(bar_x + bar_w + 7 + max_width(ca.labels, kTickFont) + 18, bar_top + bar_h / 2,
                 options.colorbar_label, kAxisTitleFont, "middle", -90));
  if (any_missing) {
    const double y = bar_top + bar_h + 14;
    doc.add(rect(bar_x, y, bar_w, bar_w, kMissingColour, " stroke=\"#555555\" stroke-width=\"0.8\""));
    doc.add(text(bar_x + bar_w + 7, y + 11, "NaN", kTickFont, "start"));
  }
  return doc.finish();
}

}  // namespace

std::string heatmap(const std::vector<std::vector<double>>& values, const HeatmapOptions& options) {
  return render_heatmaps({Panel{"", values}}, 1, options, true);
}

std::string heatmap_grid(const std::vector<Panel>& panels, int columns, const HeatmapOptions& options) {
  return render_heatmaps(panels, columns, options, false);
}

// ---- bar chart ----------------------------------------------------------------------------------

namespace {

// Decimals for one series' value labels: none for integers, else the fewest that show every
// value exactly, capped at one more than the axis step needs (at least 2).
int bar_decimals(const std::vector<double>& values, const Axis& axis) {
  const int cap = std::clamp(static_cast<int>(-std::floor(std::log10(axis.step) + 1e-9)) + 1, 2, 4);
  for (int d = 0; d < cap; ++d) {
    const double scale = std::pow(10.0, d);
    bool exact = true;
    for (double v : values)
      if (std::isfinite(v))
        exact =
            exact && std::abs(v * scale - std::round(v * scale)) < 1e-6 * std::max(1.0, std::abs(v * scale));
    if (exact) return d;
  }
  return cap;
}

std::string bar_value_label(double v, const Axis& axis, int decimals) {
  const double max_abs = std::max(std::abs(axis.lo), std::abs(axis.hi));
  if (wants_scientific(max_abs, axis.step)) return scientific(v, 2);
  return drop_negative_zero(format_number(v, std::chars_format::fixed, decimals));
}

}  // namespace

std::string bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                      const BarChartOptions& options) {
  const char* fn = "svg::bar_chart";
  if (categories.empty()) fail(fn, ": no categories to plot", where(options.title));
  if (series.empty()) fail(fn, ": no series to plot", where(options.title));
  if (options.width < 200 || options.height < 150)
    fail(fn, ": size ", options.width, " x ", options.height, " is too small (need at least 200 x 150)", where(options.title));
  double lo = 0, hi = 0;  // bars start at zero, so zero is always on the axis
  for (size_t i = 0; i < series.size(); ++i) {
    const BarSeries& s = series[i];
    if (s.values.size() != categories.size())
      fail(fn, ": series ", i, " \"", s.label, "\" has ", s.values.size(), " values for ", categories.size(),
           " categories", where(options.title));
    for (double v : s.values) {
      if (!std::isfinite(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  const bool fixed_top = !std::isnan(options.y_max);
  if (fixed_top) {
    if (!std::isfinite(options.y_max)) fail(fn, ": y_max must be finite or NaN, got ", options.y_max, where(options.title));
    if (options.y_max <= lo)
      fail(fn, ": y_max ", options.y_max, " must be above the bottom of the axis (", lo, ")", where(options.title));
    hi = options.y_max;
  }
  if (hi == lo) hi = 1;                // all zero: an axis from 0 to 1 rather than a degenerate one
  if (lo < 0) lo -= (hi - lo) * 0.06;  // room for labels under negative bars

  const double width = options.width, height = options.height;
  const size_t ns = series.size(), nc = categories.size();

  // Legend rows above the plot: never on top of bars.
  struct LegendItem {
    std::string text;
    double w;
  };
  std::vector<std::vector<LegendItem>> legend_rows;
  if (ns > 1) {
    double row_w = 0;
    for (size_t i = 0; i < ns; ++i) {
      const std::string t = series[i].label.empty() ? "series " + std::to_string(i + 1) : series[i].label;
      const double w = 12 + 6 + text_width(t, kLegendFont) + 18;
      if (legend_rows.empty() || row_w + w > width - 40) {
        legend_rows.emplace_back();
        row_w = 0;
      }
      legend_rows.back().push_back({t, w});
      row_w += w;
    }
  }
  const double title_h = options.title.empty() ? 0 : 32;
  const double legend_h = 20.0 * legend_rows.size();

  auto y_axis = [&](double plot_h) {
    return linear_axis(lo, hi, std::max(2, static_cast<int>(plot_h / 55)), true, !fixed_top);
  };
  auto left_for = [&](const Axis& a) {
    return 14 + (options.y_label.empty() ? 0 : 22) + max_width(a.labels, kTickFont) + 10;
  };
  const double right = 16;

  // Provisional pass (value labels horizontal) decides the label orientations, which set the
  // margins of the final pass.
  const double cat_label_w = max_width(categories, kTickFont);
  double top = 14 + title_h + legend_h + 16;
  double bottom = 30 + (options.x_label.empty() ? 0 : 22);
  Axis ya = y_axis(height - top - bottom);
  double plot_w = width - left_for(ya) - right;
  double group_w = plot_w / nc;
  const bool rotate_categories = cat_label_w > group_w - 4;
  double cat_extent = rotate_categories ? 10 + (cat_label_w + kTickFont) * 0.7071 : 20;
  const double bar_w = group_w * 0.8 / ns;
  std::vector<std::vector<std::string>> value_labels(ns);
  double value_label_w = 0;
  // Counts stay integers; all fractional series share one precision so their labels compare.
  std::vector<int> decimals(ns);
  int shared_decimals = 0;
  for (size_t i = 0; i < ns; ++i) {
    decimals[i] = bar_decimals(series[i].values, ya);
    shared_decimals = std::max(shared_decimals, decimals[i]);
  }
  for (size_t i = 0; i < ns; ++i) {
    if (decimals[i] > 0) decimals[i] = shared_decimals;
    for (double v : series[i].values) {
      value_labels[i].push_back(std::isfinite(v) ? bar_value_label(v, ya, decimals[i]) : std::string());
      value_label_w = std::max(value_label_w, text_width(value_labels[i].back(), 10));
    }
  }
  enum class ValueLabels { kFlat, kUpright, kNone };
  const ValueLabels value_mode = value_label_w <= bar_w + 2 ? ValueLabels::kFlat
                                 : bar_w >= 9               ? ValueLabels::kUpright
                                                            : ValueLabels::kNone;
  const double headroom = value_mode == ValueLabels::kUpright ? value_label_w + 8 : 16;

  top = 14 + title_h + legend_h + headroom;
  bottom = 8 + cat_extent + (options.x_label.empty() ? 0 : 22) + 4;
  const double plot_h = height - top - bottom;
  if (plot_h < 40)
    fail(fn, ": size ", options.width, " x ", options.height, " leaves no room for the plot", where(options.title));
  ya = y_axis(plot_h);
  double left = left_for(ya);
  if (rotate_categories)  // slanted category labels must not run off the left edge
    left = std::max(left, slanted_reach(categories, 1, plot_w / nc) + 8);
  plot_w = width - left - right;
  if (plot_w < 40)
    fail(fn, ": size ", options.width, " x ", options.height, " leaves no room for the plot", where(options.title));
  group_w = plot_w / nc;
  const double bar = group_w * 0.8 / ns;
  const double plot_bottom = top + plot_h;
  auto py = [&](double v) { return plot_bottom - ya.frac(std::clamp(v, ya.lo, ya.hi)) * plot_h; };

  Document doc(width, height, options.title);
  add_title(doc, options.title, width);

  // Legend, centred.
  size_t legend_index = 0;
  for (size_t r = 0; r < legend_rows.size(); ++r) {
    double row_w = -18;
    for (const auto& item : legend_rows[r]) row_w += item.w;
    double x = left + std::max(0.0, (plot_w - row_w) / 2);
    const double y = 14 + title_h + 20.0 * r;
    for (const auto& item : legend_rows[r]) {
      doc.add(rect(x, y + 2, 12, 12, palette(legend_index++)));
      doc.add(text(x + 18, y + 12.5, item.text, kLegendFont, "start"));
      x += item.w;
    }
  }

  for (size_t k = 0; k < ya.ticks.size(); ++k) {
    const double y = plot_bottom - ya.frac_units(ya.ticks[k]) * plot_h;
    doc.add(line(left, y, left + plot_w, y, kGridColour, 1));
    doc.add(line(left - 5, y, left, y, kAxisColour, 1));
    doc.add(text(left - 8, y + 4, ya.labels[k], kTickFont, "end"));
  }

  for (size_t c = 0; c < nc; ++c) {
    const double gx = left + c * group_w;
    for (size_t i = 0; i < ns; ++i) {
      const double v = series[i].values[c];
      if (!std::isfinite(v)) continue;
      const double bx = gx + group_w * 0.1 + i * bar;
      const double y0 = py(0), y1 = py(v);
      const double gap = bar > 8 ? 1.5 : 0;  // a hairline of white between adjacent bars
      doc.add(rect(bx + gap / 2, std::min(y0, y1), bar - gap, std::abs(y1 - y0), palette(i)));
      const double cx = bx + bar / 2;
      const std::string& label = value_labels[i][c];
      if (value_mode == ValueLabels::kFlat)
        doc.add(text(cx, v >= 0 ? y1 - 4 : y1 + 12, label, 10, "middle"));
      else if (value_mode == ValueLabels::kUpright)
        doc.add(text(cx + 3.5, v >= 0 ? y1 - 4 : y1 + 4, label, 10, v >= 0 ? "start" : "end", -90));
    }
    const double cx = gx + group_w / 2;
    if (rotate_categories)
      doc.add(text(cx + 3, plot_bottom + 12, categories[c], kTickFont, "end", -45));
    else
      doc.add(text(cx, plot_bottom + 17, categories[c], kTickFont, "middle"));
  }

  doc.add(line(left, top, left, plot_bottom, kAxisColour, 1));
  doc.add(line(left, py(0), left + plot_w, py(0), kAxisColour, 1));
  if (!options.x_label.empty()) doc.add(text(left + plot_w / 2, height - 12, options.x_label, kAxisTitleFont, "middle"));
  add_y_title(doc, options.y_label, top + plot_h / 2);
  return doc.finish();
}

void write(const std::string& path, const std::string& svg) {
  if (svg.empty()) fail("svg::write: refusing to write an empty document to ", path);
  io::write_file_atomic(path, svg);
}

}  // namespace dha::svg
