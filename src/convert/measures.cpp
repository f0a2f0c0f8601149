// The table of search measures: how stage 1 scores the heads of every pool.
#include "dha/search_measures.h"

#include <filesystem>
#include <functional>

#include "dha/align.h"
#include "dha/error.h"
#include "dha/fusion.h"
#include "dha/search.h"

namespace dha {
namespace {

std::vector<torch::Tensor> weight_costs(const MeasureInputs& in) {
  std::vector<torch::Tensor> costs;
  for (const auto& p : all_pools(in.model.config.n_layers)) costs.push_back(weight_cost(pool_weights(in.model, p)));
  return costs;
}

// One calibration batch through the model, and a cost per pool from its heads'
// activations as each layer computes them: cost(keys or values [n, N, d_h], is_value).
std::vector<torch::Tensor> costs_of_activations(
    const MeasureInputs& in, const std::function<torch::Tensor(const torch::Tensor&, bool)>& cost) {
  Llama model = make_model_over(in.model, "search");
  model->to(in.device);
  const torch::Tensor tokens = in.sampler.batch({}, 0, in.options.batch).narrow(1, 0, in.seq_len).to(in.device);
  const std::vector<PoolId> pools = all_pools(in.model.config.n_layers);
  std::vector<torch::Tensor> costs(pools.size());
  for_each_layer_activations(model, tokens, [&](int64_t layer, const LayerActivations& acts) {
    for (size_t p = 0; p < pools.size(); ++p)
      if (pools[p].layer == layer) costs[p] = cost(pools[p].value ? acts.values : acts.keys, pools[p].value);
  });
  in.report["tokens"] = in.report.value("tokens", int64_t{0}) + tokens.numel();  // forward only
  return costs;
}

std::vector<torch::Tensor> activation_costs(const MeasureInputs& in) {
  return costs_of_activations(in, [](const torch::Tensor& a, bool) { return activation_cost(a); });
}

// Heads alike up to a rotation are alike here: the distance left after the best
// rotation between each pair, of the kinds align-then-fuse applies afterwards
// (any orthogonal one for values, RoPE-plane rotations for keys).
std::vector<torch::Tensor> aligned_activation_costs(const MeasureInputs& in) {
  return costs_of_activations(
      in, [](const torch::Tensor& a, bool is_value) { return aligned_activation_cost(a, /*rope_planes=*/!is_value); });
}

// Whole-pool fusion: every pool's heads pulled together for a few steps; heads
// that can share cheaply converge fast and end up close.
std::vector<torch::Tensor> fusion_costs(const MeasureInputs& in) {
  const ConvertOptions& options = in.options;
  const std::vector<PoolId> pools = all_pools(in.model.config.n_layers);
  Grouping whole(pools.size());
  for (size_t p = 0; p < pools.size(); ++p) {
    const int64_t n = pool_weights(in.model, pools[p]).size(0);
    if (n == 0) continue;  // no keys: a layer that shares attention
    std::vector<int64_t> all(n);
    for (int64_t h = 0; h < n; ++h) all[h] = h;
    whole[p].push_back(all);
  }
  const TrainWeights weights = parse_train_weights(options.train_weights);
  Llama model = make_model_over(in.model, "search", [&](const std::string& name) { return weight_trains(weights, name); });
  model->to(in.device);
  FusionOptions fusion = conversion_fusion_options(options);
  fusion.per_channel = false;   // the search scores heads with scalar operators,
  fusion.distill_weight = 0.0;  // on the LM loss alone
  FusionTask task(model, whole, options.search_steps, fusion, std::nullopt);
  std::vector<std::optional<FusionCostAccumulator>> accumulators(pools.size());
  for (size_t p = 0; p < pools.size(); ++p)
    if (!whole[p].empty()) accumulators[p].emplace(pool_weights(in.model, pools[p]));
  // Averaging over the whole run (the default) rewards heads that converge
  // fast, not only those that end close: exact copies then cost 0.
  task.observe_last_steps(
      options.search_average > 0 ? std::min(options.search_average, options.search_steps) : options.search_steps,
      [&](const std::vector<torch::Tensor>& effective) {
        for (size_t p = 0; p < pools.size(); ++p)
          if (accumulators[p]) accumulators[p]->add(effective[p]);
      });
  TrainRun run;
  run.out_dir = in.work_dir;
  run.label = "search";
  run.final_checkpoint = false;  // only the periodic ones a recipe asks for
  std::filesystem::create_directories(in.work_dir);
  const TrainResult trained =
      train(task, in.sampler, conversion_train_config(options, options.search_steps, in.seq_len), in.dist, run);
  // Every round's training tokens (all ranks'), so that comparisons count them.
  in.report["tokens"] = in.report.value("tokens", int64_t{0}) + trained.tokens;
  std::vector<torch::Tensor> costs;
  for (size_t p = 0; p < pools.size(); ++p)
    costs.push_back(accumulators[p] ? accumulators[p]->cost() : torch::zeros({0, 0}, torch::kFloat64));
  in.report["fusion_measure_final_loss"] = task.fusion_loss();
  return costs;
}

}  // namespace

const std::vector<SearchMeasure>& search_measures() {
  static const std::vector<SearchMeasure> measures = {
      {"weight", "1 - linear CKA of the heads' weight slices (no data, instant)", false, weight_costs},
      {"activation", "distance of the heads' keys (before RoPE) and values on a calibration batch", false,
       activation_costs},
      {"aligned-activation",
       "activation distance after the best rotation between each pair (full for values, in the RoPE planes for keys)",
       false, aligned_activation_costs},
      {"fusion", "short whole-pool fusion training; heads that converge together fast are cheap (default)", true,
       fusion_costs},
  };
  return measures;
}

const SearchMeasure& find_search_measure(const std::string& name) {
  return find_row(search_measures(), name, "--measure");
}

std::string search_measures_help() { return rows_help(search_measures()); }

}  // namespace dha
