// dha-convert: MHA/GQA checkpoint -> DHA (search, fusion, collapse, export), the
// GQA baselines or Shared Attention (alone or with head sharing), with
// report.json and pictures.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/convert.h"
#include "dha/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Convert a LLaMA checkpoint to Decoupled-Head Attention at a KV head budget", "dha-convert"};
  std::string model_path, tokenizer_path, out_dir, recipe_path;
  bool force = false;
  dha::ConvertOptions d;  // defaults, shown in --help
  app.add_option("--model", model_path, "llama2.c .bin, HF LLaMA directory or dha directory")->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer (default: the one in or beside the model)");
  app.add_option("--out", out_dir, "output directory: the model, tokenizer, recipe.json, report.json, SVGs")->required();
  app.add_option("--config", recipe_path, "JSON recipe (configs/*.json); command-line options override it");
  app.add_flag("--force", force, "replace an existing --out");
  dha::cli::RecipeOptions recipe_keys(app);
  recipe_keys.add("--budget", "budget", d.budget, "kept K+V heads over 2*L*H query heads, in (0, 1]");
  recipe_keys.add("--method", "method", d.method,
                  "dha | gqa (mean pooling) | aligned-gqa (Procrustes, then merge) | shared-attention");
  recipe_keys.add("--share-spans", "share_spans", d.share_spans,
                  "layers A-B,C-D reuse the attention of the layer before each span (shared-attention: "
                  "default chosen for --budget; dha/gqa: applied first, the budget counts the removed keys)");
  recipe_keys.add_flag("--analyze-attention", "analyze_attention", true,
                       "only measure cross-layer attention-map similarity: report.json and heatmaps, no model");
  recipe_keys.add("--calib", "calib", d.calib, "calibration text files (search, fusion, statistics)");
  recipe_keys.add("--eval-text", "eval_text", d.eval_text, "held-out text (default: the last --heldout of each calibration file)");
  recipe_keys.add("--heldout", "heldout", d.heldout, "share of each calibration file held out for evaluation");
  recipe_keys.add("--eval-docs", "eval_docs", d.eval_docs, "held-out documents evaluated (0: all)");
  recipe_keys.add("--seed", "seed", d.seed, "seed");
  recipe_keys.add("--device", "device", d.device, "auto | cpu | cuda");
  recipe_keys.add("--batch", "batch", d.batch, "sequences per step");
  recipe_keys.add("--seq-len", "seq_len", d.seq_len, "sequence length (0: the model's context)");
  recipe_keys.add("--measure", "measure", d.measure, "search cost: weight | activation | fusion");
  recipe_keys.add("--search-steps", "search_steps", d.search_steps, "fusion measure: steps of whole-pool fusion");
  recipe_keys.add("--search-average", "search_average", d.search_average, "fusion measure: average costs over the last N steps (0: all)");
  recipe_keys.add("--max-group-size", "max_group_size", d.max_group_size, "cap on heads per group (0: none)");
  recipe_keys.add_flag("--uniform", "uniform", true, "same K and V head count in every layer (ablation: w/o adaptive allocation)");
  recipe_keys.add("--rounds", "rounds", d.rounds, "progressive search in N rounds");
  recipe_keys.add_flag("--no-fusion", "fusion", false, "mean-pool the searched groups (ablation: w/o linear fusion)");
  recipe_keys.add("--fusion-steps", "fusion_steps", d.fusion_steps, "steps of fusion training");
  recipe_keys.add("--lr", "lr", d.lr, "learning rate of the model weights during fusion");
  recipe_keys.add("--omega-lr", "omega_lr", d.omega_lr, "learning rate of the fusion operators");
  recipe_keys.add("--lambda-lr", "lambda_lr", d.lambda_lr, "ascent rate of the Lagrange multipliers");
  recipe_keys.add("--target-fraction", "target_fraction", d.target_fraction, "share of fusion steps over which the target falls to 0");
  recipe_keys.add_flag("--per-channel", "per_channel", true, "per-channel fusion operators (n x n x d_h)");
  recipe_keys.add("--distill-weight", "distill_weight", d.distill_weight, "weight of KL(source || fusion model) next to the LM loss");
  recipe_keys.add("--export", "export", d.export_format, "dha | gqa | mha");
  return dha::cli::run(app, argc, argv, [&] {
    const nlohmann::json recipe = recipe_keys.resolve(recipe_path);
    const dha::ConvertOptions options =
        dha::convert_options_from_json(recipe, recipe_path.empty() ? "options" : recipe_path);
    const dha::ConvertSummary s = dha::run_convert(model_path, tokenizer_path, out_dir, force, options);
    const auto& r = s.report;
    if (options.analyze_attention) {
      std::printf("%s: attention-map similarity of consecutive layers -> %s\n", model_path.c_str(), out_dir.c_str());
      std::printf("layers  cosine  JS (nats)\n");
      for (const auto& c : r["attention_similarity"]["consecutive"])
        std::printf("%2lld-%-3lld  %.4f  %.4f\n", c["layers"][0].get<long long>(), c["layers"][1].get<long long>(),
                    c["cosine"].get<double>(), c["js"].get<double>());
      return 0;
    }
    if (r.contains("budget"))
      std::printf("%s: %s at budget %.4g -> %s\n", model_path.c_str(), options.method.c_str(), options.budget,
                  out_dir.c_str());
    else
      std::printf("%s: %s -> %s\n", model_path.c_str(), options.method.c_str(), out_dir.c_str());
    if (r.contains("shared_spans"))
      std::printf("shared spans       %s\n", r["shared_spans"].get<std::string>().c_str());
    std::printf("KV bytes/token     %lld -> %lld\n", r["kv_bytes_per_token"]["before"].get<long long>(),
                r["kv_bytes_per_token"]["after"].get<long long>());
    std::printf("held-out NLL       source %.4f", r["before_search"]["heldout_nll"].get<double>());
    if (r.contains("after_sharing") && options.method != "shared-attention")
      std::printf(", after sharing %.4f", r["after_sharing"]["heldout_nll"].get<double>());
    if (r.contains("after_fusion")) std::printf(", after fusion %.4f", r["after_fusion"]["heldout_nll"].get<double>());
    std::printf(", converted %.4f\n", r["after_collapse"]["heldout_nll"].get<double>());
    std::printf("wall time          %.1f s\n", r["wall_seconds"].get<double>());
    return 0;
  });
}
