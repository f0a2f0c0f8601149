// The training loop: micro-steps and gradient accumulation, clipping, the
// schedule, the NaN guard, periodic evaluation and checkpoints, stopping on a
// signal. What it calls on has rooms of its own: the optimizer and data
// parallelism (training_optimizer.h), checkpoints and resume (checkpointer.h),
// metrics.jsonl (metrics_log.h), MFU (mfu.h), held-out evaluation (held_out.h).
#include "dha/train.h"

#include <chrono>
#include <cmath>
#include <sstream>

#include "checkpointer.h"
#include "dha/error.h"
#include "dha/log.h"
#include "dha/progress.h"
#include "held_out.h"
#include "metrics_log.h"
#include "mfu.h"
#include "run_guards.h"
#include "training_optimizer.h"

namespace dha {
using namespace train_detail;

namespace {

// What a run's steps are made of: sequences of seq_len, over all ranks.
struct RunShape {
  int64_t seq_len = 0, total_steps = 0, sequences_per_step = 0, tokens_per_step = 0;
};

RunShape run_shape(const TrainConfig& config, const ModelConfig& model, int world_size) {
  RunShape s;
  s.seq_len = config.seq_len > 0 ? config.seq_len : model.max_seq_len;
  s.total_steps = steps_for_tokens(config, world_size, s.seq_len);
  s.sequences_per_step = world_size * config.micro_batch * config.grad_accum;
  s.tokens_per_step = s.sequences_per_step * s.seq_len;
  return s;
}

LrSchedule run_schedule(const TrainConfig& config, const RunShape& shape) {
  LrSchedule schedule;
  schedule.total_steps = shape.total_steps;
  schedule.warmup_steps = config.warmup < 1.0
                              ? static_cast<int64_t>(std::llround(config.warmup * shape.total_steps))
                              : static_cast<int64_t>(config.warmup);
  schedule.floor_ratio = config.min_lr_ratio;
  schedule.offset_steps = (config.prior_tokens + shape.tokens_per_step / 2) / shape.tokens_per_step;
  return schedule;
}

// sum += micro / grad_accum for every scalar, in fp64 on the device.
void accumulate_scalars(StepScalars& sum, const StepScalars& micro, int64_t grad_accum) {
  for (const auto& [key, value] : micro) {
    const torch::Tensor share = value.detach().to(torch::kFloat64) / static_cast<double>(grad_accum);
    auto it = sum.find(key);
    if (it == sum.end())
      sum.emplace(key, share);
    else
      it->second.add_(share);
  }
}

// The step's scalars read back in one transfer, then averaged over ranks in one collective (the loss first).
void mean_over_ranks(const StepScalars& scalars, Distributed& dist, StepRecord& record) {
  std::vector<torch::Tensor> values{scalars.at("loss").reshape({})};
  for (const auto& [key, value] : scalars)
    if (key != "loss") values.push_back(value.reshape({}));
  const torch::Tensor host = torch::stack(values).cpu();
  const double* read = host.data_ptr<double>();
  const std::vector<double> sums = dist.sum(std::vector<double>(read, read + values.size()));
  record.loss = sums[0] / dist.world_size();
  size_t k = 1;
  for (const auto& [key, value] : scalars)
    if (key != "loss") record.task_metrics[key] = sums[k++] / dist.world_size();
}

// An optimizer step's forward and backward passes: `grad_accum` micro-batches of
// this rank's slice of the global batch at `cursor`, the gradients meeting across
// ranks after the last. Returns the loss and task scalars averaged over micro-steps and ranks.
StepRecord accumulate_gradients(TrainTask& task, SequenceSampler& sampler, const DataCursor& cursor,
                                TrainingOptimizer& optimizer, const TrainConfig& config, Distributed& dist,
                                const torch::Device& device) {
  optimizer.zero_grad();
  StepScalars sums{{"loss", torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(device))}};
  for (int64_t micro = 0; micro < config.grad_accum; ++micro) {
    const int64_t offset = (micro * dist.world_size() + dist.rank()) * config.micro_batch;
    const torch::Tensor batch = sampler.batch(cursor, offset, config.micro_batch).to(device);
    StepScalars scalars;
    torch::Tensor loss;
    {
      Autocast autocast(device);
      loss = task.loss(batch, scalars);
    }
    (loss / static_cast<double>(config.grad_accum)).backward();
    optimizer.after_backward(micro + 1 == config.grad_accum);
    scalars["loss"] = loss.detach();
    accumulate_scalars(sums, scalars, config.grad_accum);
  }
  StepRecord record;
  mean_over_ranks(sums, dist, record);
  return record;
}

// The NaN guard: a step whose loss or gradient norm is not finite stops the run before its update.
void refuse_non_finite(const StepRecord& step, const TrainResult& result) {
  if (std::isfinite(step.loss) && std::isfinite(step.grad_norm)) return;
  fail("non-finite ", std::isfinite(step.loss) ? "gradient norm" : "loss", " at step ", result.steps + 1,
       " (loss ", step.loss, ", grad norm ", step.grad_norm, "); stopped without writing a checkpoint",
       result.last_checkpoint.empty() ? std::string() : "; the last good one is " + result.last_checkpoint);
}

std::string progress_status(const StepRecord& step) {
  std::ostringstream status;
  status.precision(4);
  status << "loss " << step.loss << ", " << static_cast<int64_t>(step.tokens_per_s) << " tok/s";
  return status.str();
}

bool every(int64_t period, int64_t step) { return period > 0 && step % period == 0; }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The description and the memory plan, logged once the run's inputs (its resume included) are checked.
void announce(const TrainRun& run, bool main, MetricsLog& metrics, int64_t step) {
  if (main && !run.description.empty()) log::info(run.description);
  if (run.meta.contains("data_mixture")) metrics.write_data_mixture(run.meta["data_mixture"], step);
  if (!run.memory_plan) return;
  if (main) log::info(run.memory_plan->table());
  metrics.write_memory_plan(*run.memory_plan, step);
}

// The step's record, once its update is done and the run's position has moved past it.
void complete_step(StepRecord& step, TrainResult& result, double lr,
                   std::chrono::steady_clock::time_point start, const RunShape& shape, const MfuMeter& mfu) {
  step.step = result.steps;
  step.tokens = result.tokens;
  step.lr = lr;
  step.tokens_per_s = shape.tokens_per_step / std::max(seconds_since(start), 1e-9);
  step.mfu = mfu.mfu(step.tokens_per_s);
}

// What the loop's helpers below reach: the run's inputs and its parts.
struct Loop {
  TrainTask& task;
  const TrainConfig& config;
  Distributed& dist;
  const TrainRun& run;
  const torch::Device device;
  TrainingOptimizer& optimizer;
  MetricsLog& metrics;
};

// A held-out evaluation at the run's position, into the result and metrics.jsonl.
void evaluate(const Loop& loop, TrainResult& result) {
  if (loop.run.eval_docs.empty()) return;
  loop.optimizer.before_eval();
  const EvalPoint point = evaluate_held_out(loop.task, loop.run.eval_docs, loop.dist, loop.device,
                                            loop.config.eval_docs, result.steps, result.tokens);
  loop.optimizer.after_eval();
  result.evals.push_back(point);
  loop.metrics.write_eval(point);
  if (loop.dist.is_main()) log::info(loop.run.label, " step ", point.step, ": held-out NLL ", point.mean_nll);
}

// A stop before the end (a signal, or --stop-after): a checkpoint to resume from, the model left whole.
TrainResult stop_early(const Loop& loop, Checkpointer& checkpointer, TrainResult& result,
                       const DataCursor& cursor, Progress& progress, int64_t total_steps) {
  checkpointer.save(loop.task, loop.optimizer, result, cursor);
  loop.optimizer.finish();
  result.stopped_early = true;
  if (!loop.dist.is_main()) return result;
  progress.finish();
  log::info(loop.run.label, " stopped at step ", result.steps, " of ", total_steps, "; checkpoint ",
            result.last_checkpoint, " (continue with --resume)");
  return result;
}

}  // namespace

TrainResult train(TrainTask& task, SequenceSampler& sampler, const TrainConfig& config, Distributed& dist,
                  const TrainRun& run) {
  const torch::Device device = task.model()->model->embed_tokens->weight.device();
  const RunShape shape = run_shape(config, task.model()->config(), dist.world_size());
  std::vector<ParamGroup> groups = task.param_groups(config);
  if (!run.resume) dist.broadcast(parameters_of(groups));  // every rank starts from rank 0's weights
  const LrSchedule schedule = run_schedule(config, shape);
  const auto optimizer = make_training_optimizer(std::move(groups), config, dist);
  Checkpointer checkpointer(run, config, dist, &sampler);
  TrainResult result;
  DataCursor cursor;
  if (run.resume) checkpointer.resume(task, *optimizer, result, cursor);
  // ZeRO-3 holds a layer's weights only while it runs, so backward recomputes its activations.
  task.model()->activation_checkpointing = config.activation_checkpointing || config.zero == 3;
  optimizer->attach(task);
  MetricsLog metrics(run.out_dir + "/metrics.jsonl", dist.is_main(),
                     run.resume ? std::optional<int64_t>(result.steps) : std::nullopt);
  announce(run, dist.is_main(), metrics, result.steps);
  const Loop loop{task, config, dist, run, device, *optimizer, metrics};
  if (!run.resume) evaluate(loop, result);  // the starting point
  const StopSignals signals;
  Progress progress(run.label, shape.total_steps, "steps");
  const MfuMeter mfu(device, task.model()->config(), shape.seq_len, dist.world_size());
  task.model()->train();
  for (int64_t steps_this_run = 1; result.steps < shape.total_steps; ++steps_this_run) {
    const auto start = std::chrono::steady_clock::now();
    StepRecord step = accumulate_gradients(task, sampler, cursor, *optimizer, config, dist, device);
    cursor = sampler.advance(cursor, shape.sequences_per_step);
    step.grad_norm = optimizer->clip_grad_norm(config.grad_clip);
    refuse_non_finite(step, result);
    const double factor = schedule.factor(result.steps);
    optimizer->step(factor);
    result.steps += 1;
    result.tokens += shape.tokens_per_step;
    result.last_loss = step.loss;
    task.after_step(result.steps, shape.total_steps, step.task_metrics);
    complete_step(step, result, config.lr * factor, start, shape, mfu);
    const bool last = result.steps == shape.total_steps;
    if (every(std::max<int64_t>(config.log_every, 1), result.steps) || last) metrics.write_step(step);
    if (dist.is_main() && run.show_progress) progress.update(result.steps, progress_status(step));
    if (every(config.eval_every, result.steps) && !last) evaluate(loop, result);
    const bool stop = signals.raised() || (config.stop_after > 0 && steps_this_run >= config.stop_after);
    if (dist.max(stop ? 1.0 : 0.0) > 0 && !last)
      return stop_early(loop, checkpointer, result, cursor, progress, shape.total_steps);
    if (every(config.checkpoint_every, result.steps) && !last)
      checkpointer.save(task, *optimizer, result, cursor);
  }
  if (dist.is_main() && run.show_progress) progress.finish();
  evaluate(loop, result);
  if (run.final_checkpoint || config.checkpoint_every > 0)
    checkpointer.save(task, *optimizer, result, cursor);
  optimizer->finish();  // ZeRO: the optimizer state goes, every weight whole again
  task.model()->eval();
  metrics.write_memory_peaks(result.steps, device, run.memory_plan);
  return result;
}

}  // namespace dha
