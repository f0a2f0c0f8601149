// dha-convert: MHA/GQA checkpoint -> DHA (search, fusion, collapse, export), the
// GQA baselines or Shared Attention (alone or with head sharing), with
// report.json and pictures.
#include <cstdio>

#include "cli_common.h"
#include "dha/convert.h"
#include "dha/error.h"
#include "dha/io/load.h"

int main(int argc, char** argv) {
  CLI::App app{"Convert a LLaMA checkpoint to Decoupled-Head Attention at a KV head budget", "dha-convert"};
  std::string model_path, tokenizer_path, out_dir, recipe_path;
  bool force = false;
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer (default: the one in or beside the model)");
  app.add_option("--out", out_dir, "output directory: the model, tokenizer, recipe.json, report.json, SVGs");
  app.add_option("--config", recipe_path, "JSON recipe (configs/*.json); command-line options override it");
  app.add_flag("--force", force, "replace an existing --out");
  bool plan_only = false;
  int world_size = 0;
  app.add_flag("--plan-only", plan_only,
               "print the memory plan of every stage for this model and recipe, then exit (reads only the headers; "
               "plan for GPUs with --device cuda on any machine)");
  app.add_option("--world-size", world_size, "with --plan-only: processes the run would use (default: $WORLD_SIZE or 1)");
  dha::cli::RecipeOptions recipe_keys(app);
  recipe_keys.add_fields(dha::convert_recipe_fields(), dha::ConvertOptions{});
  return dha::cli::run(app, argc, argv, [&] {
    const nlohmann::json recipe = recipe_keys.resolve(recipe_path);
    const dha::ConvertOptions options =
        dha::convert_options_from_json(recipe, recipe_path.empty() ? "options" : recipe_path);
    if (plan_only) {
      const dha::ConvertPlan plan = dha::plan_conversion(options, dha::io::load_model_config(model_path), model_path);
      if (!plan.budget_note.empty()) std::printf("budget: %s\n", plan.budget_note.c_str());
      if (world_size <= 0) world_size = dha::RankEnvironment::from_env().world_size;
      for (const auto& p : dha::conversion_memory_plans(options, plan, dha::io::load_storage_dtype(model_path),
                                                        dha::io::loads_file_pages(model_path),
                                                        options.device == "cuda", world_size))
        std::printf("%s", p.table().c_str());
      return 0;
    }
    const dha::ConvertSummary s = dha::run_convert(model_path, tokenizer_path, out_dir, force, options);
    if (s.plan.analyze_only) {
      std::printf("%s: attention-map similarity of consecutive layers -> %s\n", model_path.c_str(), out_dir.c_str());
      std::printf("layers  cosine  JS (nats)\n");
      for (const auto& c : s.consecutive_similarity)
        std::printf("%2lld-%-3lld  %.4f  %.4f\n", static_cast<long long>(c.first), static_cast<long long>(c.second),
                    c.cosine, c.js);
      return 0;
    }
    const std::string& method = s.plan.method_name();
    if (s.plan.uses_budget)
      std::printf("%s: %s at budget %.4g -> %s\n", model_path.c_str(), method.c_str(), options.budget, out_dir.c_str());
    else
      std::printf("%s: %s -> %s\n", model_path.c_str(), method.c_str(), out_dir.c_str());
    if (!s.plan.budget_note.empty()) std::printf("budget             %s\n", s.plan.budget_note.c_str());
    if (!s.shared_spans.empty()) std::printf("shared spans       %s\n", s.shared_spans.c_str());
    std::printf("KV bytes/token     %lld -> %lld\n", static_cast<long long>(s.kv_bytes_before),
                static_cast<long long>(s.kv_bytes_after));
    std::printf("held-out NLL       source %.4f", s.source_nll);
    if (s.after_sharing_nll) std::printf(", after sharing %.4f", *s.after_sharing_nll);
    if (s.after_fusion_nll) std::printf(", after fusion %.4f", *s.after_fusion_nll);
    std::printf(", converted %.4f\n", s.converted_nll);
    std::printf("wall time          %.1f s\n", s.wall_seconds);
    return 0;
  });
}
