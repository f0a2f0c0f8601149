// dha-train's job: model/data/teacher loading, checks, the run and its outputs.
#include "dha/train_job.h"

#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/log.h"
#include "dha/memory.h"
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

ModelConfig from_scratch_config(const std::string& path, int64_t default_vocab) {
  json description;
  try {
    description = json::parse(io::read_file(path));
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  return model_config_from_json(description, default_vocab, path);
}

}  // namespace

torch::Device training_device(const TrainConfig& config, const RankEnvironment& ranks,
                              const DeviceInventory& inventory) {
  return resolve_device(config.device, ranks, inventory);
}

MemoryPlan train_memory_plan(const ModelConfig& model, const TrainConfig& config, int world_size, bool cuda,
                             bool teacher, torch::ScalarType teacher_dtype) {
  MemoryPlanInputs in;
  in.model = model;
  in.stage = "train";
  in.micro_batch = config.micro_batch;
  in.seq_len = config.seq_len;
  in.world_size = world_size;
  in.zero = static_cast<int>(config.zero);
  in.cuda = cuda;
  in.storage_dtype = teacher_dtype;  // the only frozen weights are a teacher's
  in.train_weights = TrainWeights::kAll;
  in.activation_checkpointing = config.activation_checkpointing || config.zero == 3;  // ZeRO-3 implies it
  in.teacher = teacher;
  in.inference_copies = teacher ? 1 : 0;
  return plan_memory(in);
}

TrainJobResult run_train_job(const TrainJob& job) {
  TrainConfig config = job.config;
  if (job.model_path.empty() == job.from_scratch_path.empty())
    fail("give exactly one of --model PATH and --from-scratch CONFIG");
  const std::optional<torch::ScalarType> output_dtype = parse_output_dtype(job.dtype);
  const RankEnvironment ranks = RankEnvironment::from_env();
  if (job.plan_only) {  // from the headers alone: no data, no weights
    const ModelConfig model_config = job.model_path.empty() ? from_scratch_config(job.from_scratch_path, 0)
                                                            : io::load_model_config(job.model_path);
    const torch::ScalarType teacher_dtype =
        job.teacher_path.empty() ? torch::kFloat32 : io::load_storage_dtype(job.teacher_path);
    const MemoryPlan plan = train_memory_plan(model_config, config, job.plan_world_size > 0 ? job.plan_world_size : ranks.world_size,
                                              config.device == "cuda", !job.teacher_path.empty(), teacher_dtype);
    std::printf("%s", plan.table().c_str());
    return {};
  }
  if (job.data_dir.empty()) fail("--data DIR is required");
  MemoryMeter::install();
  const torch::Device device = training_device(config, ranks);

  // Data first: cheap checks before any heavy loading.
  TokenDataset data(job.data_dir, "train");

  // Output directory rules: a fresh run needs a new (or --force) directory; a
  // resumed one needs the old one. Only rank 0 judges: it creates the directory,
  // and another rank could see it appear.
  const bool main_rank = ranks.is_main();
  if (main_rank && job.resume) {
    if (!fs::exists(job.out_dir + "/checkpoints")) fail(job.out_dir, ": no checkpoints to resume (drop --resume)");
  } else if (main_rank && fs::exists(job.out_dir)) {
    if (!job.force) fail(job.out_dir, ": already exists (pass --resume to continue it or --force to start over)");
  }

  Llama model{nullptr};
  std::string tokenizer_path = job.tokenizer_path;
  torch::ScalarType source_dtype = torch::kFloat32;
  if (!job.from_scratch_path.empty()) {
    model = make_random_model(from_scratch_config(job.from_scratch_path, data.vocab_size()), config.seed);
    if (tokenizer_path.empty()) tokenizer_path = find_tokenizer_in_dir(job.data_dir);
  } else {
    io::LoadedModel loaded = io::load_model(job.model_path, job.tokenizer_path, /*need_tokenizer=*/false);
    model = loaded.model;
    source_dtype = loaded.checkpoint.storage_dtype;
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
  torch::ScalarType teacher_dtype = torch::kFloat32;
  if (!job.teacher_path.empty()) {
    // Frozen, in its stored dtype: a bf16 teacher costs 2 bytes per parameter.
    const Checkpoint t = io::load_checkpoint(job.teacher_path);
    if (t.config.vocab_size != model_config.vocab_size)
      fail(job.teacher_path, ": the teacher's vocab (", t.config.vocab_size, ") differs from the student's (",
           model_config.vocab_size, ")");
    teacher_dtype = t.storage_dtype;
    teacher = make_model_over(t, job.teacher_path);
    (*teacher)->to(device);
  }
  model->to(device);

  std::unique_ptr<Distributed> dist =
      Distributed::join(ranks, device, std::chrono::seconds(config.dist_timeout_s));
  SequenceSampler sampler(data, seq_len, config.seed);

  TrainRun run;
  run.out_dir = job.out_dir;
  run.resume = job.resume;
  run.memory_plan =
      train_memory_plan(model_config, config, dist->world_size(), device.is_cuda(), teacher.has_value(), teacher_dtype);
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
  if (config.prior_tokens > 0)
    description << "; the lr schedule continues after " << config.prior_tokens << " tokens trained before";
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
      // Written from the model's own tensors (no copy), in the source's dtype unless --dtype says otherwise.
      options.dtype = output_dtype.value_or(source_dtype);
      io::save_hf_dir(result.model_dir, model->shared_checkpoint(torch::kFloat32), options);
    }
  }
  dist->barrier();
  return result;
}

}  // namespace dha
