// The conversion's report.json and pictures, built from the stages' results.
#include <filesystem>

#include "dha/export.h"
#include "dha/svg.h"
#include "stages.h"

namespace dha::convert {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<std::vector<double>> to_matrix(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<std::vector<double>> out(c.size(0), std::vector<double>(c.size(1)));
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) out[i][j] = c[i][j].item<double>();
  return out;
}

void write_model_pictures(const std::string& dir, const ModelConfig& source, const ModelConfig& result,
                    const std::vector<torch::Tensor>& costs, const std::vector<FusionRecord>& records,
                    const std::string& method) {
  if (!costs.empty()) {
    // Similarity = 1 - cost, one panel per pool: rows are layers, columns K and V (the paper's Fig. 2).
    std::vector<svg::Panel> panels;
    const auto pools = all_pools(source.n_layers);
    for (size_t p = 0; p < pools.size(); ++p) {
      if (costs[p].size(0) == 0) {
        // No keys (the layer shares attention): a blank cell keeps the K/V columns aligned.
        panels.push_back({"layer " + std::to_string(pools[p].layer) + " keys: shared attention", {{NAN}}});
        continue;
      }
      std::vector<std::vector<double>> similarity = to_matrix(1.0 - costs[p]);
      panels.push_back({"layer " + std::to_string(pools[p].layer) + (pools[p].value ? " values" : " keys"), similarity});
    }
    svg::HeatmapOptions options;
    options.title = "Head similarity per layer (1 - search cost), " + method;
    options.x_label = "head";
    options.y_label = "head";
    options.colorbar_label = "similarity";
    svg::write(dir + "/head_similarity.svg", svg::heatmap_grid(panels, 2, options));
  }
  std::vector<std::string> layers;
  svg::BarSeries k{"K heads", {}}, v{"V heads", {}};
  for (int64_t l = 0; l < result.n_layers; ++l) {
    layers.push_back("L" + std::to_string(l));
    k.values.push_back(static_cast<double>(result.layout.n_k_heads(l)));
    v.values.push_back(static_cast<double>(result.layout.n_v_heads(l)));
  }
  svg::BarChartOptions bars;
  bars.title = "K/V heads per layer after " + method + " (of " + std::to_string(source.n_heads) + " query heads)";
  bars.x_label = "layer";
  bars.y_label = "heads";
  bars.y_max = static_cast<double>(source.n_heads);
  svg::write(dir + "/head_allocation.svg", svg::bar_chart(layers, {k, v}, bars));
  if (!records.empty()) {
    svg::Series fusion{"fusion loss L_F", {}, {}}, target{"target t", {}, {}, true}, lm{"LM loss", {}, {}};
    svg::Series l1{"lambda1", {}, {}}, l2{"lambda2", {}, {}};
    for (const auto& r : records) {
      const double x = static_cast<double>(r.step);
      fusion.x.push_back(x), fusion.y.push_back(r.fusion_loss);
      target.x.push_back(x), target.y.push_back(r.target);
      lm.x.push_back(x), lm.y.push_back(r.lm_loss);
      l1.x.push_back(x), l1.y.push_back(r.lambda1);
      l2.x.push_back(x), l2.y.push_back(r.lambda2);
    }
    svg::LineChartOptions curves;
    curves.title = "Fusion: L_F against its target, and the LM loss";
    curves.x_label = "fusion step";
    curves.y_label = "loss";
    svg::write(dir + "/fusion_loss.svg", svg::line_chart({fusion, target, lm}, curves));
    curves.title = "Fusion: Lagrange multipliers (gradient ascent)";
    curves.y_label = "lambda";
    svg::write(dir + "/fusion_lambda.svg", svg::line_chart({l1, l2}, curves));
  }
}

json layout_report(const ModelConfig& c) {
  json layers = json::array();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    json layer = {{"layer", l}, {"k_heads", c.layout.n_k_heads(l)}, {"v_heads", c.layout.n_v_heads(l)},
                  {"k_map", c.layout.k_map[l]}, {"v_map", c.layout.v_map[l]}};
    if (c.layout.shares_attention(l)) layer["attention_from"] = c.layout.attention_source(l);
    layers.push_back(layer);
  }
  return layers;
}

json similarity_report(const AttentionSimilarity& s) {
  json consecutive = json::array();
  for (int64_t l = 1; l < s.cosine.size(0); ++l)
    consecutive.push_back({{"layers", {l - 1, l}}, {"cosine", s.cosine[l - 1][l].item<double>()},
                           {"js", s.js[l - 1][l].item<double>()}});
  return {{"cosine", to_matrix(s.cosine)}, {"js", to_matrix(s.js)}, {"rows", s.rows}, {"consecutive", consecutive}};
}

void write_similarity_pictures(const std::string& dir, const AttentionSimilarity& s, const std::string& model) {
  std::vector<std::string> ticks;
  for (int64_t l = 0; l < s.cosine.size(0); ++l) ticks.push_back("L" + std::to_string(l));
  svg::HeatmapOptions options;
  options.x_label = "layer";
  options.y_label = "layer";
  options.x_ticks = options.y_ticks = ticks;
  options.annotate = true;
  options.title = "Attention-map similarity across layers (mean cosine of rows), " + model;
  options.colorbar_label = "cosine";
  svg::write(dir + "/attention_similarity.svg", svg::heatmap(to_matrix(s.cosine), options));
  options.title = "Attention-map divergence across layers (mean Jensen-Shannon, nats), " + model;
  options.colorbar_label = "JS divergence";
  options.vmin = 0.0;
  svg::write(dir + "/attention_js.svg", svg::heatmap(to_matrix(s.js), options));
}

json quality_json(const Quality& q) { return {{"lm_loss", q.lm_loss}, {"heldout_nll", q.heldout_nll}}; }

json fusion_json(const FusionStageResult& f, const Grouping& grouping, int64_t n_layers) {
  json groups = json::array();
  const auto pools = all_pools(n_layers);
  for (size_t p = 0; p < pools.size(); ++p)
    for (size_t g = 0; g < grouping[p].size(); ++g)
      groups.push_back({{"pool", pools[p].name()}, {"members", grouping[p][g]}, {"fusion_loss", f.group_losses[p][g]},
                        {"fused", f.group_losses[p][g] < f.fused_threshold}});
  json trajectory = json::array();
  for (const auto& r : f.records)
    trajectory.push_back({{"step", r.step}, {"lm_loss", r.lm_loss}, {"fusion_loss", r.fusion_loss},
                          {"target", r.target}, {"lambda1", r.lambda1}, {"lambda2", r.lambda2}});
  return {{"initial_fusion_loss", f.initial_loss}, {"final_fusion_loss", f.final_loss}, {"groups", groups},
          {"trajectory", trajectory}};
}

}  // namespace

json conversion_report(const ConvertContext& ctx, const ConvertResults& r, double wall_seconds) {
  const ConvertPlan& plan = ctx.plan;
  json report = {{"method", plan.analyze_only ? std::string("analyze-attention") : plan.method_name()},
                 {"source", ctx.model_path}};
  if (plan.uses_budget) report["budget"] = ctx.options.budget;
  if (plan.shares_heads) report["target_heads"] = plan.target_heads;
  if (plan.shares_heads && plan.requested_heads != plan.target_heads) {
    report["requested_heads"] = plan.requested_heads;
    report["budget_note"] = plan.budget_note;
  }
  if (r.similarity) report["attention_similarity"] = similarity_report(*r.similarity);
  json stages = json::array();
  for (const auto& t : ctx.timings) {
    json stage = {{"stage", t.stage},
                  {"seconds", t.seconds},
                  {"peak_rss_mb", t.peak_rss_mb},
                  {"peak_tensor_bytes", t.peak_tensor_bytes}};
    if (t.device_peak_bytes > 0) stage["device_peak_bytes"] = t.device_peak_bytes;
    if (t.plan) stage["memory_plan"] = t.plan->to_json();
    stages.push_back(stage);
  }
  report["stages"] = stages;
  report["wall_seconds"] = wall_seconds;
  if (plan.analyze_only) return report;

  const ModelConfig& after = r.merge->collapsed.config;
  if (!r.sharing->spans.empty()) report["shared_spans"] = format_spans(r.sharing->spans);
  report["source_layout"] = layout_report(plan.source);
  report["layout"] = layout_report(after);
  report["kv_bytes_per_token"] = {{"before", plan.source.kv_bytes_per_token(2)}, {"after", after.kv_bytes_per_token(2)}};
  report["head_budget"] = {{"before", plan.source.head_budget()}, {"after", after.head_budget()}};
  report["before_search"] = quality_json(*r.before);
  if (r.sharing->after) report["after_sharing"] = quality_json(*r.sharing->after);
  if (r.merge->fusion) report["after_fusion"] = quality_json(r.merge->fusion->after);
  report["after_collapse"] = quality_json(*r.after);
  report["heldout_docs"] = ctx.heldout_docs();
  report["search"] = r.search->figures;
  report["aligned_before_fusion"] = plan.align;
  // The tokens each stage read (all ranks together): what the conversion cost
  // in data, to add to continued pre-training's when methods are compared.
  const int64_t search_tokens = r.search->figures.value("tokens", int64_t{0});
  const int64_t fusion_tokens = r.merge->fusion ? r.merge->fusion->tokens : 0;
  const int64_t alignment_tokens = r.merge->alignment_tokens;
  report["tokens"] = {{"search", search_tokens},
                      {"alignment", alignment_tokens},
                      {"fusion", fusion_tokens},
                      {"total", search_tokens + alignment_tokens + fusion_tokens}};
  report["fusion"] = r.merge->fusion ? fusion_json(*r.merge->fusion, r.search->grouping, plan.source.n_layers)
                                     : json::object();
  report["export"] = {{"format", plan.export_format->name},
                      {"max_abs_logit_diff", r.exported->max_abs_logit_diff},
                      {"layout", layout_report(r.exported->config)}};
  report["recipe"] = convert_options_to_json(ctx.options);
  return report;
}

ConvertSummary conversion_summary(const ConvertContext& ctx, const ConvertResults& r, nlohmann::json report,
                                  const std::string& out_dir, double wall_seconds) {
  ConvertSummary s;
  s.report = std::move(report);
  s.out_dir = out_dir;
  s.plan = ctx.plan;
  s.wall_seconds = wall_seconds;
  if (r.similarity)
    for (int64_t l = 1; l < r.similarity->cosine.size(0); ++l)
      s.consecutive_similarity.push_back(
          {l - 1, l, r.similarity->cosine[l - 1][l].item<double>(), r.similarity->js[l - 1][l].item<double>()});
  if (ctx.plan.analyze_only) return s;
  s.shared_spans = format_spans(r.sharing->spans);
  s.kv_bytes_before = ctx.plan.source.kv_bytes_per_token(2);
  s.kv_bytes_after = r.merge->collapsed.config.kv_bytes_per_token(2);
  s.source_nll = r.before->heldout_nll;
  if (r.sharing->after) s.after_sharing_nll = r.sharing->after->heldout_nll;
  if (r.merge->fusion) s.after_fusion_nll = r.merge->fusion->after.heldout_nll;
  s.converted_nll = r.after->heldout_nll;
  return s;
}

void write_pictures(const ConvertContext& ctx, const ConvertResults& r) {
  const std::string dir = ctx.staged.path();
  if (r.similarity) write_similarity_pictures(dir, *r.similarity, fs::path(ctx.model_path).filename().string());
  if (ctx.plan.analyze_only) return;
  const std::vector<FusionRecord> no_records;
  write_model_pictures(dir, ctx.plan.source, r.merge->collapsed.config, r.search->costs,
                       r.merge->fusion ? r.merge->fusion->records : no_records, ctx.plan.method_name());
}

}  // namespace dha::convert
