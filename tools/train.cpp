// dha-train: continued pre-training (or pre-training from scratch, or
// distillation) with exact resume and data parallelism over c10d.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/io/load.h"
#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/train_job.h"

int main(int argc, char** argv) {
  CLI::App app{"Train a LLaMA/DHA model on dha-tokenize shards. Data-parallel under torchrun/Slurm "
               "(env:// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).",
               "dha-train"};
  dha::TrainJob job;
  std::string recipe_path;
  app.add_option("--model", job.model_path, "model to continue: " + dha::io::checkpoint_formats_help());
  app.add_option("--from-scratch", job.from_scratch_path, "instead: a JSON model description to pre-train");
  app.add_option("--tokenizer", job.tokenizer_path, "tokenizer (default: the model's, else the data's)");
  std::vector<std::string> data_args;
  app.add_option("--data", data_args,
                 "token data: a dha-tokenize output directory, or a directory of llm.c .bin shards or Megatron-LM "
                 ".bin/.idx datasets; repeat as DIR=WEIGHT for a weighted mixture (weights normalised, each "
                 "source drawn in its share, in its own seeded order)");
  app.add_option("--out", job.out_dir, "output directory: checkpoints/, metrics.jsonl, loss.svg, model/");
  app.add_option("--config", recipe_path, "JSON recipe (keys as the options below, with underscores)");
  app.add_option("--teacher", job.teacher_path, "distil from this model: adds KL(teacher || student)");
  app.add_option("--eval-text", job.eval_text, "held-out text (dha-eval protocol); default: the data's heldout split");
  app.add_flag("--resume", job.resume, "continue from the newest checkpoint in --out");
  app.add_flag("--force", job.force, "replace an existing --out");
  app.add_option("--dtype", job.dtype, "model/ on disk: " + dha::output_dtypes_help())->capture_default_str();
  app.add_flag("--plan-only", job.plan_only,
               "print the memory plan per rank for this model and recipe, then exit (reads only the model's headers; "
               "plan for GPUs with --device cuda on any machine)");
  app.add_option("--world-size", job.plan_world_size, "with --plan-only: processes the run would use (default: $WORLD_SIZE or 1)");
  dha::cli::RecipeOptions recipe_keys(app);
  recipe_keys.add_fields(dha::train_recipe_fields(), dha::TrainConfig{});
  return dha::cli::run(app, argc, argv, [&] {
    const nlohmann::json recipe = recipe_keys.resolve(recipe_path);
    job.config = dha::train_config_from_json(recipe, recipe_path.empty() ? "options" : recipe_path);
    if (!job.plan_only && job.out_dir.empty()) dha::fail("--out DIR is required");
    for (const auto& arg : data_args) job.data.push_back(dha::parse_data_source(arg));
    const dha::TrainJobResult r = dha::run_train_job(job);
    if (job.plan_only) return 0;
    if (r.train.stopped_early) {
      std::fprintf(stderr, "dha-train: stopped at step %lld; resume with the same command plus --resume\n",
                   static_cast<long long>(r.train.steps));
      return r.train.steps > 0 && job.config.stop_after > 0 ? 0 : 130;
    }
    if (!r.model_dir.empty()) {
      std::printf("trained %lld steps (%lld tokens), final loss %.4f", static_cast<long long>(r.train.steps),
                  static_cast<long long>(r.train.tokens), r.train.last_loss);
      if (!r.train.evals.empty()) std::printf(", held-out NLL %.4f", r.train.evals.back().mean_nll);
      std::printf("\nmodel: %s\n", r.model_dir.c_str());
    }
    return 0;
  });
}
