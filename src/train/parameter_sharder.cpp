// ZeRO's flat padded parameter buffers, their all-gathers, and ZeRO-3's
// gathering of the model's parts as they run.
#include "parameter_sharder.h"

#include <ATen/autocast_mode.h>

#include "dha/error.h"
#include "shard_layout.h"

namespace dha::train_detail {

struct ParameterSharder::Unit {
  std::string name;
  size_t group = 0;
  torch::Tensor parameter;
  std::vector<int64_t> shape;
  int64_t numel = 0, shard = 0;
  int64_t layer = -1;  // decoder layer, or -1: not in one
  // ZeRO-3: the part that gathers it (LayerWeightSource's index: -1 the
  // embedding, 0..L-1 a decoder layer, L the final norm and head), and whether
  // it stays whole from then until its gradient is reduced (the head's
  // weights, which backward reads; a tied embedding, which the head reads).
  int64_t part = 0;
  bool until_gradient = false;
  bool on_demand = false;  // whole only while its part runs
  bool held = true;        // `full` holds the whole weights and the parameter views it
  torch::Tensor full;      // [shard * world] weights
  torch::Tensor master;    // [shard] this rank's slice (a view of `full` unless on demand)
  Distributed::Pending prefetch;
};

namespace {

// "model.layers.<l>." names the decoder layer a parameter belongs to.
int64_t layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  size_t used = 0;
  try {
    const int64_t layer = std::stoll(name.substr(prefix.size()), &used);
    return name.size() > prefix.size() + used && name[prefix.size() + used] == '.' ? layer : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

ParameterSharder::ParameterSharder(const std::vector<ParamGroup>& groups, Distributed& dist) : dist_(dist) {
  torch::NoGradGuard no_grad;
  const int world = dist_.world_size(), rank = dist_.rank();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const auto& [name, tensor] : groups[g].params) {
      if (!names_.insert(name).second) fail("ZeRO: parameter '", name, "' is in two groups");
      if (tensor.scalar_type() != torch::kFloat32 || !tensor.is_contiguous())
        fail("ZeRO: parameter '", name, "' is ", tensor.scalar_type(),
             (tensor.is_contiguous() ? "" : ", not contiguous"), "; sharded training keeps fp32 weights");
      auto unit = std::make_unique<Unit>();
      unit->name = name;
      unit->group = g;
      unit->parameter = tensor;
      unit->shape = tensor.sizes().vec();
      unit->numel = tensor.numel();
      unit->layer = layer_of(name);
      unit->shard = shard_size(unit->numel, world);
      // The parameter moves into its buffer (padded to the world size) and
      // its old storage goes: packing costs one parameter at a time.
      unit->full = torch::zeros({unit->shard * world}, tensor.options().requires_grad(false));
      unit->full.narrow(0, 0, unit->numel).copy_(tensor.detach().reshape({-1}));
      set_views(*unit);
      unit->master = unit->full.narrow(0, rank * unit->shard, unit->shard);
      units_.push_back(std::move(unit));
    }
  }
}

ParameterSharder::~ParameterSharder() {
  if (model_ && (*model_)->layer_weights == this) (*model_)->layer_weights = nullptr;
}

const std::string& ParameterSharder::name(size_t unit) const { return units_.at(unit)->name; }
size_t ParameterSharder::group(size_t unit) const { return units_.at(unit)->group; }
int64_t ParameterSharder::numel(size_t unit) const { return units_.at(unit)->numel; }
int64_t ParameterSharder::padded_numel(size_t unit) const {
  return units_.at(unit)->shard * dist_.world_size();
}
torch::Tensor& ParameterSharder::parameter(size_t unit) { return units_.at(unit)->parameter; }
torch::Tensor& ParameterSharder::master(size_t unit) { return units_.at(unit)->master; }

nlohmann::json ParameterSharder::manifest_units() const {
  nlohmann::json units = nlohmann::json::array();
  for (const auto& unit : units_) units.push_back({{"name", unit->name}, {"numel", unit->numel}});
  return units;
}

void ParameterSharder::set_views(Unit& unit) {
  unit.parameter.set_data(unit.full.narrow(0, 0, unit.numel).view(unit.shape));
  unit.held = true;
}

void ParameterSharder::all_gather_whole() {
  torch::NoGradGuard no_grad;
  for (auto& unit : units_)
    if (unit->held) dist_.all_gather(unit->full, unit->master);  // in place where master is a view of full
}

void ParameterSharder::attach(Llama& model, const std::function<bool(const std::string&)>& keep_whole) {
  torch::NoGradGuard no_grad;
  const int64_t n_layers = model->config().n_layers;
  const bool tied = !model->lm_head;
  for (auto& unit : units_) {
    if (keep_whole(unit->name)) continue;
    if (unit->layer >= 0) {
      unit->part = unit->layer;
    } else if (unit->name.rfind("model.embed_tokens.", 0) == 0) {
      unit->part = -1;
      unit->until_gradient = tied;
    } else if (unit->name.rfind("model.norm.", 0) == 0 || unit->name.rfind("lm_head.", 0) == 0) {
      unit->part = n_layers;
      unit->until_gradient = true;
    } else {
      continue;  // read outside the model's layers (a task's own parameters): always whole
    }
    unit->on_demand = true;
    unit->master = unit->master.clone();  // its own storage: the whole buffer goes
    drop(*unit);
  }
  model_ = &model;
  model->layer_weights = this;
  gathering_ = true;
  prefetch_ = model->model->embed_tokens->weight.device().is_cuda();
}

void ParameterSharder::drop(Unit& unit) {
  // The parameter keeps its shape over one element (stride 0): autograd
  // checks a gradient against its parameter's shape and layout, also while
  // the weights are elsewhere.
  unit.parameter.set_data(torch::zeros({}, unit.master.options()).expand(unit.shape));
  unit.full = torch::Tensor();
  unit.held = false;
}

void ParameterSharder::hold(Unit& unit) {
  if (unit.held) return;
  if (unit.prefetch.active()) {
    unit.prefetch.wait();
  } else {
    unit.full = torch::empty({unit.shard * dist_.world_size()}, unit.master.options());
    dist_.all_gather(unit.full, unit.master);
  }
  set_views(unit);
}

void ParameterSharder::prefetch(int64_t part) {
  for (Unit* unit : part_units(part)) {
    if (unit->held || unit->prefetch.active()) continue;
    unit->full = torch::empty({unit->shard * dist_.world_size()}, unit->master.options());
    unit->prefetch = dist_.all_gather_async(unit->full, unit->master);
  }
}

std::vector<ParameterSharder::Unit*> ParameterSharder::part_units(int64_t part) {
  std::vector<Unit*> out;
  const int64_t head = (*model_)->config().n_layers;
  for (auto& unit : units_)
    if (unit->on_demand && (unit->part == part || (part == head && unit->part == -1 && unit->until_gradient)))
      out.push_back(unit.get());
  return out;
}

void ParameterSharder::gather(int64_t part, bool backward) {
  if (!gathering_) return;
  torch::NoGradGuard no_grad;
  for (Unit* unit : part_units(part)) hold(*unit);
  // On CUDA the next layer's gather runs (on NCCL's stream) while this one
  // computes. Not on the CPU: there it would only hold two layers at once.
  const int64_t next = backward ? part - 1 : part + 1;
  if (prefetch_ && next >= 0 && next < (*model_)->config().n_layers) prefetch(next);
}

void ParameterSharder::release(int64_t part) {
  if (!gathering_) return;
  // Under autograd, what backward still reads stays until its gradient is reduced.
  const bool recording = torch::GradMode::is_enabled();
  for (Unit* unit : part_units(part))
    if (!(recording && unit->until_gradient)) drop(*unit);
  // The layer's low-precision copies in autocast's cache go with it.
  if (prefetch_) at::autocast::clear_cache();
}

void ParameterSharder::gradient_reduced(size_t index) {
  Unit& unit = *units_.at(index);
  if (gathering_ && unit.on_demand && unit.until_gradient && unit.held) drop(unit);
}

void ParameterSharder::gather_everything() {
  if (!gathering_) return;
  torch::NoGradGuard no_grad;
  for (auto& unit : units_)
    if (unit->on_demand) hold(*unit);
  gathering_ = false;
  (*model_)->layer_weights = nullptr;
}

void ParameterSharder::release_everything() {
  if (!model_ || gathering_) return;
  for (auto& unit : units_)
    if (unit->on_demand) drop(*unit);
  gathering_ = true;
  (*model_)->layer_weights = this;
}

void ParameterSharder::make_whole() {
  torch::NoGradGuard no_grad;
  for (auto& unit : units_) {
    if (!unit->on_demand || unit->held) continue;
    hold(*unit);
    unit->master = unit->full.narrow(0, dist_.rank() * unit->shard, unit->shard);  // its own copy goes
  }
  gathering_ = false;
  if (model_) (*model_)->layer_weights = nullptr;
}

}  // namespace dha::train_detail
