// The conversion pipeline: inputs checked up front, then search, fusion,
// collapse, export, report and pictures, written into a staged directory.
#include "dha/convert.h"

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>

#include "dha/align.h"
#include "dha/corpus.h"
#include "dha/distributed.h"
#include "dha/error.h"
#include "json_fields.h"
#include "dha/eval.h"
#include "dha/export.h"
#include "dha/fusion.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/log.h"
#include "dha/search.h"
#include "dha/shared_attention.h"
#include "dha/svg.h"
#include "dha/train.h"

namespace dha {
namespace fs = std::filesystem;
using detail::read_key;
using nlohmann::json;

namespace {

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux reports KiB
}

// Wall time and peak memory of each stage, for the report.
class StageClock {
 public:
  void start(const std::string& name) {
    name_ = name;
    begin_ = std::chrono::steady_clock::now();
    log::info("stage: ", name);
  }
  void stop(json& stages) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
    stages.push_back({{"stage", name_}, {"seconds", seconds}, {"peak_rss_mb", peak_rss_mb()}});
  }

 private:
  std::string name_;
  std::chrono::steady_clock::time_point begin_;
};

struct Measurement {
  double lm_loss = 0.0;   // on a fixed calibration batch
  double heldout_nll = 0.0;
};

Measurement measure(Llama& model, const torch::Tensor& batch, const std::vector<std::vector<int32_t>>& heldout,
                    int64_t max_docs) {
  torch::NoGradGuard no_grad;
  model->eval();
  Measurement m;
  const int64_t t = batch.size(1) - 1;
  m.lm_loss = lm_loss(model->forward(batch.narrow(1, 0, t)), batch.narrow(1, 1, t)).item<double>();
  m.heldout_nll = evaluate_token_docs(model, heldout, max_docs, false).mean_nll;
  return m;
}

json measurement_json(const Measurement& m) { return {{"lm_loss", m.lm_loss}, {"heldout_nll", m.heldout_nll}}; }

// Groups of round r+1 index the groups of round r: expressed over the source heads.
Grouping compose(const Grouping& first, const Grouping& second) {
  Grouping out(first.size());
  for (size_t p = 0; p < first.size(); ++p)
    for (const auto& group : second[p]) {
      std::vector<int64_t> members;
      for (int64_t g : group) members.insert(members.end(), first[p][g].begin(), first[p][g].end());
      std::sort(members.begin(), members.end());
      out[p].push_back(members);
    }
  for (auto& pool : out) std::sort(pool.begin(), pool.end());
  return out;
}

TrainConfig stage_config(const ConvertOptions& o, int64_t steps, int64_t seq_len, const std::string& device) {
  TrainConfig c;
  c.steps = steps;
  c.micro_batch = o.batch;
  c.seq_len = seq_len;
  c.lr = o.lr;
  c.warmup = 0.0;
  c.min_lr_ratio = 1.0;  // constant rate: the target schedule is what moves
  c.grad_clip = 1.0;
  c.seed = o.seed;
  c.device = device;
  c.keep_checkpoints = 1;
  c.log_every = 1;
  c.eval_every = 0;
  return c;
}

std::vector<torch::Tensor> search_costs(const ConvertOptions& o, const Checkpoint& current, SequenceSampler& sampler,
                                        int64_t seq_len, const torch::Device& device, Distributed& dist,
                                        const std::string& work_dir, json& search_report) {
  const std::vector<PoolId> pools = all_pools(current.config.n_layers);
  std::vector<torch::Tensor> costs;
  if (o.measure == "weight") {
    for (const auto& p : pools) costs.push_back(weight_cost(pool_weights(current, p)));
  } else if (o.measure == "activation") {
    Llama model = make_model(current, "search");
    model->to(device);
    const auto acts = collect_activations(model, sampler.batch({}, 0, o.batch).narrow(1, 0, seq_len).to(device));
    for (const auto& p : pools) costs.push_back(activation_cost(p.value ? acts[p.layer].values : acts[p.layer].keys));
  } else {
    // Whole-pool fusion: every pool's heads pulled together for a few steps;
    // heads that can share cheaply converge fast and end up close.
    Grouping whole(pools.size());
    for (size_t p = 0; p < pools.size(); ++p) {
      const int64_t n = pool_weights(current, pools[p]).size(0);
      if (n == 0) continue;  // no keys: a layer that shares attention
      std::vector<int64_t> all(n);
      for (int64_t h = 0; h < n; ++h) all[h] = h;
      whole[p].push_back(all);
    }
    Llama model = make_model(current, "search");
    model->to(device);
    FusionOptions fo;
    fo.omega_lr = o.omega_lr;
    fo.lambda_lr = o.lambda_lr;
    fo.target_fraction = o.target_fraction;
    FusionTask task(model, whole, o.search_steps, fo, std::nullopt);
    // Averaging over the whole run (the default) rewards heads that converge
    // fast, not only those that end close: exact copies then cost 0.
    task.keep_last_effective(o.search_average > 0 ? std::min(o.search_average, o.search_steps) : o.search_steps);
    TrainRun run;
    run.out_dir = work_dir;
    run.label = "search";
    fs::create_directories(work_dir);
    train(task, sampler, stage_config(o, o.search_steps, seq_len, o.device), dist, run);
    for (size_t p = 0; p < pools.size(); ++p) {
      if (whole[p].empty()) {
        costs.push_back(torch::zeros({0, 0}, torch::kFloat64));
        continue;
      }
      const torch::Tensor original = pool_weights(current, pools[p]).to(torch::kFloat64).reshape({-1, current.config.head_dim * current.config.dim});
      const torch::Tensor norms = original.pow(2).sum(1);
      torch::Tensor cost = torch::zeros({original.size(0), original.size(0)}, torch::kFloat64);
      for (const auto& snapshot : task.last_effective()) {
        const torch::Tensor w = snapshot[p].reshape({original.size(0), -1});
        const torch::Tensor d = torch::cdist(w.unsqueeze(0), w.unsqueeze(0)).squeeze(0).pow(2);
        cost += d / (norms.unsqueeze(0) + norms.unsqueeze(1));
      }
      cost /= static_cast<double>(task.last_effective().size());
      cost.fill_diagonal_(0.0);
      costs.push_back(cost);
    }
    search_report["fusion_measure_final_loss"] = task.fusion_loss();
  }
  return costs;
}

std::vector<std::vector<double>> to_matrix(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<std::vector<double>> out(c.size(0), std::vector<double>(c.size(1)));
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) out[i][j] = c[i][j].item<double>();
  return out;
}

void write_pictures(const std::string& dir, const ModelConfig& source, const ModelConfig& result,
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

// Calibration batches for the attention-similarity analysis: a few fixed
// ones, at most kAnalysisSeqLen long, since the analysis holds L x [H, T, T]
// float64 probabilities of one sequence.
constexpr int64_t kAnalysisSeqLen = 256;
std::vector<torch::Tensor> analysis_batches(SequenceSampler& sampler, int64_t batch, int64_t seq_len,
                                            const torch::Device& device) {
  std::vector<torch::Tensor> out;
  const int64_t t = std::min(seq_len, kAnalysisSeqLen);
  for (int64_t i = 0; i < 4; ++i) out.push_back(sampler.batch({}, i * batch, batch).narrow(1, 0, t).to(device));
  return out;
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

}  // namespace

ConvertOptions convert_options_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": a conversion recipe must be a JSON object");
  ConvertOptions o;
  std::set<std::string> seen;
  try {
    read_key(j, "method", o.method, seen);
    read_key(j, "budget", o.budget, seen);
    read_key(j, "share_spans", o.share_spans, seen);
    read_key(j, "analyze_attention", o.analyze_attention, seen);
    read_key(j, "calib", o.calib, seen);
    read_key(j, "eval_text", o.eval_text, seen);
    read_key(j, "heldout", o.heldout, seen);
    read_key(j, "eval_docs", o.eval_docs, seen);
    read_key(j, "seed", o.seed, seen);
    read_key(j, "device", o.device, seen);
    read_key(j, "batch", o.batch, seen);
    read_key(j, "seq_len", o.seq_len, seen);
    read_key(j, "measure", o.measure, seen);
    read_key(j, "search_steps", o.search_steps, seen);
    read_key(j, "search_average", o.search_average, seen);
    read_key(j, "max_group_size", o.max_group_size, seen);
    read_key(j, "uniform", o.uniform, seen);
    read_key(j, "rounds", o.rounds, seen);
    read_key(j, "fusion", o.fusion, seen);
    read_key(j, "fusion_steps", o.fusion_steps, seen);
    read_key(j, "lr", o.lr, seen);
    read_key(j, "omega_lr", o.omega_lr, seen);
    read_key(j, "lambda_lr", o.lambda_lr, seen);
    read_key(j, "target_fraction", o.target_fraction, seen);
    read_key(j, "per_channel", o.per_channel, seen);
    read_key(j, "distill_weight", o.distill_weight, seen);
    read_key(j, "export", o.export_format, seen);
  } catch (const json::exception& e) {
    fail(where, ": a value has the wrong type (", e.what(), ")");
  }
  detail::reject_unknown_keys(j, seen, where);
  return o;
}

json convert_options_to_json(const ConvertOptions& o) {
  return {{"method", o.method},         {"budget", o.budget},
          {"share_spans", o.share_spans}, {"analyze_attention", o.analyze_attention},
          {"calib", o.calib},           {"eval_text", o.eval_text},
          {"heldout", o.heldout},       {"eval_docs", o.eval_docs},
          {"seed", o.seed},             {"device", o.device},
          {"batch", o.batch},           {"seq_len", o.seq_len},
          {"measure", o.measure},       {"search_steps", o.search_steps},
          {"search_average", o.search_average}, {"max_group_size", o.max_group_size},
          {"uniform", o.uniform},       {"rounds", o.rounds},
          {"fusion", o.fusion},         {"fusion_steps", o.fusion_steps},
          {"lr", o.lr},                 {"omega_lr", o.omega_lr},
          {"lambda_lr", o.lambda_lr},   {"target_fraction", o.target_fraction},
          {"per_channel", o.per_channel}, {"distill_weight", o.distill_weight},
          {"export", o.export_format}};
}

ConvertSummary run_convert(const std::string& model_path, const std::string& tokenizer_path,
                           const std::string& out_dir, bool force, const ConvertOptions& o) {
  const auto wall_start = std::chrono::steady_clock::now();
  // ---- every check before any work --------------------------------------------
  if (o.method != "dha" && o.method != "gqa" && o.method != "aligned-gqa" && o.method != "shared-attention")
    fail("--method \"", o.method, "\" is not one of dha, gqa, aligned-gqa, shared-attention");
  const bool shared_only = o.method == "shared-attention";
  if (o.method == "aligned-gqa" && !o.share_spans.empty())
    fail("--share-spans combines with --method dha, gqa or shared-attention, not aligned-gqa");
  if (o.measure != "weight" && o.measure != "activation" && o.measure != "fusion")
    fail("--measure \"", o.measure, "\" is not one of weight, activation, fusion");
  if (!(o.budget > 0.0 && o.budget <= 1.0)) fail("--budget ", o.budget, " must be in (0, 1]");
  const ExportFormat export_format = parse_export_format(o.export_format);
  if ((shared_only || !o.share_spans.empty()) && export_format != ExportFormat::kDha)
    fail("--export ", o.export_format, ": layers that share attention can only be written in the dha format (--export dha)");
  if (out_dir.empty()) fail("--out DIR is required");
  if (fs::exists(out_dir) && !force) fail(out_dir, ": already exists (pass --force to overwrite)");
  if (o.calib.empty()) fail("no calibration text: pass --calib FILE (e.g. ../shared/data/text/tinystories_train_sample.txt)");
  for (const auto& file : o.calib) {
    if (!fs::is_regular_file(file)) fail(file, ": calibration file not found");
    if (fs::file_size(file) == 0) fail(file, ": calibration file is empty");
  }
  if (!o.eval_text.empty() && !fs::is_regular_file(o.eval_text)) fail(o.eval_text, ": no such file");
  if (o.batch < 1 || o.fusion_steps < 0 || o.search_steps < 1 || o.rounds < 1)
    fail("batch, search steps and rounds must be positive and fusion steps not negative");

  io::LoadedModel loaded = io::load_model(model_path, tokenizer_path, /*need_tokenizer=*/true);
  const ModelConfig source_config = loaded.model->config();
  if (!source_config.layout.shared_spans().empty()) {  // a model that already shares attention
    if (o.method == "aligned-gqa")
      fail(model_path, ": layers share attention (", describe_layout(source_config),
           "); aligned-gqa needs every layer's queries and keys");
    if (export_format != ExportFormat::kDha)
      fail(model_path, ": layers share attention, which only the dha format can hold (--export dha)");
  }
  std::vector<LayerSpan> spans;
  if (!o.share_spans.empty()) spans = parse_share_spans(o.share_spans, source_config.n_layers);
  // Head sharing runs on the model with its spans applied: the budget counts
  // their removed key heads, and their key pools take no heads.
  ModelConfig shared_config = source_config;
  shared_config.layout = with_shared_spans(source_config.layout, spans);
  int64_t target = 0;
  if (shared_only) {
    // Fails when no choice of spans reaches the budget; that does not depend on the similarities.
    if (spans.empty() && !o.analyze_attention)
      choose_share_spans(source_config, torch::zeros({source_config.n_layers, source_config.n_layers}), o.budget);
  } else if (!o.analyze_attention) {
    target = budget_heads(shared_config, o.budget);
    const int64_t n_pools = pools_with_heads(shared_config);
    if (o.method != "dha" && target % n_pools != 0)
      fail("--method ", o.method, " puts the same number of heads in every pool: budget ", o.budget, " gives ", target,
           " heads over ", n_pools, " pools, not a whole number");
    if (o.method != "dha") contiguous_grouping(shared_config, target / n_pools);  // divisibility check
    if (o.uniform && target % n_pools != 0)
      fail("--uniform: budget ", o.budget, " gives ", target, " heads over ", n_pools, " pools, not a whole number");
  }
  const int64_t seq_len = o.seq_len > 0 ? std::min(o.seq_len, source_config.max_seq_len) : source_config.max_seq_len;

  // Calibration tokens: the documents of each file; its last `heldout` share is
  // held out unless --eval-text is given.
  std::vector<int32_t> calib_tokens;
  std::vector<std::vector<int32_t>> heldout;
  for (const auto& file : o.calib) {
    const auto docs = split_documents(io::read_file(file));
    if (docs.empty()) fail(file, ": calibration file holds no text");
    const size_t split = o.eval_text.empty() ? heldout_start(docs.size(), o.heldout) : docs.size();
    for (size_t d = 0; d < docs.size(); ++d) {
      auto ids = loaded.tokenizer->encode(docs[d], true, false);
      if (d < split) calib_tokens.insert(calib_tokens.end(), ids.begin(), ids.end());
      else heldout.push_back(std::move(ids));
    }
  }
  if (!o.eval_text.empty())
    for (const auto& doc : split_documents(io::read_file(o.eval_text)))
      heldout.push_back(loaded.tokenizer->encode(doc, true, false));
  if (heldout.empty()) fail("no held-out documents: raise --heldout or pass --eval-text");
  TokenDataset calib(std::move(calib_tokens), source_config.vocab_size, "calibration text");
  SequenceSampler sampler(calib, seq_len, o.seed);

  const torch::Device device = resolve_device(o.device, 0);
  std::unique_ptr<Distributed> dist = Distributed::from_env(device, std::chrono::seconds(300));
  io::StagedDirectory staged(out_dir, force);
  json report = {{"method", o.method}, {"source", model_path}, {"budget", o.budget}, {"target_heads", target}};
  json stages = json::array();
  StageClock clock;
  Llama source = loaded.model;
  source->to(device);
  const torch::Tensor probe = sampler.batch({}, 0, o.batch).to(device);

  std::optional<AttentionSimilarity> similarity;
  if (o.analyze_attention || shared_only || !spans.empty()) {
    clock.start("attention similarity");
    similarity = measure_attention_similarity(source, analysis_batches(sampler, o.batch, seq_len, device));
    report["attention_similarity"] = similarity_report(*similarity);
    write_similarity_pictures(staged.path(), *similarity, fs::path(model_path).filename().string());
    clock.stop(stages);
  }
  if (o.analyze_attention) {
    report.erase("budget");
    report.erase("target_heads");
    report["method"] = "analyze-attention";
    report["stages"] = stages;
    io::write_file_atomic(staged.file("report.json"), report.dump(2) + "\n");
    staged.commit();
    return {report, out_dir};
  }
  if (shared_only && spans.empty()) spans = choose_share_spans(source_config, similarity->cosine, o.budget);
  if (!spans.empty()) report["shared_spans"] = format_spans(spans);
  if (shared_only) {
    report.erase("target_heads");
    if (!o.share_spans.empty()) report.erase("budget");  // the spans were given: no budget was used
  }

  clock.start("measure source");
  const Measurement before = measure(source, probe, heldout, o.eval_docs);
  clock.stop(stages);

  // ---- stage 1: grouping ---------------------------------------------------------
  Checkpoint source_ck = source->to_checkpoint(torch::kFloat32);
  source_ck.storage_dtype = loaded.checkpoint.storage_dtype;
  std::optional<Measurement> after_sharing;  // before head sharing, when both are combined
  if (!spans.empty()) {
    clock.start("share attention");
    source_ck = share_attention(source_ck, spans);
    if (!shared_only) {
      Llama shared = make_model(source_ck, "shared attention");
      shared->to(device);
      after_sharing = measure(shared, probe, heldout, o.eval_docs);
    }
    clock.stop(stages);
  }
  clock.start("search");
  Grouping grouping;
  std::vector<torch::Tensor> costs;
  json search_report = json::object();
  if (shared_only) {
    // Nothing to search: the spans are the conversion.
  } else if (o.method == "dha") {
    const int64_t have = shared_config.layout.kv_heads();
    Checkpoint current = source_ck;
    grouping = identity_grouping(shared_config);
    for (int64_t round = 1; round <= o.rounds; ++round) {
      // Progressive: the head count falls linearly to the target over the rounds.
      const int64_t round_target = have - (have - target) * round / o.rounds;
      const auto round_costs = search_costs(o, current, sampler, seq_len, device, *dist,
                                            staged.file("search-round" + std::to_string(round)), search_report);
      if (round == 1) costs = round_costs;
      GroupingOptions go;
      go.target_total = round_target;
      go.max_group_size = o.max_group_size;
      go.uniform = o.uniform;
      const Grouping step = group_heads(round_costs, go);
      grouping = compose(grouping, step);
      current = collapse_groups(current, step);
      fs::remove_all(staged.file("search-round" + std::to_string(round)) + "/checkpoints");
    }
  } else {
    grouping = contiguous_grouping(shared_config, target / pools_with_heads(shared_config));
  }
  if (!shared_only) search_report["groups"] = grouping;
  clock.stop(stages);

  // ---- stage 2 and 3: fusion (or pooling) and collapse -----------------------------
  Checkpoint collapsed;
  Measurement after_fusion;
  bool have_fusion_stage = false;
  std::vector<FusionRecord> records;
  json fusion_report = json::object();
  if (shared_only) {
    collapsed = source_ck;
  } else if (o.method == "dha" && o.fusion && o.fusion_steps > 0) {
    clock.start("fusion");
    Llama model = make_model(source_ck, "fusion");
    model->to(device);
    std::optional<Llama> teacher;
    if (o.distill_weight > 0) teacher = source;
    FusionOptions fo;
    fo.per_channel = o.per_channel;
    fo.omega_lr = o.omega_lr;
    fo.lambda_lr = o.lambda_lr;
    fo.target_fraction = o.target_fraction;
    fo.distill_weight = o.distill_weight;
    FusionTask task(model, grouping, o.fusion_steps, fo, teacher);
    TrainRun run;
    run.out_dir = staged.file("fusion");
    run.label = "fusion";
    fs::create_directories(run.out_dir);
    train(task, sampler, stage_config(o, o.fusion_steps, seq_len, o.device), *dist, run);
    fs::remove_all(run.out_dir + "/checkpoints");
    task.before_eval();
    after_fusion = measure(task.model(), probe, heldout, o.eval_docs);
    have_fusion_stage = true;
    records = task.records();
    fusion_report["initial_fusion_loss"] = task.initial_fusion_loss();
    fusion_report["final_fusion_loss"] = task.fusion_loss();
    const auto losses = task.group_losses();
    json groups = json::array();
    const auto pools = all_pools(source_config.n_layers);
    for (size_t p = 0; p < pools.size(); ++p)
      for (size_t g = 0; g < grouping[p].size(); ++g)
        groups.push_back({{"pool", pools[p].name()}, {"members", grouping[p][g]}, {"fusion_loss", losses[p][g]},
                          {"fused", losses[p][g] < fo.fused_threshold}});
    fusion_report["groups"] = groups;
    json trajectory = json::array();
    for (const auto& r : records)
      trajectory.push_back({{"step", r.step}, {"lm_loss", r.lm_loss}, {"fusion_loss", r.fusion_loss},
                            {"target", r.target}, {"lambda1", r.lambda1}, {"lambda2", r.lambda2}});
    fusion_report["trajectory"] = trajectory;
    collapsed = task.collapse();
    clock.stop(stages);
  } else if (o.method == "aligned-gqa") {
    clock.start("align and merge");
    const auto acts = collect_activations(source, probe.narrow(1, 0, seq_len));
    collapsed = collapse_groups(align_groups(source_ck, grouping, acts), grouping);
    clock.stop(stages);
  } else {
    clock.start("mean pooling");
    collapsed = collapse_groups(source_ck, grouping);
    clock.stop(stages);
  }

  clock.start("measure result");
  Llama result = make_model(collapsed, "collapsed");
  result->to(device);
  const Measurement after = measure(result, probe, heldout, o.eval_docs);
  clock.stop(stages);

  // ---- export ----------------------------------------------------------------------
  clock.start("export");
  Checkpoint exported = export_checkpoint(collapsed, export_format);
  exported.storage_dtype = torch::kFloat32;
  double export_diff = 0.0;
  {
    torch::NoGradGuard no_grad;
    Llama reloaded = make_model(exported, "export");
    reloaded->to(device);
    const int64_t t = std::min<int64_t>(seq_len, 64);
    export_diff = (reloaded->forward(probe.narrow(1, 0, t)) - result->forward(probe.narrow(1, 0, t)))
                      .abs().max().item<double>();
  }
  io::DirSaveOptions save;
  save.format = io::DirFormat::kDha;
  const std::string tokenizer_file = loaded.tokenizer->path();
  save.extra_files.push_back(
      {tokenizer_file, fs::path(tokenizer_file).extension() == ".model" ? "tokenizer.model" : "tokenizer.bin"});
  io::write_hf_files(staged.path(), exported, save);
  clock.stop(stages);

  report["source_layout"] = layout_report(source_config);
  report["layout"] = layout_report(collapsed.config);
  report["kv_bytes_per_token"] = {{"before", source_config.kv_bytes_per_token(2)},
                                  {"after", collapsed.config.kv_bytes_per_token(2)}};
  report["head_budget"] = {{"before", source_config.head_budget()}, {"after", collapsed.config.head_budget()}};
  report["before_search"] = measurement_json(before);
  if (after_sharing) report["after_sharing"] = measurement_json(*after_sharing);
  if (have_fusion_stage) report["after_fusion"] = measurement_json(after_fusion);
  report["after_collapse"] = measurement_json(after);
  report["heldout_docs"] = std::min<int64_t>(o.eval_docs > 0 ? o.eval_docs : heldout.size(), heldout.size());
  report["search"] = search_report;
  report["fusion"] = fusion_report;
  report["export"] = {{"format", export_format_name(export_format)}, {"max_abs_logit_diff", export_diff},
                      {"layout", layout_report(exported.config)}};
  report["stages"] = stages;
  report["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  report["recipe"] = convert_options_to_json(o);
  io::write_file_atomic(staged.file("recipe.json"), convert_options_to_json(o).dump(2) + "\n");
  io::write_file_atomic(staged.file("report.json"), report.dump(2) + "\n");
  write_pictures(staged.path(), source_config, collapsed.config, costs, records, o.method);
  staged.commit();
  return {report, out_dir};
}

}  // namespace dha
