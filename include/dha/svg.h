// Dependency-free SVG 1.1 charts for research reports: line charts, heatmaps (single and
// small multiples sharing one colour bar) and grouped bar charts. Same input, same bytes.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace dha::svg {

// Every chart is a complete standalone SVG document (XML prolog, explicit width/height/viewBox,
// white background, sans-serif text). All user text is XML-escaped. Bad input (nothing to plot,
// mismatched sizes, impossible ranges) throws dha::Error naming the chart and the offending item.
// Every struct member has a default ({}), so partial aggregate initialisation such as
// LineChartOptions{"title", "x", "y"} stays free of -Wmissing-field-initializers.

// --- line charts -------------------------------------------------------------------------------

// One line. `x` may be empty: the points are then plotted at x = 0, 1, ..., y.size()-1.
// NaN/inf points (and, on a log axis, y <= 0) are skipped and leave a gap in the line.
struct Series {
  std::string label{};
  std::vector<double> x{};
  std::vector<double> y{};
  bool dashed = false;
};

struct LineChartOptions {
  std::string title{}, x_label{}, y_label{};
  bool log_y = false;  // decades on the y axis; non-positive y values become gaps
  int width = 720, height = 420;
};

// Lines in the Okabe-Ito palette; a legend appears when there is more than one series, placed
// in the plot corner that covers no data, or right of the plot when every corner would.
std::string line_chart(const std::vector<Series>& series, const LineChartOptions& options);

// --- heatmaps ----------------------------------------------------------------------------------

struct HeatmapOptions {
  std::string title{}, x_label{}, y_label{};
  double vmin = NAN, vmax = NAN;                  // colour range; NaN: from the finite data
  std::vector<std::string> x_ticks{}, y_ticks{};  // optional labels per column / row (else indices)
  bool annotate = false;  // print values in cells (format %.2f) when cells are big enough
  std::string colorbar_label{};
  int width = 0, height = 0;  // whole image in pixels; 0: sized from the matrix dimensions
};

// One matrix (rows x cols, row 0 at the top) with a colour bar (viridis, interpolated from 10
// anchor colours). Non-finite cells are drawn light grey and listed as "NaN" under the bar.
std::string heatmap(const std::vector<std::vector<double>>& values, const HeatmapOptions& options);

// Several matrices as small multiples in a grid (e.g. per-layer key and value head-similarity
// matrices: 2 columns "K"/"V" x L rows), sharing one colour scale and one colour bar. Panels fill
// the grid row by row, `columns` per row. When all panels have the same shape, tick labels are
// drawn only on the outer edges of the grid.
struct Panel {
  std::string title{};
  std::vector<std::vector<double>> values{};
};
std::string heatmap_grid(const std::vector<Panel>& panels, int columns, const HeatmapOptions& options);

// --- bar charts --------------------------------------------------------------------------------

struct BarSeries {
  std::string label{};
  std::vector<double> values{};  // one per category; NaN/inf: no bar
};

struct BarChartOptions {
  std::string title{}, x_label{}, y_label{};
  int width = 720, height = 380;
  double y_max = NAN;  // top of the y axis; NaN: a round number above the data
};

// Grouped bars: one group per category (e.g. "L0".."L4"), one bar per series (e.g. "K heads",
// "V heads"), value labels on top of the bars, a legend above the plot for several series.
// Bars start at zero; negative values hang below it.
std::string bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                      const BarChartOptions& options);

// --- output ------------------------------------------------------------------------------------

// Writes atomically (temporary sibling + rename), so a report never holds half a chart.
void write(const std::string& path, const std::string& svg);

}  // namespace dha::svg
