// The loss curve of a training run.
#include "loss_curve.h"

#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/io/atomic_file.h"
#include "dha/svg.h"

namespace dha::train_detail {

void write_loss_curve(const std::string& metrics_path, const std::string& svg_path,
                      const std::string& title) {
  svg::Series loss{"training loss", {}, {}}, held{"held-out NLL", {}, {}};
  std::istringstream in(io::read_file(metrics_path));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    const double tokens = j.value("tokens", 0.0);
    if (j.value("event", "") == "eval") {
      held.x.push_back(tokens), held.y.push_back(j.value("eval_nll", 0.0));
    } else if (j.contains("loss")) {
      loss.x.push_back(tokens), loss.y.push_back(j.value("loss", 0.0));
    }
  }
  std::vector<svg::Series> series;
  if (!loss.x.empty()) series.push_back(loss);
  if (!held.x.empty()) series.push_back(held);
  if (series.empty()) return;
  svg::LineChartOptions options;
  options.title = title;
  options.x_label = "tokens";
  options.y_label = "nats per token";
  svg::write(svg_path, svg::line_chart(series, options));
}

}  // namespace dha::train_detail
