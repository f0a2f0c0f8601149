// dha-train's job: model/data/teacher loading, checks, the run and its outputs.
#include "dha/train_job.h"

#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/device.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/log.h"
#include "dha/svg.h"

namespace dha {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The loss (per step) and held-out NLL (per evaluation) against tokens.
void write_loss_curve(const std::string& metrics_path, const std::string& svg_path, const std::string& title) {
  svg::Series loss{"training loss", {}, {}}, held{"held-out NLL", {}, {}};
  std::istringstream in(io::read_file(metrics_path));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json j = json::parse(line);
    const double tokens = j.value("tokens", 0.0);
    if (j.value("event", "") == "eval") {
      held.x.push_back(tokens), held.y.push_back(j.value("eval_nll", 0.0));
    } else if (j.contains("loss")) {
      loss.x.push_back(tokens), loss.y.push_back(j.value("loss", 0.0));
    }
  }
  std::vector<svg::Series> series;
  if (!loss.x.empty()) series.push_back(loss);
  if (!held.x.empty()) series.push_back(held);
  if (series.empty()) return;
  svg::LineChartOptions options;
  options.title = title;
  options.x_label = "tokens";
  options.y_label = "nats per token";
  svg::write(svg_path, svg::line_chart(series, options));
}

}  // namespace

TrainJobResult run_train_job(const TrainJob& job) {
  TrainConfig config = job.config;
  if (job.model_path.empty() == job.from_scratch_path.empty())
    fail("give exactly one of --model PATH and --from-scratch CONFIG");
  if (job.data_dir.empty()) fail("--data DIR is required");
  const int local_rank = std::getenv("LOCAL_RANK") ? std::atoi(std::getenv("LOCAL_RANK")) : 0;
  const torch::Device device = resolve_device(config.device, local_rank);

  // Data first: cheap checks before any heavy loading.
  TokenDataset data(job.data_dir, "train");

  // Output directory rules: a fresh run needs a new (or --force) directory; a
  // resumed one needs the old one. Only rank 0 judges: it creates the directory,
  // and another rank could see it appear.
  const bool main_rank = std::getenv("RANK") == nullptr || std::atoi(std::getenv("RANK")) == 0;
  if (main_rank && job.resume) {
    if (!fs::exists(job.out_dir + "/checkpoints")) fail(job.out_dir, ": no checkpoints to resume (drop --resume)");
  } else if (main_rank && fs::exists(job.out_dir)) {
    if (!job.force) fail(job.out_dir, ": already exists (pass --resume to continue it or --force to start over)");
  }

  Llama model{nullptr};
  std::string tokenizer_path = job.tokenizer_path;
  if (!job.from_scratch_path.empty()) {
    json description;
    try {
      description = json::parse(io::read_file(job.from_scratch_path));
    } catch (const json::exception& e) {
      fail(job.from_scratch_path, ": not valid JSON (", e.what(), ")");
    }
    const ModelConfig model_config = model_config_from_json(description, data.vocab_size(), job.from_scratch_path);
    model = make_random_model(model_config, config.seed);
    if (tokenizer_path.empty()) tokenizer_path = find_tokenizer_in_dir(job.data_dir);
  } else {
    io::LoadedModel loaded = io::load_model(job.model_path, job.tokenizer_path, /*need_tokenizer=*/false);
    model = loaded.model;
    if (tokenizer_path.empty()) tokenizer_path = find_tokenizer_for_model(job.model_path, model->config().vocab_size);
    if (tokenizer_path.empty()) tokenizer_path = find_tokenizer_in_dir(job.data_dir);
  }
  const ModelConfig& model_config = model->config();
  if (data.vocab_size() > model_config.vocab_size)
    fail(job.data_dir, ": the shards' vocab (", data.vocab_size(), ") is larger than the model's (",
         model_config.vocab_size, "); tokenize with the model's tokenizer");
  const int64_t seq_len = config.seq_len > 0 ? config.seq_len : model_config.max_seq_len;
  if (seq_len > model_config.max_seq_len)
    fail("--seq-len ", seq_len, " exceeds the model's context of ", model_config.max_seq_len);
  config.seq_len = seq_len;
  std::unique_ptr<Tokenizer> tokenizer;
  if (!tokenizer_path.empty()) tokenizer = load_tokenizer(tokenizer_path, model_config.vocab_size);
  // Shards that begin documents otherwise than the model does (BOS, its
  // pre-training separator, nothing) would train and evaluate it out of protocol.
  if (tokenizer && data.version() >= 2) {
    const DocumentProtocol expected = document_protocol(*tokenizer), found = data.protocol();
    if (expected.first_token != found.first_token || expected.token_id != found.token_id)
      fail(job.data_dir, ": documents begin with ", first_token_name(found.first_token), " (id ", found.token_id,
           ") but the model's tokenizer ", tokenizer_path, " begins them with ", first_token_name(expected.first_token),
           " (id ", expected.token_id, "); tokenize with the model's tokenizer");
  }

  std::optional<Llama> teacher;
  if (!job.teacher_path.empty()) {
    io::LoadedModel t = io::load_model(job.teacher_path, "", /*need_tokenizer=*/false);
    if (t.model->config().vocab_size != model_config.vocab_size)
      fail(job.teacher_path, ": the teacher's vocab (", t.model->config().vocab_size, ") differs from the student's (",
           model_config.vocab_size, ")");
    teacher = t.model;
    (*teacher)->to(device);
  }
  model->to(device);

  std::unique_ptr<Distributed> dist =
      Distributed::from_env(device, std::chrono::seconds(config.dist_timeout_s));
  SequenceSampler sampler(data, seq_len, config.seed);

  TrainRun run;
  run.out_dir = job.out_dir;
  run.resume = job.resume;
  run.meta = {{"model_config", io::config_to_hf_json(model_config, io::DirFormat::kDha, torch::kFloat32)},
              {"data", data.fingerprint()},
              {"source", job.model_path.empty() ? job.from_scratch_path : job.model_path}};
  if (!job.eval_text.empty()) {
    if (!tokenizer) fail("--eval-text needs a tokenizer (pass --tokenizer)");
    for (const auto& doc : split_documents(io::read_file(job.eval_text)))
      run.eval_docs.push_back(encode_document(*tokenizer, doc));
  } else if (fs::exists(job.data_dir) && !TokenDataset::shard_paths(job.data_dir, "heldout").empty()) {
    run.eval_docs = TokenDataset(job.data_dir, "heldout").documents(model_config.bos_id, config.eval_docs);
  }

  if (dist->is_main() && !job.resume) {
    if (job.force && fs::exists(job.out_dir)) fs::remove_all(job.out_dir);
    fs::create_directories(job.out_dir);
    json resolved = train_config_to_json(config);
    resolved["_resolved"] = {{"model", run.meta["source"]}, {"data", job.data_dir}, {"world_size", dist->world_size()},
                             {"device", device.str()}, {"teacher", job.teacher_path}};
    io::write_file_atomic(job.out_dir + "/train_config.json", resolved.dump(2) + "\n");
  }
  dist->barrier();
  std::ostringstream description;
  description << "training " << model_config.parameter_count() << " parameters on " << device.str() << " x"
              << dist->world_size() << " (" << dist->backend() << "), "
              << steps_for_tokens(config, dist->world_size(), seq_len) << " steps of "
              << dist->world_size() * config.micro_batch * config.grad_accum * seq_len << " tokens, held-out: "
              << (run.eval_docs.empty() ? "none" : std::to_string(run.eval_docs.size()) + " documents");
  run.description = description.str();

  LanguageModelTask task(model, teacher, config.distill_weight, config.distill_temperature);
  TrainJobResult result;
  result.train = train(task, sampler, config, *dist, run);
  if (dist->is_main()) {
    write_loss_curve(job.out_dir + "/metrics.jsonl", job.out_dir + "/loss.svg", "dha-train: " + run.meta["source"].get<std::string>());
    if (!result.train.stopped_early) {
      io::DirSaveOptions options;
      options.format = io::DirFormat::kDha;
      options.overwrite = true;
      options.tokenizer = tokenizer.get();
      result.model_dir = job.out_dir + "/model";
      model->to(torch::kCPU);
      io::save_hf_dir(result.model_dir, model->to_checkpoint(torch::kFloat32), options);
    }
  }
  dist->barrier();
  return result;
}

}  // namespace dha
