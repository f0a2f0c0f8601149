// dha-train's job: its inputs, its output directory and its run, in order;
// and the device and memory plan a job implies.
#include "dha/train_job.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/memory.h"
#include "job_inputs.h"
#include "loss_curve.h"
#include "run_directory.h"

namespace dha {
using namespace train_detail;

namespace {

// --plan-only: the plan from the headers alone (no data, no weights), printed.
void print_memory_plan(const TrainJob& job, const RankEnvironment& ranks) {
  const ModelConfig model = job.model_path.empty() ? from_scratch_config(job.from_scratch_path, 0)
                                                   : io::load_model_config(job.model_path);
  const torch::ScalarType teacher_dtype =
      job.teacher_path.empty() ? torch::kFloat32 : io::load_storage_dtype(job.teacher_path);
  const int world_size = job.plan_world_size > 0 ? job.plan_world_size : ranks.world_size;
  const MemoryPlan plan = train_memory_plan(model, job.config, world_size, job.config.device == "cuda",
                                            !job.teacher_path.empty(), teacher_dtype);
  std::printf("%s", plan.table().c_str());
}

std::string source_of(const TrainJob& job) {
  return job.model_path.empty() ? job.from_scratch_path : job.model_path;
}

// The line the loop logs once the run's inputs (its resume included) are checked.
std::string describe(const TrainConfig& config, const TrainRun& run, const ModelConfig& model,
                     Distributed& dist, const torch::Device& device) {
  std::ostringstream d;
  d << "training " << model.parameter_count() << " parameters on " << device.str() << " x"
    << dist.world_size() << " (" << dist.backend() << "), "
    << steps_for_tokens(config, dist.world_size(), config.seq_len) << " steps of "
    << dist.world_size() * config.micro_batch * config.grad_accum * config.seq_len << " tokens, held-out: "
    << (run.eval_docs.empty() ? "none" : std::to_string(run.eval_docs.size()) + " documents");
  if (config.prior_tokens > 0)
    d << "; the lr schedule continues after " << config.prior_tokens << " tokens trained before";
  return d.str();
}

// What the loop is told: where it writes, what every checkpoint records, the plan, the held-out documents.
TrainRun job_run(const TrainJob& job, const TrainConfig& config, const JobInputs& inputs,
                 const std::vector<std::unique_ptr<TokenDataset>>& data, const SequenceSampler& sampler,
                 Distributed& dist, const torch::Device& device) {
  const ModelConfig& model = inputs.model->config();
  TrainRun run;
  run.out_dir = job.out_dir;
  run.resume = job.resume;
  run.memory_plan = train_memory_plan(model, config, dist.world_size(), device.is_cuda(),
                                      inputs.teacher.has_value(), inputs.teacher_dtype);
  std::string fingerprint;
  for (const auto& d : data) fingerprint += (fingerprint.empty() ? "" : " + ") + d->fingerprint();
  run.meta = {{"model_config", io::config_to_hf_json(model, io::DirFormat::kDha, torch::kFloat32)},
              {"data", fingerprint},
              {"source", source_of(job)}};
  if (data.size() > 1) {
    // The mixture as the sampler draws it; a resume must give the same.
    nlohmann::json sources = nlohmann::json::array();
    for (size_t s = 0; s < data.size(); ++s)
      sources.push_back({{"dir", job.data[s].dir},
                         {"weight", job.data[s].weight},
                         {"share", static_cast<double>(sampler.source_share(static_cast<int64_t>(s))) /
                                       static_cast<double>(kMixturePeriod)},
                         {"tokens", data[s]->size()},
                         {"data", data[s]->fingerprint()}});
    run.meta["data_mixture"] = sources;
  }
  run.eval_docs = held_out_documents(job, inputs, config.eval_docs);
  run.description = describe(config, run, model, dist, device);
  return run;
}

}  // namespace

DataSource parse_data_source(const std::string& arg) {
  const size_t eq = arg.rfind('=');
  if (eq != std::string::npos && eq > 0 && eq + 1 < arg.size()) {
    const std::string weight = arg.substr(eq + 1);
    char* end = nullptr;
    const double w = std::strtod(weight.c_str(), &end);
    if (end && *end == '\0') {
      if (!(w > 0.0) || !std::isfinite(w))
        fail("--data ", arg, ": the weight ", weight, " must be a positive number");
      return {arg.substr(0, eq), w};
    }
  }
  return {arg, 1.0};
}

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
  if (job.model_path.empty() == job.from_scratch_path.empty())
    fail("give exactly one of --model PATH and --from-scratch CONFIG");
  const std::optional<torch::ScalarType> output_dtype = parse_output_dtype(job.dtype);
  const RankEnvironment ranks = RankEnvironment::from_env();
  if (job.plan_only) {
    print_memory_plan(job, ranks);
    return {};
  }
  if (job.data.empty()) fail("--data DIR is required");
  MemoryMeter::install();
  const torch::Device device = training_device(job.config, ranks);
  // Data first: cheap checks before any heavy loading.
  std::vector<std::unique_ptr<TokenDataset>> data;
  std::vector<MixtureSource> mixture;
  for (const DataSource& source : job.data) {
    data.push_back(std::make_unique<TokenDataset>(source.dir, "train"));
    mixture.push_back({data.back().get(), source.weight});
  }
  if (ranks.is_main()) check_output_directory(job);
  JobInputs inputs = load_job_inputs(job, mixture, device);
  TrainConfig config = job.config;
  config.seq_len = inputs.seq_len;
  const std::unique_ptr<Distributed> dist =
      Distributed::join(ranks, device, std::chrono::seconds(config.dist_timeout_s));
  SequenceSampler sampler(mixture, config.seq_len, config.seed);
  const TrainRun run = job_run(job, config, inputs, data, sampler, *dist, device);
  if (dist->is_main() && !job.resume)
    start_output_directory(job, config,
                           {{"model", source_of(job)},
                            {"data", job.data.size() == 1 ? nlohmann::json(job.data.front().dir)
                                                          : run.meta["data_mixture"]},
                            {"world_size", dist->world_size()},
                            {"device", device.str()},
                            {"teacher", job.teacher_path}});
  dist->barrier();
  LanguageModelTask task(inputs.model, inputs.teacher, config.distill_weight, config.distill_temperature);
  TrainJobResult result;
  result.train = train(task, sampler, config, *dist, run);
  if (dist->is_main()) {
    write_loss_curve(job.out_dir + "/metrics.jsonl", job.out_dir + "/loss.svg",
                     "dha-train: " + source_of(job));
    // In the source's dtype unless --dtype says otherwise.
    if (!result.train.stopped_early)
      result.model_dir = save_trained_model(job.out_dir, inputs.model, inputs.tokenizer.get(),
                                            output_dtype.value_or(inputs.source_dtype));
  }
  dist->barrier();
  return result;
}

}  // namespace dha
