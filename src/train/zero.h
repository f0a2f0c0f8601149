// ZeRO-sharded data parallelism (stages 1-3) on c10d, for the training loop.
//
// The trainable parameters are packed, per parameter group and decoder layer,
// into flat fp32 "units" padded to a multiple of the world size; the
// parameters become views of their unit's buffer. Rank r owns elements
// [r * shard, (r + 1) * shard) of every unit: its slice of the weights is the
// fp32 master copy, and only that slice has AdamW moments (stage >= 1) and a
// reduced gradient. Gradients reach the shards by reduce-scatter (mean), the
// updated weights go back by all-gather.
//   stage 1: the whole gradients are kept until the step's last micro-step;
//   stage 2: each unit is reduced as soon as backward has produced all its
//            gradients (a post-accumulate hook per parameter), and freed;
//   stage 3: as 2, and a decoder layer's weights exist whole only while the
//            layer runs (forward, and its recomputation in backward; on CUDA
//            the next layer's gather issued early); the embedding only while
//            it runs, the final norm and head from their forward until their
//            gradient is reduced. A task's parameters outside the model stay whole.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/distributed.h"
#include "dha/model.h"
#include "dha/optim.h"

namespace dha {
struct TrainCheckpoint;

namespace train_detail {

// Elements per rank of a unit of `numel` elements: the unit is padded to shard * world.
inline int64_t shard_size(int64_t numel, int world) { return (numel + world - 1) / world; }

// The units of a parameter list: name, parameter names and element counts, in
// the order every rank packs them (what a sharded checkpoint's manifest holds).
nlohmann::json zero_manifest_units(const std::vector<ParamGroup>& groups);
// The ranks of a sharded checkpoint (manifest `zero`) whose files rank `rank`
// of `world` reads to restore its slices.
std::vector<int> shards_to_read(const nlohmann::json& zero, int rank, int world);

class ZeroOptimizer : public LayerWeightSource {
 public:
  // groups' parameters must be fp32, contiguous and equal on every rank (the
  // loop broadcasts rank 0's first).
  ZeroOptimizer(std::vector<ParamGroup> groups, int stage, Distributed& dist, double beta1, double beta2, double eps);
  ~ZeroOptimizer() override;
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  // Stage 3: the model gathers its layers from here; their whole weights are
  // dropped now (call after any resume), except those `keep_whole` names
  // (read outside the model's forward). No-op for stages 1 and 2.
  void attach(Llama& model, const std::function<bool(const std::string&)>& keep_whole = {});
  // Weights whole on every rank and the model no longer gathering (held-out
  // evaluation, the end of training), and back.
  void gather_everything();
  void release_everything();

  // The end of training: the optimizer state is freed first, then every
  // weight made whole on every rank (the model is then an ordinary one).
  void finish();

  void zero_grad();
  // After a micro-step's backward; `last`: the optimizer step's last one.
  void after_backward(bool last);
  // The global L2 norm of the clipped groups' gradients (the shards' squares
  // summed over ranks), clipped to max_norm (<= 0: no clipping).
  double clip_grad_norm(double max_norm);
  void step(double schedule_factor);
  int64_t steps() const { return steps_; }

  // Checkpoints: this rank's slices ("unit.<i>.weights|exp_avg|exp_avg_sq"),
  // the manifest, the parameter names the shards hold; load() restores from a
  // sharded checkpoint of any world size (re-sharding) and makes every weight
  // whole and current (call before attach()).
  TensorMap shard_state() const;
  nlohmann::json manifest() const;
  const std::set<std::string>& sharded_names() const { return names_; }
  void load(const TrainCheckpoint& checkpoint);

  // LayerWeightSource (stage 3).
  void gather(int64_t slot, bool backward) override;
  void release(int64_t slot) override;

  // Called by the post-accumulate hook of parameter `index` (stages 2 and 3).
  void gradient_ready(size_t index);

 private:
  struct Param;
  struct Unit;
  void reduce(Unit& unit);
  void hold(Unit& unit);       // all-gathers the unit's weights (waits for a prefetch)
  void prefetch(int64_t slot);
  void drop(Unit& unit);       // releases the unit's whole weights
  void set_views(Unit& unit);  // the parameters as views of unit.full
  std::vector<Unit*> slot_units(int64_t slot);

  std::vector<ParamGroup> groups_;
  int stage_;
  Distributed& dist_;
  double beta1_, beta2_, eps_;
  int64_t steps_ = 0;
  std::vector<Param> params_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::set<std::string> names_;
  Llama* model_ = nullptr;  // stage 3, once attached
  bool gathering_ = false;  // stage 3: layers are gathered on demand
  bool prefetch_ = false;   // stage 3 on CUDA: the next layer's gather issued early
};

}  // namespace train_detail
}  // namespace dha
