// dha-plot: curves of several dha-train runs (metrics.jsonl) in one SVG, e.g.
// the held-out NLL of a DHA and a GQA model against training tokens.
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/svg.h"

int main(int argc, char** argv) {
  CLI::App app{"Plot a metric of several dha-train runs against tokens (one SVG)", "dha-plot"};
  std::vector<std::string> runs;
  std::string out, key = "eval_nll", title = "held-out NLL during training", y_label = "nats per token",
              x_label = "training tokens";
  app.add_option("--run", runs, "LABEL=PATH/metrics.jsonl, repeatable")->required();
  app.add_option("--key", key, "metric: eval_nll (evaluations) or any per-step key such as loss")->capture_default_str();
  app.add_option("--title", title, "chart title")->capture_default_str();
  app.add_option("--x-label", x_label, "x axis label")->capture_default_str();
  app.add_option("--y-label", y_label, "y axis label")->capture_default_str();
  app.add_option("--out", out, "SVG file")->required();
  return dha::cli::run(app, argc, argv, [&] {
    std::vector<dha::svg::Series> series;
    for (const auto& run : runs) {
      const size_t eq = run.find('=');
      if (eq == std::string::npos) dha::fail("--run \"", run, "\": expected LABEL=PATH");
      dha::svg::Series s;
      s.label = run.substr(0, eq);
      const std::string path = run.substr(eq + 1);
      std::istringstream in(dha::io::read_file(path));
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception&) {
          dha::fail(path, ": a line is not JSON");
        }
        if (j.contains(key)) s.x.push_back(j.value("tokens", 0.0)), s.y.push_back(j[key].get<double>());
      }
      if (s.x.empty()) dha::fail(path, ": no \"", key, "\" values");
      series.push_back(s);
    }
    dha::svg::LineChartOptions options;
    options.title = title;
    options.x_label = x_label;
    options.y_label = y_label;
    dha::svg::write(out, dha::svg::line_chart(series, options));
    std::printf("%s\n", out.c_str());
    return 0;
  });
}
