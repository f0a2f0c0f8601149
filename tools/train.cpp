// dha-train: continued pre-training (or pre-training from scratch, or
// distillation) with exact resume and data parallelism over c10d.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/error.h"
#include "dha/train_job.h"

int main(int argc, char** argv) {
  CLI::App app{"Train a LLaMA/DHA model on dha-tokenize shards. Data-parallel under torchrun/Slurm "
               "(env:// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).",
               "dha-train"};
  dha::TrainJob job;
  std::string recipe_path;
  dha::TrainConfig c;  // defaults, for --help
  app.add_option("--model", job.model_path, "model to continue: llama2.c .bin, HF or dha directory");
  app.add_option("--from-scratch", job.from_scratch_path, "instead: a JSON model description to pre-train");
  app.add_option("--tokenizer", job.tokenizer_path, "tokenizer (default: the model's, else the data's)");
  app.add_option("--data", job.data_dir, "dha-tokenize output directory")->required();
  app.add_option("--out", job.out_dir, "output directory: checkpoints/, metrics.jsonl, loss.svg, model/")->required();
  app.add_option("--config", recipe_path, "JSON recipe (keys as the options below, with underscores)");
  app.add_option("--teacher", job.teacher_path, "distil from this model: adds KL(teacher || student)");
  app.add_option("--eval-text", job.eval_text, "held-out text (dha-eval protocol); default: the data's heldout split");
  app.add_flag("--resume", job.resume, "continue from the newest checkpoint in --out");
  app.add_flag("--force", job.force, "replace an existing --out");
  dha::cli::RecipeOptions recipe_keys(app);
  recipe_keys.add("--steps", "steps", c.steps, "optimizer steps (0: from --tokens)");
  recipe_keys.add("--tokens", "tokens", c.tokens, "token budget");
  recipe_keys.add("--batch", "micro_batch", c.micro_batch, "sequences per rank per micro-step");
  recipe_keys.add("--grad-accum", "grad_accum", c.grad_accum, "micro-steps per optimizer step");
  recipe_keys.add("--seq-len", "seq_len", c.seq_len, "sequence length (0: the model's context)");
  recipe_keys.add("--lr", "lr", c.lr, "peak learning rate");
  recipe_keys.add("--min-lr-ratio", "min_lr_ratio", c.min_lr_ratio, "cosine floor relative to the peak");
  recipe_keys.add("--warmup", "warmup", c.warmup, "warmup: fraction of the steps (< 1) or steps (>= 1)");
  recipe_keys.add("--weight-decay", "weight_decay", c.weight_decay, "AdamW weight decay");
  recipe_keys.add("--clip", "grad_clip", c.grad_clip, "gradient-norm clipping (<= 0: off)");
  recipe_keys.add("--eval-every", "eval_every", c.eval_every, "steps between held-out evaluations (0: start and end)");
  recipe_keys.add("--eval-docs", "eval_docs", c.eval_docs, "held-out documents per evaluation (0: all)");
  recipe_keys.add("--checkpoint-every", "checkpoint_every", c.checkpoint_every, "steps between checkpoints (0: end and signals)");
  recipe_keys.add("--keep", "keep_checkpoints", c.keep_checkpoints, "checkpoints kept");
  recipe_keys.add("--seed", "seed", c.seed, "seed (data order, initialisation)");
  recipe_keys.add("--distill-weight", "distill_weight", c.distill_weight, "weight of the KL term with --teacher");
  recipe_keys.add("--device", "device", c.device, "auto | cpu | cuda");
  recipe_keys.add("--dist-timeout", "dist_timeout_s", c.dist_timeout_s, "seconds before a silent peer fails the run");
  recipe_keys.add("--stop-after", "stop_after", c.stop_after, "stop with a checkpoint after N steps of this run (0: off)");
  return dha::cli::run(app, argc, argv, [&] {
    const nlohmann::json recipe = recipe_keys.resolve(recipe_path);
    job.config = dha::train_config_from_json(recipe, recipe_path.empty() ? "options" : recipe_path);
    const dha::TrainJobResult r = dha::run_train_job(job);
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
