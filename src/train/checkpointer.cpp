// Saving a run's checkpoints, and resuming from one after checking it fits.
#include "checkpointer.h"

#include <cstring>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include "dha/error.h"
#include "dha/log.h"
#include "reshard_reader.h"

namespace dha::train_detail {
using nlohmann::json;

namespace {

// Options that may change between a run and its resume: they do not change what is computed.
constexpr const char* kResumeFreeKeys[] = {"stop_after", "dist_timeout_s", "eval_every",
                                           "eval_docs",  "log_every",      "keep_checkpoints"};

// The CPU generator's state: whatever a task draws from it continues on resume as it would have.
json rng_state() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  const torch::Tensor state = generator.get_state();
  const uint8_t* p = state.data_ptr<uint8_t>();
  return json{{"cpu", std::vector<uint8_t>(p, p + state.numel())}};
}

void restore_rng_state(const json& j) {
  const auto bytes = j.at("cpu").get<std::vector<uint8_t>>();
  torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

}  // namespace

void check_resumable(const TrainingState& ck, bool sharded_run, const json& meta, int world_size) {
  const bool sharded = !ck.zero.is_null();
  if (sharded != sharded_run)
    fail(ck.path, ": written with --zero ", sharded ? ck.zero.value("stage", 1) : 0,
         "; resume it with --zero ", sharded ? "1, 2 or 3 (they read each other's checkpoints)" : "0");
  if (!sharded && ck.world_size != world_size)
    fail(ck.path, ": written by a run of ", ck.world_size, " processes, this one has ", world_size,
         " (resume with the same world size; checkpoints of --zero 1, 2 and 3 re-shard)");
  if (ck.meta.value("model_config", json()) != meta.value("model_config", json()))
    fail(ck.path, ": the checkpoint is of a different model than the one given");
  if (ck.meta.value("data_mixture", json()) != meta.value("data_mixture", json()))
    fail(ck.path, ": the checkpoint's data mixture is ", ck.meta.value("data_mixture", json()).dump(), ", this run's ",
         meta.value("data_mixture", json()).dump(), "; resume with the same --data sources and weights");
  json saved = ck.meta.value("train_config", json::object()),
       given = meta.value("train_config", json::object());
  auto global_batch = [](const json& c, int world) {
    return world * c.value("micro_batch", int64_t{0}) * c.value("grad_accum", int64_t{0});
  };
  if (global_batch(saved, ck.world_size) != global_batch(given, world_size))
    fail(ck.path, ": the checkpoint's global batch is ", global_batch(saved, ck.world_size), " sequences (",
         ck.world_size, " ranks x --batch x --grad-accum), this run's is ", global_batch(given, world_size),
         "; keep ranks x --batch x --grad-accum equal");
  for (json* c : {&saved, &given}) {
    for (const char* free_key : kResumeFreeKeys) c->erase(free_key);
    for (const char* key : {"micro_batch", "grad_accum", "zero"}) c->erase(key);  // checked above
  }
  if (saved != given)
    fail(ck.path, ": the training options differ from the checkpoint's (", saved.dump(), " vs ", given.dump(),
         "); resume with the same options");
}

Checkpointer::Checkpointer(const TrainRun& run, const TrainConfig& config, Distributed& dist,
                           const SequenceSampler* sampler)
    : root_(run.out_dir + "/checkpoints"),
      meta_(run.meta),
      keep_(static_cast<int>(config.keep_checkpoints)),
      dist_(dist),
      sampler_(sampler) {
  meta_["train_config"] = train_config_to_json(config);
}

void Checkpointer::resume(TrainTask& task, TrainingOptimizer& optimizer, TrainResult& result,
                          DataCursor& cursor) {
  const int rank = dist_.rank(), world = dist_.world_size();
  const std::optional<TrainingState> ck = load_latest_training_state(
      root_, dist_, [&](const TrainingState& c) { return shards_to_read(c.zero, rank, world); });
  if (!ck) fail(root_, ": no checkpoint to resume from");
  check_resumable(*ck, optimizer.sharded(), meta_, world);
  optimizer.load_state(task, *ck);
  task.load_extra_state(ck->meta.value("task", json::object()));
  restore_rng_state(ck->meta.at("rng"));
  result.steps = ck->step;
  result.tokens = ck->tokens;
  result.last_checkpoint = ck->path;
  cursor = ck->cursor;
  if (dist_.is_main())
    log::info("resumed from ", ck->path, " at step ", ck->step,
              optimizer.sharded() && ck->world_size != world
                  ? " (re-sharded from " + std::to_string(ck->world_size) + " ranks)"
                  : std::string());
}

void Checkpointer::save(TrainTask& task, TrainingOptimizer& optimizer, TrainResult& result,
                        const DataCursor& cursor) {
  TrainingState state;
  state.step = result.steps;
  state.tokens = result.tokens;
  state.cursor = cursor;
  state.world_size = dist_.world_size();
  state.meta = meta_;
  state.meta["rng"] = rng_state();
  state.meta["task"] = task.extra_state();
  if (sampler_ && sampler_->source_count() > 1) {
    // Each source's own cursor, as the global one places it (a record: resume
    // recomputes it from the cursor, the seed and the weights).
    json sources = json::array();
    const std::vector<SourcePosition> positions = sampler_->positions(cursor);
    for (size_t s = 0; s < positions.size(); ++s)
      sources.push_back({{"source", s},
                         {"sequences_per_period", sampler_->source_share(static_cast<int64_t>(s))},
                         {"sequences", positions[s].sequences},
                         {"epoch", positions[s].epoch},
                         {"index", positions[s].index}});
    state.meta["data_sources"] = sources;
  }
  const TensorMap shard = optimizer.save_state(task, state);
  std::string path;
  if (optimizer.sharded()) {
    path = save_sharded_training_state(root_, state, shard, dist_, keep_);
  } else {
    if (dist_.is_main()) path = save_training_state(root_, state, keep_);
    dist_.barrier();
  }
  if (dist_.is_main()) result.last_checkpoint = path;
}

}  // namespace dha::train_detail
