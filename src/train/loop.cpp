// The training loop: accumulation, data parallelism, clipping, schedule,
// evaluation, metrics, checkpoints, exact resume, signals and the NaN guard.
#include "dha/train.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#if __has_include(<ATen/cuda/CUDAContext.h>)
#include <ATen/cuda/CUDAContext.h>
#define DHA_HAVE_ATEN_CUDA 1
#endif

#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/log.h"
#include "dha/loss.h"
#include "dha/memory.h"
#include "dha/progress.h"
#include "dha/train_checkpoint.h"
#include "run_state.h"
#include "zero.h"

namespace dha {
using nlohmann::json;
using namespace train_detail;

namespace {

// Peak dense bf16 FLOP/s of known GPUs, for MFU; 0 when unknown.
double peak_flops(const torch::Device& device) {
#ifdef DHA_HAVE_ATEN_CUDA
  if (!device.is_cuda()) return 0.0;
  const std::string name = at::cuda::getDeviceProperties(device.index())->name;
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989e12;
  if (name.find("A100") != std::string::npos) return 312e12;
  if (name.find("L40") != std::string::npos) return 181e12;
#endif
  return 0.0;
}

// Training FLOPs per token: 6 per non-embedding weight plus attention scores.
double flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double weights = static_cast<double>(c.parameter_count() - c.vocab_size * c.dim);
  return 6.0 * weights + 6.0 * c.n_layers * c.n_heads * c.head_dim * seq_len;
}

// sum += micro / grad_accum for every scalar, in fp64 on the device.
void accumulate_scalars(StepScalars& sum, const StepScalars& micro, int64_t grad_accum) {
  for (const auto& [key, value] : micro) {
    const torch::Tensor share = value.detach().to(torch::kFloat64) / static_cast<double>(grad_accum);
    auto it = sum.find(key);
    if (it == sum.end()) sum.emplace(key, share);
    else it->second.add_(share);
  }
}

// The step's scalars on the host, in one transfer.
std::map<std::string, double> read_scalars(const StepScalars& scalars) {
  std::vector<torch::Tensor> values;
  for (const auto& [key, value] : scalars) values.push_back(value.reshape({}));
  const torch::Tensor host = torch::stack(values).cpu();
  const auto read = host.accessor<double, 1>();
  std::map<std::string, double> out;
  int64_t i = 0;
  for (const auto& [key, value] : scalars) out[key] = read[i++];
  return out;
}

std::vector<torch::Tensor> all_params(const std::vector<ParamGroup>& groups) {
  std::vector<torch::Tensor> out;
  for (const auto& group : groups)
    for (const auto& [name, p] : group.params) out.push_back(p);
  return out;
}

// The optimizer and how gradients meet across ranks: AdamW on whole
// gradients averaged by all-reduce (ZeRO-0), or the sharded one.
class TrainingOptimizer {
 public:
  TrainingOptimizer(std::vector<ParamGroup> groups, const TrainConfig& config, Distributed& dist)
      : groups_(groups), params_(all_params(groups)), config_(config), dist_(dist) {
    if (config.zero > 0) zero_ = std::make_unique<ZeroOptimizer>(groups, static_cast<int>(config.zero), dist,
                                                                 config.beta1, config.beta2, config.eps);
    else adam_.emplace(groups, config.beta1, config.beta2, config.eps);
  }
  bool sharded() const { return zero_ != nullptr; }
  void attach(TrainTask& task) {
    if (zero_) zero_->attach(task.model(), [&](const std::string& name) { return task.reads_outside_forward(name); });
  }
  void zero_grad() { zero_ ? zero_->zero_grad() : adam_->zero_grad(); }
  void after_backward(bool last) {
    if (zero_) zero_->after_backward(last);
    else if (last) dist_.average_gradients(params_, config_.bucket_mb << 20);
  }
  double clip_grad_norm(double max_norm) {
    return zero_ ? zero_->clip_grad_norm(max_norm) : adam_->clip_grad_norm(max_norm);
  }
  void step(double factor) { zero_ ? zero_->step(factor) : adam_->step(factor); }
  // Held-out evaluation runs on whole weights (ZeRO-3 gathers them for its duration).
  void before_eval() {
    if (zero_) zero_->gather_everything();
  }
  void after_eval() {
    if (zero_) zero_->release_everything();
  }
  void finish() {
    if (zero_) zero_->finish();
  }
  std::vector<int> shards_needed(const TrainCheckpoint& ck) const {
    return shards_to_read(ck.zero, dist_.rank(), dist_.world_size());
  }

  // Writes a checkpoint of the task and this optimizer; returns its path (on rank 0).
  std::string save(TrainTask& task, TrainCheckpoint ck, const std::string& root, int keep) {
    ck.world_size = dist_.world_size();
    if (!zero_) {
      ck.tensors = task.state();
      ck.optimizer = adam_->state();
      std::string path;
      if (dist_.is_main()) path = save_train_checkpoint(root, ck, keep);
      dist_.barrier();
      return path;
    }
    for (const auto& [name, tensor] : task.state())
      if (!zero_->sharded_names().count(name)) ck.tensors[name] = tensor;
    ck.zero = zero_->manifest();
    return save_sharded_train_checkpoint(root, ck, zero_->shard_state(), dist_, keep);
  }

  void load(TrainTask& task, const TrainCheckpoint& ck) {
    if (!zero_) {
      task.load_state(ck.tensors, ck.path);
      adam_->load_state(ck.optimizer, ck.step, ck.path);
      return;
    }
    zero_->load(ck);  // every trained weight whole and restored
    // The task's other state; its trained weights restore to themselves.
    TensorMap tensors = ck.tensors;
    for (const auto& group : groups_)
      for (const auto& [name, p] : group.params) tensors[name] = p.detach();
    task.load_state(tensors, ck.path);
  }

 private:
  std::vector<ParamGroup> groups_;
  std::vector<torch::Tensor> params_;
  const TrainConfig& config_;
  Distributed& dist_;
  std::optional<AdamW> adam_;
  std::unique_ptr<ZeroOptimizer> zero_;
};

// metrics.jsonl, written by rank 0 only. A resumed run first drops the lines
// after its checkpoint's step, so the file reads as one uninterrupted run.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, bool main, std::optional<int64_t> resumed_at) : main_(main) {
    if (!main_) return;
    if (resumed_at) truncate_after(path, *resumed_at);
    out_.open(path, std::ios::app);
    if (!out_) fail(path, ": cannot open for writing");
  }
  void write(const json& line) {
    if (main_) out_ << line.dump() << "\n" << std::flush;
  }

 private:
  static void truncate_after(const std::string& path, int64_t step) {
    if (!std::filesystem::exists(path)) return;
    std::istringstream in(io::read_file(path));
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        if (json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
      } catch (const json::exception&) {
        // a torn last line from a killed run
      }
    }
    io::write_file_atomic(path, kept);
  }
  bool main_;
  std::ofstream out_;
};

// Held-out NLL, documents split over ranks and summed.
EvalPoint evaluate(TrainTask& task, const std::vector<std::vector<int32_t>>& docs, Distributed& dist,
                   const torch::Device& device, int64_t max_docs, int64_t step, int64_t tokens) {
  std::vector<std::vector<int32_t>> mine;
  const int64_t n = max_docs > 0 ? std::min<int64_t>(max_docs, docs.size()) : docs.size();
  for (int64_t i = dist.rank(); i < n; i += dist.world_size()) mine.push_back(docs[i]);
  double nll = 0.0, count = 0.0;
  if (!mine.empty()) {
    Autocast autocast(device);
    task.before_eval();
    const bool was_training = task.model()->is_training();
    task.model()->eval();
    const EvalResult r = evaluate_token_docs(task.model(), mine, 0, false, 0, task.forward_options());
    if (was_training) task.model()->train();
    nll = r.mean_nll * r.tokens;
    count = static_cast<double>(r.tokens);
  }
  const auto sums = dist.sum({nll, count});
  EvalPoint point;
  point.step = step;
  point.tokens = tokens;
  point.mean_nll = sums[1] > 0 ? sums[0] / sums[1] : std::nan("");
  point.eval_tokens = static_cast<int64_t>(sums[1]);
  return point;
}

// Options that may change between a run and its resume: they do not change what is computed.
constexpr const char* kResumeFreeKeys[] = {"stop_after", "dist_timeout_s", "eval_every",
                                           "eval_docs",  "log_every",      "keep_checkpoints"};

// Restores task, optimizer, RNG and data cursor from the newest checkpoint
// every rank can read. Refuses one of another model or other training
// options; a replicated one also of another world size, while a sharded one
// re-shards onto this world size when the global batch is the same.
void resume(TrainTask& task, TrainingOptimizer& optimizer, const std::string& root, const TrainRun& run,
            const json& recipe, Distributed& dist, TrainResult& result, DataCursor& cursor) {
  std::optional<TrainCheckpoint> ck = load_latest_train_checkpoint(
      root, dist, [&](const TrainCheckpoint& c) { return optimizer.shards_needed(c); });
  if (!ck) fail(root, ": no checkpoint to resume from");
  const bool sharded = !ck->zero.is_null();
  if (sharded != optimizer.sharded())
    fail(ck->path, ": written with --zero ", sharded ? ck->zero.value("stage", 1) : 0, "; resume it with --zero ",
         sharded ? "1, 2 or 3 (they read each other's checkpoints)" : "0");
  if (!sharded && ck->world_size != dist.world_size())
    fail(ck->path, ": written by a run of ", ck->world_size, " processes, this one has ", dist.world_size(),
         " (resume with the same world size; checkpoints of --zero 1, 2 and 3 re-shard)");
  if (ck->meta.value("model_config", json()) != run.meta.value("model_config", json()))
    fail(ck->path, ": the checkpoint is of a different model than the one given");
  json saved = ck->meta.value("train_config", json::object()), given = recipe;
  auto global_batch = [](const json& c, int world) {
    return world * c.value("micro_batch", int64_t{0}) * c.value("grad_accum", int64_t{0});
  };
  if (global_batch(saved, ck->world_size) != global_batch(given, dist.world_size()))
    fail(ck->path, ": the checkpoint's global batch is ", global_batch(saved, ck->world_size), " sequences (",
         ck->world_size, " ranks x --batch x --grad-accum), this run's is ", global_batch(given, dist.world_size()),
         "; keep ranks x --batch x --grad-accum equal");
  for (json* c : {&saved, &given}) {
    for (const char* free_key : kResumeFreeKeys) c->erase(free_key);
    for (const char* key : {"micro_batch", "grad_accum", "zero"}) c->erase(key);  // checked above
  }
  if (saved != given)
    fail(ck->path, ": the training options differ from the checkpoint's (", saved.dump(), " vs ", given.dump(),
         "); resume with the same options");
  optimizer.load(task, *ck);
  task.load_extra_state(ck->meta.value("task", json::object()));
  restore_rng_state(ck->meta.at("rng"));
  result.steps = ck->step;
  result.tokens = ck->tokens;
  result.last_checkpoint = ck->path;
  cursor = ck->cursor;
  if (dist.is_main())
    log::info("resumed from ", ck->path, " at step ", ck->step,
              sharded && ck->world_size != dist.world_size()
                  ? " (re-sharded from " + std::to_string(ck->world_size) + " ranks)"
                  : std::string());
}

}  // namespace

int64_t steps_for_tokens(const TrainConfig& c, int world_size, int64_t seq_len) {
  if (c.steps > 0) return c.steps;
  const int64_t per_step = world_size * c.micro_batch * c.grad_accum * seq_len;
  if (c.tokens <= 0) fail("give a length: steps or tokens");
  return (c.tokens + per_step - 1) / per_step;
}

TensorMap TrainTask::state() { return model()->state(); }

void TrainTask::load_state(const TensorMap& tensors, const std::string& source) {
  model()->load_state(tensors, source);
}

LanguageModelTask::LanguageModelTask(Llama model, std::optional<Llama> teacher, double distill_weight,
                                     double temperature)
    : model_(std::move(model)), teacher_(std::move(teacher)), distill_weight_(distill_weight), temperature_(temperature) {
  if (teacher_) {
    (*teacher_)->eval();
    for (auto& p : (*teacher_)->parameters()) p.set_requires_grad(false);
  }
}

std::vector<ParamGroup> LanguageModelTask::param_groups(const TrainConfig& config) {
  ParamGroup group;
  group.name = "model";
  group.lr = config.lr;
  group.weight_decay = config.weight_decay;
  for (const auto& item : model_->named_parameters()) group.params.emplace_back(item.key(), item.value());
  return {group};
}

torch::Tensor LanguageModelTask::loss(const torch::Tensor& batch, StepScalars& scalars) {
  const int64_t t = batch.size(1) - 1;
  const torch::Tensor inputs = batch.narrow(1, 0, t), targets = batch.narrow(1, 1, t);
  const torch::Tensor logits = model_->forward(inputs);
  const torch::Tensor lm = lm_loss(logits, targets);
  scalars["lm_loss"] = lm.detach();
  if (!teacher_) return lm;
  torch::Tensor teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_logits = (*teacher_)->forward(inputs);
  }
  const torch::Tensor kl = distill_kl(logits, teacher_logits, temperature_);
  scalars["kl"] = kl.detach();
  return lm + distill_weight_ * kl;
}

TrainResult train(TrainTask& task, SequenceSampler& sampler, const TrainConfig& config, Distributed& dist,
                  const TrainRun& run) {
  const torch::Device device = task.model()->model->embed_tokens->weight.device();
  const ModelConfig& model_config = task.model()->config();
  const int64_t seq_len = config.seq_len > 0 ? config.seq_len : model_config.max_seq_len;
  const int64_t total_steps = steps_for_tokens(config, dist.world_size(), seq_len);
  const int64_t per_step_sequences = dist.world_size() * config.micro_batch * config.grad_accum;
  const int64_t tokens_per_step = per_step_sequences * seq_len;

  std::vector<ParamGroup> groups = task.param_groups(config);
  const std::vector<torch::Tensor> params = all_params(groups);
  if (!run.resume) dist.broadcast(params);  // every rank starts from rank 0's weights
  LrSchedule schedule;
  schedule.total_steps = total_steps;
  schedule.warmup_steps = config.warmup < 1.0 ? static_cast<int64_t>(std::llround(config.warmup * total_steps))
                                              : static_cast<int64_t>(config.warmup);
  schedule.floor_ratio = config.min_lr_ratio;
  schedule.offset_steps = (config.prior_tokens + tokens_per_step / 2) / tokens_per_step;

  const std::string checkpoint_root = run.out_dir + "/checkpoints";
  const json recipe = train_config_to_json(config);
  TrainResult result;
  DataCursor cursor;
  TrainingOptimizer optimizer(groups, config, dist);
  if (run.resume) resume(task, optimizer, checkpoint_root, run, recipe, dist, result, cursor);
  // ZeRO-3 keeps a decoder layer's weights whole only while it runs, which
  // needs its activations recomputed in backward.
  task.model()->activation_checkpointing = config.activation_checkpointing || config.zero == 3;
  optimizer.attach(task);
  if (dist.is_main() && !run.description.empty()) log::info(run.description);
  MetricsLog metrics(run.out_dir + "/metrics.jsonl", dist.is_main(),
                     run.resume ? std::optional<int64_t>(result.steps) : std::nullopt);
  if (run.memory_plan) {
    if (dist.is_main()) log::info(run.memory_plan->table());
    json line = run.memory_plan->to_json();
    line["event"] = "memory_plan";
    line["step"] = result.steps;
    metrics.write(line);
  }

  auto save_checkpoint = [&] {
    TrainCheckpoint ck;
    ck.step = result.steps;
    ck.tokens = result.tokens;
    ck.cursor = cursor;
    ck.meta = run.meta;
    ck.meta["train_config"] = recipe;
    ck.meta["rng"] = rng_state();
    ck.meta["task"] = task.extra_state();
    const std::string path = optimizer.save(task, std::move(ck), checkpoint_root, config.keep_checkpoints);
    if (dist.is_main()) result.last_checkpoint = path;
  };
  auto record_eval = [&] {
    if (run.eval_docs.empty()) return;
    optimizer.before_eval();
    const EvalPoint point = evaluate(task, run.eval_docs, dist, device, config.eval_docs, result.steps, result.tokens);
    optimizer.after_eval();
    result.evals.push_back(point);
    metrics.write({{"event", "eval"}, {"step", point.step}, {"tokens", point.tokens}, {"eval_nll", point.mean_nll},
                   {"eval_tokens", point.eval_tokens}});
    if (dist.is_main()) log::info(run.label, " step ", point.step, ": held-out NLL ", point.mean_nll);
  };

  if (!run.resume) record_eval();  // the starting point
  StopSignals signals;
  Progress progress(run.label, total_steps, "steps");
  const double peak = peak_flops(device);
  const double flops_token = flops_per_token(model_config, seq_len);
  int64_t steps_this_run = 0;
  task.model()->train();

  while (result.steps < total_steps) {
    const auto start = std::chrono::steady_clock::now();
    optimizer.zero_grad();
    StepScalars step_scalars{{"loss", torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(device))}};
    for (int64_t micro = 0; micro < config.grad_accum; ++micro) {
      const int64_t offset = (micro * dist.world_size() + dist.rank()) * config.micro_batch;
      const torch::Tensor batch = sampler.batch(cursor, offset, config.micro_batch).to(device);
      StepScalars micro_scalars;
      torch::Tensor loss;
      {
        Autocast autocast(device);
        loss = task.loss(batch, micro_scalars);
      }
      (loss / static_cast<double>(config.grad_accum)).backward();
      optimizer.after_backward(micro + 1 == config.grad_accum);
      micro_scalars["loss"] = loss.detach();
      accumulate_scalars(step_scalars, micro_scalars, config.grad_accum);
    }
    cursor = sampler.advance(cursor, per_step_sequences);
    // Loss and task metrics read back once, then averaged over ranks in one collective.
    std::map<std::string, double> step_metrics = read_scalars(step_scalars);
    double loss_sum = step_metrics["loss"];
    step_metrics.erase("loss");
    std::vector<double> reduced{loss_sum};
    for (const auto& [key, value] : step_metrics) reduced.push_back(value);
    reduced = dist.sum(reduced);
    loss_sum = reduced[0] / dist.world_size();
    size_t k = 1;
    for (auto& [key, value] : step_metrics) value = reduced[k++] / dist.world_size();

    const double grad_norm = optimizer.clip_grad_norm(config.grad_clip);
    if (!std::isfinite(loss_sum) || !std::isfinite(grad_norm))
      fail("non-finite ", std::isfinite(loss_sum) ? "gradient norm" : "loss", " at step ", result.steps + 1,
           " (loss ", loss_sum, ", grad norm ", grad_norm, "); stopped without writing a checkpoint",
           result.last_checkpoint.empty() ? std::string() : "; the last good one is " + result.last_checkpoint);
    const double factor = schedule.factor(result.steps);
    optimizer.step(factor);
    result.steps += 1;
    result.tokens += tokens_per_step;
    result.last_loss = loss_sum;
    steps_this_run += 1;
    task.after_step(result.steps, total_steps, step_metrics);

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double tokens_per_s = tokens_per_step / std::max(seconds, 1e-9);
    if (result.steps % std::max<int64_t>(config.log_every, 1) == 0 || result.steps == total_steps) {
      json line = {{"step", result.steps},   {"tokens", result.tokens},       {"loss", loss_sum},
                   {"lr", config.lr * factor}, {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_s}};
      if (peak > 0) line["mfu"] = tokens_per_s * flops_token / (peak * dist.world_size());
      for (const auto& [key, value] : step_metrics) line[key] = value;
      metrics.write(line);
    }
    if (dist.is_main() && run.show_progress) {
      std::ostringstream status;
      status.precision(4);
      status << "loss " << loss_sum << ", " << static_cast<int64_t>(tokens_per_s) << " tok/s";
      progress.update(result.steps, status.str());
    }
    if (config.eval_every > 0 && result.steps % config.eval_every == 0 && result.steps < total_steps) record_eval();

    const bool stop_requested =
        dist.max(signals.raised() || (config.stop_after > 0 && steps_this_run >= config.stop_after) ? 1.0 : 0.0) > 0;
    if (stop_requested && result.steps < total_steps) {
      save_checkpoint();
      optimizer.finish();
      result.stopped_early = true;
      if (dist.is_main()) {
        progress.finish();
        log::info(run.label, " stopped at step ", result.steps, " of ", total_steps, "; checkpoint ",
                  result.last_checkpoint, " (continue with --resume)");
      }
      return result;
    }
    if (config.checkpoint_every > 0 && result.steps % config.checkpoint_every == 0 && result.steps < total_steps)
      save_checkpoint();
  }
  if (dist.is_main() && run.show_progress) progress.finish();
  record_eval();
  if (run.final_checkpoint || config.checkpoint_every > 0) save_checkpoint();
  optimizer.finish();  // ZeRO: the optimizer state goes, every weight whole again
  task.model()->eval();
  // The measured peaks beside the plan (the counted CPU tensors when the meter is installed).
  metrics.write({{"event", "memory"},
                 {"step", result.steps},
                 {"peak_rss_bytes", peak_rss_bytes()},
                 {"peak_tensor_bytes", MemoryMeter::installed() ? MemoryMeter::peak_bytes() : 0},
                 {"device_peak_bytes", device_peak_bytes(device)},
                 {"planned_bytes", run.memory_plan ? run.memory_plan->total() : 0}});
  return result;
}

}  // namespace dha
