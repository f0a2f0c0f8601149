// ZeRO's parameters: every trained tensor moved into a flat fp32 buffer of its
// own (shard_layout.h), the parameter a view of it, and this rank's slice of
// the buffer the fp32 master copy that the sharded AdamW updates.
//
// Under ZeRO-3 it is also the model's LayerWeightSource: a decoder layer's
// weights exist whole only while the layer runs (forward, and its
// recomputation in backward; on CUDA the next layer's gather issued early), the
// embedding only while it runs, the final norm and head from their forward
// until their gradient is reduced. A task's parameters outside the model, and
// those it reads outside the forward, stay whole.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/distributed.h"
#include "dha/model.h"
#include "dha/optim.h"

namespace dha::train_detail {

class ParameterSharder : public LayerWeightSource {
 public:
  // groups' parameters must be fp32, contiguous and equal on every rank (the
  // loop broadcasts rank 0's first).
  ParameterSharder(const std::vector<ParamGroup>& groups, Distributed& dist);
  ~ParameterSharder() override;
  ParameterSharder(const ParameterSharder&) = delete;
  ParameterSharder& operator=(const ParameterSharder&) = delete;

  // The units, one per parameter, in packing order (the groups', each group's
  // parameters): the same on every rank, and the order of every collective.
  size_t size() const { return units_.size(); }
  const std::string& name(size_t unit) const;
  size_t group(size_t unit) const;          // index into the groups
  int64_t numel(size_t unit) const;         // the parameter's elements
  int64_t padded_numel(size_t unit) const;  // the unit's: shard * world
  torch::Tensor& parameter(size_t unit);
  torch::Tensor& master(size_t unit);  // [shard]: this rank's fp32 slice
  const std::set<std::string>& names() const { return names_; }
  // Each unit's name and element count: what a sharded checkpoint's manifest lists.
  nlohmann::json manifest_units() const;

  // Every rank's slices (updated by a step, or restored) into the whole
  // weights of the units that are whole; a unit held on demand is gathered
  // when its part next runs.
  void all_gather_whole();

  // ZeRO-3: the model gathers its parts from here, and their whole weights
  // are dropped now (call after any resume), except those `keep_whole` names.
  void attach(Llama& model, const std::function<bool(const std::string&)>& keep_whole);
  void gather(int64_t part, bool backward) override;
  void release(int64_t part) override;
  // After `unit`'s gradient is reduced: the head's weights, kept whole for backward, go.
  void gradient_reduced(size_t unit);
  // Weights whole on every rank and the model no longer gathering (held-out evaluation), and back.
  void gather_everything();
  void release_everything();
  // The end of training: every weight whole on every rank for good.
  void make_whole();

 private:
  struct Unit;
  void hold(Unit& unit);  // all-gathers the unit's weights (waits for a prefetch)
  void prefetch(int64_t part);
  void drop(Unit& unit);       // releases the unit's whole weights
  void set_views(Unit& unit);  // the parameter as a view of the unit's buffer
  std::vector<Unit*> part_units(int64_t part);

  Distributed& dist_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::set<std::string> names_;
  Llama* model_ = nullptr;  // ZeRO-3, once attached
  bool gathering_ = false;  // ZeRO-3: parts are gathered on demand
  bool prefetch_ = false;   // ZeRO-3 on CUDA: the next layer's gather issued early
};

}  // namespace dha::train_detail
