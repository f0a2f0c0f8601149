// The rules and contents of dha-train's output directory.
#include "run_directory.h"

#include <filesystem>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"

namespace dha::train_detail {
namespace fs = std::filesystem;

void check_output_directory(const TrainJob& job) {
  if (job.resume) {
    if (!fs::exists(job.out_dir + "/checkpoints"))
      fail(job.out_dir, ": no checkpoints to resume (drop --resume)");
  } else if (fs::exists(job.out_dir) && !job.force) {
    fail(job.out_dir, ": already exists (pass --resume to continue it or --force to start over)");
  }
}

void start_output_directory(const TrainJob& job, const TrainConfig& config, const nlohmann::json& resolved) {
  if (job.force && fs::exists(job.out_dir)) fs::remove_all(job.out_dir);
  fs::create_directories(job.out_dir);
  nlohmann::json recipe = train_config_to_json(config);
  recipe["_resolved"] = resolved;
  io::write_file_atomic(job.out_dir + "/train_config.json", recipe.dump(2) + "\n");
}

std::string save_trained_model(const std::string& out_dir, Llama& model, const Tokenizer* tokenizer,
                               torch::ScalarType dtype) {
  io::DirSaveOptions options;
  options.format = io::DirFormat::kDha;
  options.overwrite = true;
  options.tokenizer = tokenizer;
  options.dtype = dtype;
  const std::string dir = out_dir + "/model";
  model->to(torch::kCPU);
  io::save_hf_dir(dir, model->shared_checkpoint(torch::kFloat32), options);
  return dir;
}

}  // namespace dha::train_detail
