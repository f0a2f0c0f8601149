// Tests for the SVG chart library: well-formed XML (checked by a small parser below, no external
// tools), escaped text, deterministic bytes, NaN gaps and grey cells, log axes, flat data, errors.
#include <cmath>
#include <filesystem>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/svg.h"
#include "test_util.h"

namespace svg = dha::svg;
using dha::test::expect_one_line_error;
namespace fs = std::filesystem;

namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.';
}

// Checks an entity/character reference starting at s[i] == '&'; advances i past it.
bool reference_ok(const std::string& s, size_t& i) {
  const size_t semi = s.find(';', i);
  if (semi == std::string::npos) return false;
  const std::string ref = s.substr(i + 1, semi - i - 1);
  i = semi + 1;
  if (ref == "amp" || ref == "lt" || ref == "gt" || ref == "quot" || ref == "apos") return true;
  return std::regex_match(ref, std::regex("#[0-9]+|#x[0-9a-fA-F]+"));
}

// A minimal XML well-formedness check, enough for what the charts emit: optional prolog, one
// root element, balanced tags, quoted attributes without '<', only the five predefined entity
// references, no markup characters in text. Returns "" when well-formed, else what is wrong.
std::string xml_error(const std::string& s) {
  size_t i = 0;
  if (s.compare(0, 5, "<?xml") == 0) {
    i = s.find("?>");
    if (i == std::string::npos) return "unterminated prolog";
    i += 2;
  }
  std::vector<std::string> open;
  bool root_seen = false;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '<') {
      if (s.compare(i, 4, "<!--") == 0) {
        const size_t end = s.find("-->", i);
        if (end == std::string::npos) return "unterminated comment";
        i = end + 3;
        continue;
      }
      const bool closing = i + 1 < s.size() && s[i + 1] == '/';
      size_t j = i + (closing ? 2 : 1);
      const size_t name_start = j;
      while (j < s.size() && is_name_char(s[j])) ++j;
      const std::string name = s.substr(name_start, j - name_start);
      if (name.empty()) return "tag without a name at offset " + std::to_string(i);
      if (closing) {
        while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
        if (j >= s.size() || s[j] != '>') return "malformed closing tag </" + name;
        if (open.empty() || open.back() != name)
          return "closing </" + name + "> does not match <" + (open.empty() ? "" : open.back()) + ">";
        open.pop_back();
        i = j + 1;
        continue;
      }
      if (open.empty() && root_seen) return "second root element <" + name + ">";
      // Attributes.
      bool self_closing = false;
      while (true) {
        const size_t before = j;
        while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
        if (j >= s.size()) return "unterminated tag <" + name;
        if (s[j] == '>') break;
        if (s.compare(j, 2, "/>") == 0) {
          self_closing = true;
          ++j;
          break;
        }
        if (j == before) return "attributes of <" + name + "> not separated by whitespace";
        const size_t attr_start = j;
        while (j < s.size() && is_name_char(s[j])) ++j;
        if (j == attr_start || j >= s.size() || s[j] != '=') return "malformed attribute in <" + name + ">";
        const char quote = s[++j];
        if (quote != '"' && quote != '\'') return "unquoted attribute in <" + name + ">";
        ++j;
        while (j < s.size() && s[j] != quote) {
          if (s[j] == '<') return "'<' inside an attribute of <" + name + ">";
          if (s[j] == '&') {
            if (!reference_ok(s, j)) return "bad reference in an attribute of <" + name + ">";
          } else {
            ++j;
          }
        }
        if (j >= s.size()) return "unterminated attribute in <" + name + ">";
        ++j;
      }
      root_seen = true;
      if (!self_closing) open.push_back(name);
      i = j + 1;
      continue;
    }
    if (open.empty() && !std::isspace(static_cast<unsigned char>(c))) return "text outside the root element";
    if (c == '&') {
      if (!reference_ok(s, i)) return "bad reference in text at offset " + std::to_string(i);
      continue;
    }
    if (c == '>') return "raw '>' in text at offset " + std::to_string(i);
    if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t' && c != '\r')
      return "control character in text";
    ++i;
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  if (!root_seen) return "no root element";
  return "";
}

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + needle.size()))
    ++n;
  return n;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Text content of an element, as it appears between tags.
bool has_text(const std::string& svg, const std::string& content) {
  return contains(svg, ">" + content + "</text>");
}

// No NaN or infinity leaked into a number (a division by zero somewhere).
bool has_bad_number(const std::string& svg) {
  return std::regex_search(svg, std::regex("=\"[^\"]*(nan|inf)", std::regex::icase));
}

// The standalone-document basics every chart shares.
void expect_document(const std::string& svg, int width, int height) {
  EXPECT_EQ(xml_error(svg), "");
  EXPECT_FALSE(has_bad_number(svg));
  EXPECT_EQ(svg.compare(0, 5, "<?xml"), 0);
  EXPECT_TRUE(contains(svg, "xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_TRUE(contains(svg, "version=\"1.1\""));
  EXPECT_TRUE(contains(svg, "font-family=\"sans-serif\""));
  if (width > 0) {
    const std::string w = std::to_string(width), h = std::to_string(height);
    EXPECT_TRUE(
        contains(svg, "width=\"" + w + "\" height=\"" + h + "\" viewBox=\"0 0 " + w + " " + h + "\""));
  }
  EXPECT_TRUE(contains(svg, "fill=\"#ffffff\"/>"));  // white background
}

std::vector<svg::Series> two_series() {
  svg::Series a{"train <loss>", {}, {}}, b{"val & \"test\" 'loss'", {}, {}, true};
  for (int i = 0; i <= 50; ++i) {
    a.x.push_back(i * 10);
    a.y.push_back(3.0 * std::exp(-i / 10.0) + 1);
    b.x.push_back(i * 10);
    b.y.push_back(3.2 * std::exp(-i / 12.0) + 1.1);
  }
  return {a, b};
}

svg::HeatmapOptions heat_options() {
  svg::HeatmapOptions o;
  o.title = "Similarity <K> & V";
  o.x_label = "head";
  o.y_label = "head";
  o.colorbar_label = "cosine";
  return o;
}

std::vector<std::vector<double>> identity(size_t n) {
  std::vector<std::vector<double>> m(n, std::vector<double>(n, 0.0));
  for (size_t i = 0; i < n; ++i) m[i][i] = 1;
  return m;
}

}  // namespace

// ---- the checker itself -------------------------------------------------------------------------

TEST(SvgXmlChecker, RejectsMalformedDocuments) {
  EXPECT_EQ(xml_error("<?xml version=\"1.0\"?>\n<svg a=\"1\"><g><text>x &amp; y</text></g><rect/></svg>\n"),
            "");
  EXPECT_NE(xml_error("<svg><g></svg>"), "");
  EXPECT_NE(xml_error("<svg><g></text></g></svg>"), "");
  EXPECT_NE(xml_error("<svg><text>a < b</text></svg>"), "");
  EXPECT_NE(xml_error("<svg><text>a & b</text></svg>"), "");
  EXPECT_NE(xml_error("<svg a=\"x<y\"></svg>"), "");
  EXPECT_NE(xml_error("<svg a=1></svg>"), "");
  EXPECT_NE(xml_error("<svg></svg><svg></svg>"), "");
  EXPECT_NE(xml_error("<svg>"), "");
}

// ---- line charts --------------------------------------------------------------------------------

TEST(SvgLineChart, WellFormedWithTitlesAxesAndEscapedLegend) {
  svg::LineChartOptions o;
  o.title = "Loss <nats> & more";
  o.x_label = "step 'k'";
  o.y_label = "cross-entropy \"CE\"";
  const std::string s = svg::line_chart(two_series(), o);
  expect_document(s, 720, 420);
  EXPECT_TRUE(contains(s, "<title>Loss &lt;nats&gt; &amp; more</title>"));
  EXPECT_TRUE(has_text(s, "Loss &lt;nats&gt; &amp; more"));
  EXPECT_TRUE(has_text(s, "step &apos;k&apos;"));
  EXPECT_TRUE(has_text(s, "cross-entropy &quot;CE&quot;"));
  EXPECT_TRUE(has_text(s, "train &lt;loss&gt;"));
  EXPECT_TRUE(has_text(s, "val &amp; &quot;test&quot; &apos;loss&apos;"));
  EXPECT_FALSE(contains(s, "<loss>"));
  // Nice round ticks on both axes: x data 0..500 (step 100), y data 1.0..4.3 (step 0.5).
  for (const char* tick : {"0", "100", "500", "1.0", "1.5", "4.0", "4.5"})
    EXPECT_TRUE(has_text(s, tick)) << tick;
  EXPECT_FALSE(has_text(s, "4.3"));
  EXPECT_EQ(count(s, "<path "), 2u);
  EXPECT_TRUE(contains(s, "stroke-dasharray"));  // the dashed series and its legend sample
  EXPECT_TRUE(contains(s, "#0072B2"));           // Okabe-Ito
  EXPECT_TRUE(contains(s, "#D55E00"));
}

TEST(SvgLineChart, SingleSeriesHasNoLegend) {
  svg::LineChartOptions o;
  o.title = "one";
  const std::string s = svg::line_chart({svg::Series{"only label", {}, {1, 2, 3}}}, o);
  expect_document(s, 720, 420);
  EXPECT_FALSE(contains(s, "only label"));
  // Empty x means indices 0..n-1; few points get markers.
  EXPECT_EQ(count(s, "<circle "), 3u);
}

// The path's vertices are an affine map of the data: x and y each scale by one
// factor (y flipped, as SVG's y grows downwards), whatever the values.
TEST(SvgLineChart, PathVerticesAreAnAffineMapOfTheData) {
  svg::Series line{"line", {}, {}};
  const std::vector<double> xs = {0, 1, 3, 4, 10}, ys = {2.0, 2.5, 7.0, 3.0, 5.5};
  line.x = xs;
  line.y = ys;
  const std::string doc = svg::line_chart({line}, {});
  const size_t start = doc.find("<path d=\"M");
  ASSERT_NE(start, std::string::npos) << doc;
  std::string d = doc.substr(start + 9, doc.find('"', start + 9) - start - 9);  // "M x y L x y ..."
  for (char& c : d)
    if (c == 'M' || c == 'L') c = ' ';
  std::vector<std::pair<double, double>> points;
  std::istringstream in(d);
  double px, py;
  while (in >> px >> py) points.emplace_back(px, py);
  ASSERT_EQ(points.size(), xs.size()) << d;
  const double sx = (points[4].first - points[0].first) / (xs[4] - xs[0]);
  const double sy = (points[2].second - points[0].second) / (ys[2] - ys[0]);
  EXPECT_GT(sx, 0);
  EXPECT_LT(sy, 0);
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_NEAR(points[i].first, points[0].first + sx * (xs[i] - xs[0]), 0.02) << i;
    EXPECT_NEAR(points[i].second, points[0].second + sy * (ys[i] - ys[0]), 0.02) << i;
  }
}

TEST(SvgLineChart, NonFiniteValuesLeaveGaps) {
  std::vector<double> y;
  for (int i = 0; i < 60; ++i) y.push_back(std::sin(i * 0.1));
  y[20] = kNan;
  y[40] = kInf;
  std::vector<double> x;
  for (int i = 0; i < 60; ++i) x.push_back(i);
  x[50] = -kInf;  // a bad x is a gap too
  const std::string s = svg::line_chart({svg::Series{"s", x, y}}, {});
  expect_document(s, 720, 420);
  const std::smatch m = [&] {
    std::smatch r;
    std::regex_search(s, r, std::regex("<path d=\"([^\"]*)\""));
    return r;
  }();
  ASSERT_FALSE(m.empty());
  EXPECT_EQ(count(m[1].str(), "M"), 4u);  // four runs: 0-19, 21-39, 41-49, 51-59
  EXPECT_EQ(count(s, "<circle "), 0u);    // dense data, no isolated points: no markers

  // An isolated finite point between gaps still shows, as a marker.
  const std::string t = svg::line_chart({svg::Series{"s", {}, {1, kNan, 2, kNan, 3, 4}}}, {});
  EXPECT_EQ(xml_error(t), "");
  EXPECT_EQ(count(t, "<circle "), 4u);
}

TEST(SvgLineChart, LogAxisUsesDecadesAndSkipsNonPositive) {
  svg::LineChartOptions o;
  o.log_y = true;
  o.y_label = "perplexity";
  const std::string s = svg::line_chart({svg::Series{"ppl", {}, {1000, 300, 0, 100, -5, 30, 10, 3}}}, o);
  expect_document(s, 720, 420);
  for (const char* tick : {"1", "10", "100", "1000"}) EXPECT_TRUE(has_text(s, tick)) << tick;
  EXPECT_FALSE(has_text(s, "500"));  // decades, not linear ticks
  std::smatch m;
  ASSERT_TRUE(std::regex_search(s, m, std::regex("<path d=\"([^\"]*)\"")));
  EXPECT_EQ(count(m[1].str(), "M"), 2u);  // 1000,300 | 100 (isolated: marker) | 30,10,3

  // Small values within one decade get 2 and 5 labels as well.
  const std::string t = svg::line_chart({svg::Series{"p", {}, {0.15, 0.3, 0.9}}}, o);
  EXPECT_EQ(xml_error(t), "");
  for (const char* tick : {"0.1", "0.2", "0.5", "1"}) EXPECT_TRUE(has_text(t, tick)) << tick;

  // Nothing plottable on a log axis: axes and a note, not a crash.
  const std::string u = svg::line_chart({svg::Series{"p", {}, {0, -1, kNan}}}, o);
  expect_document(u, 720, 420);
  EXPECT_TRUE(has_text(u, "no finite data"));
}

TEST(SvgLineChart, ConstantDataAndSinglePointDoNotDivideByZero) {
  const std::string flat =
      svg::line_chart({svg::Series{"a", {}, {2, 2, 2, 2}}, svg::Series{"b", {}, {2, 2, 2, 2}}}, {});
  expect_document(flat, 720, 420);
  const std::string zero = svg::line_chart({svg::Series{"z", {}, {0, 0, 0}}}, {});
  expect_document(zero, 720, 420);
  const std::string point = svg::line_chart({svg::Series{"p", {5}, {7}}}, {});
  expect_document(point, 720, 420);
  EXPECT_EQ(count(point, "<circle "), 1u);
  svg::LineChartOptions log;
  log.log_y = true;
  expect_document(svg::line_chart({svg::Series{"l", {}, {1, 1, 1}}}, log), 720, 420);
}

TEST(SvgLineChart, LegendAvoidsData) {
  // Lines through all four corners: the legend must move right of the plot.
  svg::Series up{"up", {0, 1}, {0, 1}}, down{"down", {0, 1}, {1, 0}};
  const std::string s = svg::line_chart({up, down}, {});
  expect_document(s, 720, 420);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(s, m, std::regex("<rect x=\"([0-9.]+)\"[^>]*fill-opacity")));
  std::smatch axis;
  ASSERT_TRUE(std::regex_search(s, axis, std::regex("<path d=\"M[0-9.]+ [0-9.]+ L([0-9.]+)")));
  EXPECT_GT(std::stod(m[1].str()), std::stod(axis[1].str()));  // legend starts right of the data
}

TEST(SvgLineChart, BadInputThrows) {
  expect_one_line_error([] { svg::line_chart({}, {}); }, {"line_chart", "no series"});
  expect_one_line_error([] { svg::line_chart({svg::Series{"empty", {}, {}}}, {}); }, {"\"empty\"", "no y values"});
  expect_one_line_error(
      [] {
        svg::line_chart({svg::Series{"m", {1, 2, 3}, {1, 2}}}, {});
      },
      {"\"m\"", "3 x values but 2 y values"});
  svg::LineChartOptions tiny;
  tiny.width = 50;
  tiny.title = "T";
  expect_one_line_error([&] { svg::line_chart({svg::Series{"a", {}, {1}}}, tiny); }, {"too small", "\"T\""});
}

// ---- heatmaps -----------------------------------------------------------------------------------

TEST(SvgHeatmap, WellFormedWithColourBarLabelsAndEscapedTicks) {
  auto o = heat_options();
  o.x_ticks = {"a<b", "c&d", "e"};
  o.y_ticks = {"r'0", "r\"1", "r2"};
  const std::string s = svg::heatmap({{0, 0.5, 1}, {0.25, 0.75, 0.5}, {1, 0, 0.5}}, o);
  expect_document(s, 0, 0);
  EXPECT_TRUE(has_text(s, "Similarity &lt;K&gt; &amp; V"));
  EXPECT_TRUE(has_text(s, "head"));
  EXPECT_TRUE(has_text(s, "cosine"));
  EXPECT_TRUE(has_text(s, "a&lt;b"));
  EXPECT_TRUE(has_text(s, "c&amp;d"));
  EXPECT_TRUE(has_text(s, "r&apos;0"));
  EXPECT_TRUE(has_text(s, "r&quot;1"));
  EXPECT_EQ(count(s, "<linearGradient"), 1u);
  EXPECT_GE(count(s, "<stop "), 9u);
  EXPECT_TRUE(contains(s, "#440154"));  // viridis ends at the data range ends
  EXPECT_TRUE(contains(s, "#fde725"));
  for (const char* tick : {"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}) EXPECT_TRUE(has_text(s, tick)) << tick;
  // Explicit viewBox matches width/height.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      s, m, std::regex("width=\"([0-9]+)\" height=\"([0-9]+)\" viewBox=\"0 0 ([0-9]+) ([0-9]+)\"")));
  EXPECT_EQ(m[1].str(), m[3].str());
  EXPECT_EQ(m[2].str(), m[4].str());
  EXPECT_EQ(s, svg::heatmap({{0, 0.5, 1}, {0.25, 0.75, 0.5}, {1, 0, 0.5}}, o));  // deterministic
}

TEST(SvgHeatmap, NonFiniteCellsAreGrey) {
  auto m = identity(4);
  m[1][2] = kNan;
  m[3][0] = -kInf;
  const std::string s = svg::heatmap(m, heat_options());
  expect_document(s, 0, 0);
  EXPECT_EQ(count(s, "fill=\"#d9d9d9\""), 3u);  // two cells and the "NaN" key under the bar
  EXPECT_TRUE(has_text(s, "NaN"));
  const std::string clean = svg::heatmap(identity(4), heat_options());
  EXPECT_EQ(count(clean, "#d9d9d9"), 0u);
}

TEST(SvgHeatmap, ConstantValuesAndExplicitRange) {
  auto o = heat_options();
  const std::string flat = svg::heatmap({{3, 3}, {3, 3}}, o);
  expect_document(flat, 0, 0);
  o.vmin = o.vmax = 0.5;
  const std::string pinned = svg::heatmap({{0.5, 0.5}}, o);
  expect_document(pinned, 0, 0);

  // Values outside [vmin, vmax] take the end colours.
  o.vmin = 0;
  o.vmax = 1;
  const std::string s = svg::heatmap({{-3, 0, 1, 7}}, o);
  EXPECT_EQ(count(s, "fill=\"#440154\""), 2u);
  EXPECT_EQ(count(s, "fill=\"#fde725\""), 2u);

  const std::string empty_data = svg::heatmap({{kNan, kNan}}, heat_options());
  expect_document(empty_data, 0, 0);
}

TEST(SvgHeatmap, AnnotatesOnlyWhenCellsAreBigEnough) {
  auto o = heat_options();
  o.annotate = true;
  const std::string s = svg::heatmap({{0.123, -0.5}, {1, 0}}, o);
  EXPECT_EQ(xml_error(s), "");
  EXPECT_TRUE(has_text(s, "0.12"));
  EXPECT_TRUE(has_text(s, "-0.50"));
  EXPECT_TRUE(has_text(s, "1.00"));
  EXPECT_TRUE(has_text(s, "0.00"));
  const std::string big =
      svg::heatmap(std::vector<std::vector<double>>(100, std::vector<double>(100, 0.25)), o);
  EXPECT_EQ(xml_error(big), "");
  EXPECT_LT(count(big, "<text "), 60u);  // titles and tick labels only, not 10000 cell values
}

TEST(SvgHeatmap, FixedSize) {
  auto o = heat_options();
  o.width = 500;
  o.height = 400;
  const std::string s = svg::heatmap(identity(6), o);
  expect_document(s, 500, 400);
  o.width = 60;
  o.height = 60;
  expect_one_line_error([&] { svg::heatmap(identity(6), o); }, {"svg::heatmap", "too small"});
}

TEST(SvgHeatmap, BadInputThrows) {
  expect_one_line_error([] { svg::heatmap({}, {}); }, {"svg::heatmap", "empty"});
  expect_one_line_error([] { svg::heatmap({{}}, {}); }, {"svg::heatmap", "empty"});
  expect_one_line_error([] { svg::heatmap({{1, 2}, {3}}, {}); }, {"row 1 has 1 values but row 0 has 2"});
  svg::HeatmapOptions o;
  o.x_ticks = {"a", "b", "c"};
  expect_one_line_error([&] { svg::heatmap({{1, 2}}, o); }, {"2 columns", "x_ticks has 3"});
  o.x_ticks.clear();
  o.y_ticks = {"a", "b"};
  expect_one_line_error([&] { svg::heatmap({{1, 2}}, o); }, {"1 rows", "y_ticks has 2"});
  o.y_ticks.clear();
  o.vmin = 2;
  o.vmax = 1;
  expect_one_line_error([&] { svg::heatmap({{1, 2}}, o); }, {"vmin 2 is above vmax 1"});
  o.vmax = kNan;
  o.vmin = 5;
  expect_one_line_error([&] { svg::heatmap({{1, 2}}, o); }, {"vmin 5 is above vmax 2", "from the data"});
  o.vmin = kInf;
  expect_one_line_error([&] { svg::heatmap({{1, 2}}, o); }, {"vmin must be finite"});
}

// ---- heatmap grids ------------------------------------------------------------------------------

TEST(SvgHeatmapGrid, SmallMultiplesShareOneScaleAndColourBar) {
  std::vector<svg::Panel> panels;
  for (int layer = 0; layer < 3; ++layer)
    for (const char* kind : {"K", "V"}) {
      auto m = identity(4);
      m[0][1] = m[1][0] = 0.1 * layer;
      panels.push_back({std::string(kind) + " <layer " + std::to_string(layer) + ">", m});
    }
  panels[5].values[2][3] = kNan;
  const std::string s = svg::heatmap_grid(panels, 2, heat_options());
  expect_document(s, 0, 0);
  EXPECT_EQ(count(s, "<linearGradient"), 1u);
  EXPECT_EQ(count(s, "url(#dha-viridis)"), 1u);  // one colour bar
  EXPECT_TRUE(has_text(s, "K &lt;layer 0&gt;"));
  EXPECT_TRUE(has_text(s, "V &lt;layer 2&gt;"));
  // Shared scale: the diagonal 1s are the same top colour in every panel, 0s the bottom one.
  EXPECT_EQ(count(s, "fill=\"#fde725\""), 6u * 4u);
  EXPECT_TRUE(contains(s, "fill=\"#d9d9d9\""));
  // Same shape everywhere: row labels only left of the first column (3 panels x 4 rows).
  EXPECT_EQ(count(s, ">3</text>"), 3u + 2u);  // + column label "3" under the two bottom panels
  EXPECT_EQ(s, svg::heatmap_grid(panels, 2, heat_options()));

  // Panels of different shapes each get their own labels; a ragged last row is fine.
  std::vector<svg::Panel> mixed = {{"a", identity(2)}, {"b", identity(3)}, {"c", identity(5)}};
  const std::string t = svg::heatmap_grid(mixed, 2, {});
  expect_document(t, 0, 0);
  EXPECT_EQ(svg::heatmap_grid(mixed, 5, {}).empty(), false);  // more columns than panels
}

TEST(SvgHeatmapGrid, BadInputThrows) {
  expect_one_line_error([] { svg::heatmap_grid({}, 2, {}); }, {"svg::heatmap_grid", "no panels"});
  expect_one_line_error([] { svg::heatmap_grid({{"a", identity(2)}}, 0, {}); }, {"columns must be at least 1, got 0"});
  expect_one_line_error(
      [] {
        svg::heatmap_grid({{"a", identity(2)}, {"b", {{1, 2}, {3}}}}, 2, {});
      },
      {"panel 1 \"b\"", "row 1 has 1 values"});
  expect_one_line_error([] { svg::heatmap_grid({{"a", identity(2)}, {"b", {}}}, 2, {}); }, {"panel 1 \"b\"", "empty"});
  svg::HeatmapOptions o;
  o.x_ticks = {"h0", "h1"};
  expect_one_line_error(
      [&] {
        svg::heatmap_grid({{"a", identity(2)}, {"b", identity(3)}}, 2, o);
      },
      {"panel 1 \"b\"", "3 columns but x_ticks has 2"});
}

// ---- bar charts ---------------------------------------------------------------------------------

TEST(SvgBarChart, GroupedBarsWithValueLabelsAndLegend) {
  svg::BarChartOptions o;
  o.title = "Redundant heads <per layer>";
  o.x_label = "layer";
  o.y_label = "heads";
  const std::vector<std::string> cats = {"L0", "L1", "L2", "L3", "L4"};
  const std::vector<svg::BarSeries> series = {{"K heads", {2, 3, 1, 4, 2}}, {"V & heads", {1, 2, 2, 3, 0}}};
  const std::string s = svg::bar_chart(cats, series, o);
  expect_document(s, 720, 380);
  EXPECT_TRUE(has_text(s, "Redundant heads &lt;per layer&gt;"));
  for (const auto& c : cats) EXPECT_TRUE(has_text(s, c)) << c;
  EXPECT_TRUE(has_text(s, "K heads"));
  EXPECT_TRUE(has_text(s, "V &amp; heads"));
  EXPECT_TRUE(has_text(s, "layer"));
  EXPECT_TRUE(has_text(s, "heads"));
  // 5 bars + 1 legend swatch per series.
  EXPECT_EQ(count(s, "fill=\"#0072B2\""), 6u);
  EXPECT_EQ(count(s, "fill=\"#D55E00\""), 6u);
  // Integer values are labelled as integers (tick "4" and value label "4" for L3).
  EXPECT_GE(count(s, ">4</text>"), 2u);
  EXPECT_FALSE(contains(s, ">4.0</text>"));
  EXPECT_EQ(s, svg::bar_chart(cats, series, o));

  const std::string single = svg::bar_chart({"a", "b"}, {{"only", {0.25, 0.5}}}, {});
  expect_document(single, 720, 380);
  EXPECT_FALSE(has_text(single, "only"));  // no legend for one series
  EXPECT_TRUE(has_text(single, "0.25"));
}

TEST(SvgBarChart, NanBarsNegativeValuesAndFlatData) {
  const std::string s = svg::bar_chart({"a", "b", "c"}, {{"x", {1, kNan, -0.5}}}, {});
  expect_document(s, 720, 380);
  EXPECT_EQ(count(s, "fill=\"#0072B2\""), 2u);  // the NaN bar is skipped
  EXPECT_TRUE(has_text(s, "-0.5"));

  expect_document(svg::bar_chart({"a", "b"}, {{"zero", {0, 0}}, {"zero2", {0, 0}}}, {}), 720, 380);
  expect_document(svg::bar_chart({"a"}, {{"nan", {kNan}}}, {}), 720, 380);

  svg::BarChartOptions o;
  o.y_max = 10;
  const std::string capped = svg::bar_chart({"a", "b"}, {{"x", {4, 12}}}, o);
  expect_document(capped, 720, 380);
  EXPECT_TRUE(has_text(capped, "10"));   // top tick at y_max
  EXPECT_TRUE(has_text(capped, "12"));   // the clipped bar keeps its true value label
  EXPECT_FALSE(has_text(capped, "14"));  // no tick above y_max
}

TEST(SvgBarChart, ManyCategoriesStayWellFormed) {
  std::vector<std::string> cats;
  svg::BarSeries a{"a", {}}, b{"b", {}};
  for (int i = 0; i < 40; ++i) {
    cats.push_back("feed_forward.w" + std::to_string(i));
    a.values.push_back(i * 0.37);
    b.values.push_back(40 - i);
  }
  const std::string s = svg::bar_chart(cats, {a, b}, {});
  expect_document(s, 720, 380);
  EXPECT_TRUE(contains(s, "rotate(-45"));  // long category names are slanted
}

TEST(SvgBarChart, BadInputThrows) {
  expect_one_line_error([] { svg::bar_chart({}, {{"a", {}}}, {}); }, {"bar_chart", "no categories"});
  expect_one_line_error([] { svg::bar_chart({"a"}, {}, {}); }, {"bar_chart", "no series"});
  expect_one_line_error([] { svg::bar_chart({"a", "b"}, {{"s", {1}}}, {}); }, {"\"s\"", "1 values for 2 categories"});
  svg::BarChartOptions o;
  o.y_max = -1;
  expect_one_line_error([&] { svg::bar_chart({"a"}, {{"s", {1}}}, o); }, {"y_max -1"});
  o.y_max = kInf;
  expect_one_line_error([&] { svg::bar_chart({"a"}, {{"s", {1}}}, o); }, {"y_max must be finite"});
}

// ---- output -------------------------------------------------------------------------------------

TEST(SvgWrite, WritesAtomicallyAndRejectsEmpty) {
  dha::test::TempDir dir;
  const std::string path = dir.file("chart.svg");
  const std::string s = svg::bar_chart({"a"}, {{"s", {1}}}, {});
  svg::write(path, s);
  EXPECT_EQ(dha::io::read_file(path), s);
  svg::write(path, svg::heatmap(identity(2), {}));  // overwrite in place
  EXPECT_EQ(dha::io::read_file(path), svg::heatmap(identity(2), {}));
  expect_one_line_error([&] { svg::write(path, ""); }, {"svg::write", path});
  expect_one_line_error([&] { svg::write(dir.file("missing/dir/chart.svg"), s); }, {"missing/dir"});
}

TEST(SvgText, ControlCharactersAreDropped) {
  svg::LineChartOptions o;
  o.title = std::string("bell\x07 tab\tnew\nline");
  const std::string s = svg::line_chart({svg::Series{"a", {}, {1, 2}}}, o);
  EXPECT_EQ(xml_error(s), "");
  EXPECT_TRUE(has_text(s, "bell tab new line"));
}

// ---- dha-plot -----------------------------------------------------------------------------------

TEST(DhaPlot, OneLinePerRunWithTheGivenAxisLabels) {
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("a.jsonl"), "{\"tokens\": 0, \"eval_nll\": 3.5}\n{\"tokens\": 10, \"loss\": 3}\n"
                                                  "{\"tokens\": 20, \"eval_nll\": 3.1}\n");
  dha::io::write_file_atomic(dir.file("b.jsonl"), "{\"tokens\": 5, \"eval_nll\": 4.0}\n{\"tokens\": 25, \"eval_nll\": 3.3}\n");
  const auto run = dha::test::run_tool("dha-plot --run dha=" + dir.file("a.jsonl") + " --run gqa=" + dir.file("b.jsonl") +
                                           " --x-label 'total tokens' --out " + dir.file("c.svg"),
                                       true);
  ASSERT_EQ(run.code, 0) << run.out;
  const std::string s = dha::io::read_file(dir.file("c.svg"));
  EXPECT_EQ(xml_error(s), "");
  EXPECT_TRUE(has_text(s, "total tokens"));
  EXPECT_TRUE(has_text(s, "dha"));
  EXPECT_TRUE(has_text(s, "gqa"));
  dha::test::expect_one_error_line("dha-plot --run " + dir.file("a.jsonl") + " --out " + dir.file("d.svg"),
                                   "expected LABEL=PATH");
  dha::io::write_file_atomic(dir.file("bad.jsonl"), "{\"tokens\": 0}\nnot json\n");
  dha::test::expect_one_error_line("dha-plot --run x=" + dir.file("bad.jsonl") + " --out " + dir.file("d.svg"),
                                   "a line is not JSON");
  EXPECT_FALSE(fs::exists(dir.file("d.svg")));
}
