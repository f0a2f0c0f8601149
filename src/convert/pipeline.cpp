// run_convert: the plan, then the stages in order, then the report.
#include <filesystem>

#include "dha/io/load.h"
#include "stages.h"

namespace dha {
namespace fs = std::filesystem;

namespace {

// The file checks that need no model: output, calibration and held-out text.
void check_input_files(const ConvertOptions& options, const std::string& out_dir, bool force) {
  if (out_dir.empty()) fail("--out DIR is required");
  if (fs::exists(out_dir) && !force) fail(out_dir, ": already exists (pass --force to overwrite)");
  if (options.calib.empty()) fail("no calibration text: pass --calib FILE (e.g. ../shared/data/text/tinystories_train_sample.txt)");
  for (const auto& file : options.calib) {
    if (!fs::is_regular_file(file)) fail(file, ": calibration file not found");
    if (fs::file_size(file) == 0) fail(file, ": calibration file is empty");
  }
  if (!options.eval_text.empty() && !fs::is_regular_file(options.eval_text)) fail(options.eval_text, ": no such file");
}

}  // namespace

ConvertSummary run_convert(const std::string& model_path, const std::string& tokenizer_path,
                           const std::string& out_dir, bool force, const ConvertOptions& options) {
  using namespace convert;
  const auto start = std::chrono::steady_clock::now();
  check_input_files(options, out_dir, force);
  const ConvertPlan plan = plan_conversion(options, io::load_model_config(model_path), model_path);
  io::StagedDirectory staged(out_dir, force);
  const auto ctx = open_context(options, plan, model_path, tokenizer_path, RankEnvironment::from_env(), staged);

  ConvertResults r;
  if (plan.measure_similarity) r.similarity = timed(*ctx, "attention similarity", [&] { return analyze_attention(*ctx); });
  if (!plan.analyze_only) {
    r.before = timed(*ctx, "measure source", [&] {
      Llama source = ctx->source_model();
      return ctx->measure(source);
    });
    r.sharing = share_layers(*ctx, r.similarity);
    r.search = timed(
        *ctx, "search", [&] { return search_groups(*ctx, r.sharing->model); }, ctx->stage_plan("search"));
    r.merge = merge_heads(*ctx, r.sharing->model, r.search->grouping);
    Llama result = make_model_over(r.merge->collapsed, "collapsed");
    result->to(ctx->device);
    r.after = timed(*ctx, "measure result", [&] { return ctx->measure(result); });
    r.exported = timed(*ctx, "export", [&] { return export_model(*ctx, r.merge->collapsed, result); });
    io::write_file_atomic(staged.file("recipe.json"), convert_options_to_json(options).dump(2) + "\n");
  }
  const double wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const nlohmann::json report = conversion_report(*ctx, r, wall_seconds);
  io::write_file_atomic(staged.file("report.json"), report.dump(2) + "\n");
  write_pictures(*ctx, r);
  // Every rank of a data-parallel conversion computes the same result in its
  // own staging directory; rank 0's becomes the output, the others' go.
  if (ctx->dist->is_main()) staged.commit();
  ctx->dist->barrier();
  return conversion_summary(*ctx, r, report, out_dir, wall_seconds);
}

}  // namespace dha
