// ZeRO stages 1-3: flat padded units, reduce-scatter, all-gather, sharded AdamW.
#include "zero.h"

#include <cmath>
#include <map>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <ATen/autocast_mode.h>

#include "dha/error.h"
#include "dha/io/safetensors.h"
#include "dha/train_checkpoint.h"

namespace dha::train_detail {
using nlohmann::json;

struct ZeroOptimizer::Param {
  std::string name;
  torch::Tensor tensor;
  std::vector<int64_t> shape;
  int64_t numel = 0, offset = 0;  // within the unit
  size_t unit = 0;
  bool arrived = false;  // its gradient is in the unit's pending buffer
};

struct ZeroOptimizer::Unit {
  std::string name;
  size_t group = 0;
  int64_t layer = -1;  // decoder layer, or -1: not in one
  // Stage 3: where the model gathers it (LayerWeightSource's index: -1 the
  // embedding, 0..L-1 a decoder layer, L the final norm and head), and whether
  // it stays whole from then until its gradient is reduced (the head's
  // weights, which backward reads; a tied embedding, which the head reads).
  int64_t slot = 0;
  bool until_gradient = false;
  std::vector<size_t> params;
  int64_t numel = 0, shard = 0;
  bool on_demand = false;  // stage 3 layer unit: whole only while its layer runs
  bool held = true;        // `full` holds the whole weights and the parameters view it
  torch::Tensor full;      // [shard * world] weights
  torch::Tensor master;    // [shard] this rank's slice (a view of `full` unless on demand)
  torch::Tensor exp_avg, exp_avg_sq;
  torch::Tensor grad;      // [shard] reduced gradient of the step so far
  torch::Tensor pending;   // [shard * world] this micro-step's gradients, before the reduce
  size_t arrived = 0;
  bool reduced = false;    // reduced in this micro-step
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

// Visits the parameters in packing order, each its own unit: a unit's
// gradient can then be reduced the moment backward produces it, and the
// largest transient is one parameter's, whatever the layer sizes.
template <class F>
void for_each_unit(const std::vector<ParamGroup>& groups, F&& f) {
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t i = 0; i < groups[g].params.size(); ++i) f(g, i);
}

struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReadyHook(ZeroOptimizer* owner, size_t index) : owner(owner), index(index) {}
  void operator()(const torch::autograd::Variable&) override { owner->gradient_ready(index); }
  ZeroOptimizer* owner;
  size_t index;
};

}  // namespace

json zero_manifest_units(const std::vector<ParamGroup>& groups) {
  json units = json::array();
  for_each_unit(groups, [&](size_t g, size_t i) {
    units.push_back({{"name", groups[g].params[i].first}, {"numel", groups[g].params[i].second.numel()}});
  });
  return units;
}

ZeroOptimizer::ZeroOptimizer(std::vector<ParamGroup> groups, int stage, Distributed& dist, double beta1, double beta2,
                             double eps)
    : groups_(std::move(groups)), stage_(stage), dist_(dist), beta1_(beta1), beta2_(beta2), eps_(eps) {
  if (stage_ < 1 || stage_ > 3) fail("ZeRO stage ", stage_, " is not 1, 2 or 3");
  torch::NoGradGuard no_grad;
  const int world = dist_.world_size(), rank = dist_.rank();
  for_each_unit(groups_, [&](size_t g, size_t i) {
    auto unit = std::make_unique<Unit>();
    unit->name = groups_[g].params[i].first;
    unit->group = g;
    unit->layer = layer_of(unit->name);
    {
      const auto& [name, tensor] = groups_[g].params[i];
      if (!names_.insert(name).second) fail("ZeRO: parameter '", name, "' is in two groups");
      if (tensor.scalar_type() != torch::kFloat32 || !tensor.is_contiguous())
        fail("ZeRO: parameter '", name, "' is ", tensor.scalar_type(),
             (tensor.is_contiguous() ? "" : ", not contiguous"), "; sharded training keeps fp32 weights");
      Param p;
      p.name = name;
      p.tensor = tensor;
      p.shape = tensor.sizes().vec();
      p.numel = tensor.numel();
      p.offset = unit->numel;
      p.unit = units_.size();
      unit->numel += p.numel;
      unit->params.push_back(params_.size());
      params_.push_back(std::move(p));
    }
    unit->shard = shard_size(unit->numel, world);
    const auto options = params_[unit->params.front()].tensor.options().requires_grad(false);
    // A parameter moves into its unit's buffer (padded to the world size) and
    // its old storage goes: packing costs one parameter at a time.
    unit->full = torch::zeros({unit->shard * world}, options);
    for (const size_t k : unit->params) {
      Param& p = params_[k];
      unit->full.narrow(0, p.offset, p.numel).copy_(p.tensor.detach().reshape({-1}));
    }
    set_views(*unit);
    unit->master = unit->full.narrow(0, rank * unit->shard, unit->shard);
    unit->exp_avg = torch::zeros({unit->shard}, options);
    unit->exp_avg_sq = torch::zeros({unit->shard}, options);
    units_.push_back(std::move(unit));
  });
  if (stage_ >= 2)
    for (size_t i = 0; i < params_.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(params_[i].tensor, std::make_unique<GradReadyHook>(this, i));
}

ZeroOptimizer::~ZeroOptimizer() {
  if (stage_ >= 2)
    for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p.tensor, nullptr);
  if (model_ && (*model_)->layer_weights == this) (*model_)->layer_weights = nullptr;
}

void ZeroOptimizer::set_views(Unit& unit) {
  for (const size_t i : unit.params) {
    Param& p = params_[i];
    p.tensor.set_data(unit.full.narrow(0, p.offset, p.numel).view(p.shape));
  }
  unit.held = true;
}


void ZeroOptimizer::attach(Llama& model, const std::function<bool(const std::string&)>& keep_whole) {
  if (stage_ < 3) return;
  torch::NoGradGuard no_grad;
  const int64_t n_layers = model->config().n_layers;
  const bool tied = !model->lm_head;
  for (auto& unit : units_) {
    if (keep_whole && keep_whole(unit->name)) continue;
    if (unit->layer >= 0) {
      unit->slot = unit->layer;
    } else if (unit->name.rfind("model.embed_tokens.", 0) == 0) {
      unit->slot = -1;
      unit->until_gradient = tied;
    } else if (unit->name.rfind("model.norm.", 0) == 0 || unit->name.rfind("lm_head.", 0) == 0) {
      unit->slot = n_layers;
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

void ZeroOptimizer::drop(Unit& unit) {
  // The parameter keeps its shape over one element (stride 0): autograd
  // checks a gradient against its parameter's shape and layout, also while
  // the weights are elsewhere.
  const auto placeholder = torch::zeros({}, unit.master.options());
  for (const size_t i : unit.params) {
    Param& p = params_[i];
    p.tensor.set_data(placeholder.expand(p.shape));
  }
  unit.full = torch::Tensor();
  unit.held = false;
}

void ZeroOptimizer::hold(Unit& unit) {
  if (unit.held) return;
  if (unit.prefetch.active()) {
    unit.prefetch.wait();
  } else {
    unit.full = torch::empty({unit.shard * dist_.world_size()}, unit.master.options());
    dist_.all_gather(unit.full, unit.master);
  }
  set_views(unit);
}

void ZeroOptimizer::prefetch(int64_t slot) {
  for (Unit* unit : slot_units(slot)) {
    if (unit->held || unit->prefetch.active()) continue;
    unit->full = torch::empty({unit->shard * dist_.world_size()}, unit->master.options());
    unit->prefetch = dist_.all_gather_async(unit->full, unit->master);
  }
}

std::vector<ZeroOptimizer::Unit*> ZeroOptimizer::slot_units(int64_t slot) {
  std::vector<Unit*> out;
  const int64_t head = (*model_)->config().n_layers;
  for (auto& unit : units_)
    if (unit->on_demand && (unit->slot == slot || (slot == head && unit->slot == -1 && unit->until_gradient)))
      out.push_back(unit.get());
  return out;
}

void ZeroOptimizer::gather(int64_t slot, bool backward) {
  if (!gathering_) return;
  torch::NoGradGuard no_grad;
  for (Unit* unit : slot_units(slot)) hold(*unit);
  // On CUDA the next layer's gather runs (on NCCL's stream) while this one
  // computes. Not on the CPU: there it would only hold two layers at once.
  const int64_t next = backward ? slot - 1 : slot + 1;
  if (prefetch_ && next >= 0 && next < (*model_)->config().n_layers) prefetch(next);
}

void ZeroOptimizer::release(int64_t slot) {
  if (!gathering_) return;
  // Under autograd, what backward still reads stays until its gradient is reduced.
  const bool recording = torch::GradMode::is_enabled();
  for (Unit* unit : slot_units(slot))
    if (!(recording && unit->until_gradient)) drop(*unit);
  // The layer's low-precision copies in autocast's cache go with it.
  if (prefetch_) at::autocast::clear_cache();
}

void ZeroOptimizer::gather_everything() {
  if (!gathering_) return;
  torch::NoGradGuard no_grad;
  for (auto& unit : units_)
    if (unit->on_demand) hold(*unit);
  gathering_ = false;
  (*model_)->layer_weights = nullptr;
}

void ZeroOptimizer::release_everything() {
  if (!model_ || gathering_) return;
  for (auto& unit : units_)
    if (unit->on_demand) drop(*unit);
  gathering_ = true;
  (*model_)->layer_weights = this;
}

void ZeroOptimizer::zero_grad() {
  for (auto& unit : units_) {
    unit->grad = torch::Tensor();
    unit->pending = torch::Tensor();
    unit->arrived = 0;
    unit->reduced = false;
  }
  for (auto& p : params_) {
    p.tensor.mutable_grad().reset();
    p.arrived = false;
  }
}

void ZeroOptimizer::gradient_ready(size_t index) {
  torch::NoGradGuard no_grad;
  Param& p = params_[index];
  Unit& unit = *units_[p.unit];
  const torch::Tensor grad = p.tensor.grad();
  if (!grad.defined()) return;
  const bool exact = unit.params.size() == 1 && unit.shard * dist_.world_size() == unit.numel;
  if (exact && !p.arrived && !unit.pending.defined() && grad.is_contiguous() &&
      grad.scalar_type() == torch::kFloat32) {
    unit.pending = grad.reshape({-1});  // reduced from backward's own buffer, no copy
    p.arrived = true;
    ++unit.arrived;
    p.tensor.mutable_grad().reset();
    reduce(unit);
    return;
  }
  if (!unit.pending.defined()) unit.pending = torch::zeros({unit.shard * dist_.world_size()}, unit.master.options());
  torch::Tensor slot = unit.pending.narrow(0, p.offset, p.numel);
  if (p.arrived) {
    slot.add_(grad.reshape({-1}));
  } else {
    slot.copy_(grad.reshape({-1}));
    p.arrived = true;
    ++unit.arrived;
  }
  // The gradient now lives in the unit's buffer only; released, so that
  // backward's next gradient of this parameter is a fresh tensor.
  p.tensor.mutable_grad().reset();
  if (unit.arrived == unit.params.size()) reduce(unit);
}

void ZeroOptimizer::reduce(Unit& unit) {
  if (!unit.pending.defined()) unit.pending = torch::zeros({unit.shard * dist_.world_size()}, unit.master.options());
  torch::Tensor mine = torch::empty({unit.shard}, unit.master.options());
  dist_.reduce_scatter_mean(mine, unit.pending);
  unit.pending = torch::Tensor();
  unit.arrived = 0;
  unit.reduced = true;
  for (const size_t i : unit.params) params_[i].arrived = false;
  if (unit.grad.defined()) unit.grad.add_(mine);
  else unit.grad = std::move(mine);
  // Stage 3: the head's weights, kept whole for backward, go once their gradient is in.
  if (gathering_ && unit.on_demand && unit.until_gradient && unit.held) drop(unit);
}

void ZeroOptimizer::after_backward(bool last) {
  torch::NoGradGuard no_grad;
  if (stage_ == 1) {
    if (!last) return;  // the whole gradients accumulate in .grad until the step
    for (size_t i = 0; i < params_.size(); ++i) gradient_ready(i);
  }
  // Units backward did not complete (a parameter without a gradient, or one
  // that received a second one after its unit was reduced), in unit order on
  // every rank.
  for (auto& unit : units_) {
    if (!unit->reduced || unit->pending.defined()) reduce(*unit);
    unit->reduced = false;
  }
}

double ZeroOptimizer::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> squares;
  for (auto& unit : units_)
    if (groups_[unit->group].clipped && unit->grad.defined()) squares.push_back(unit->grad.norm().pow(2));
  // Summed as AdamW::clip_grad_norm sums its tensors' squares, so that one rank computes what ZeRO-0 does.
  const double local = squares.empty() ? 0.0 : torch::stack(squares).sum().item<double>();
  const double total = std::sqrt(dist_.sum({local})[0]);
  if (max_norm > 0 && total > max_norm && std::isfinite(total)) {
    const double scale = max_norm / (total + 1e-6);
    for (auto& unit : units_)
      if (groups_[unit->group].clipped && unit->grad.defined()) unit->grad.mul_(scale);
  }
  return total;
}

void ZeroOptimizer::step(double schedule_factor) {
  torch::NoGradGuard no_grad;
  ++steps_;
  for (auto& unit : units_) {
    const AdamWUpdate u = adamw_coefficients(groups_[unit->group], schedule_factor, steps_, beta1_, beta2_, eps_);
    if (!unit->grad.defined()) unit->grad = torch::zeros_like(unit->master);
    adamw_update(unit->master, unit->grad, unit->exp_avg, unit->exp_avg_sq, u);
    unit->grad = torch::Tensor();
    // Every rank's updated slice back into the whole weights (the on-demand
    // units are gathered when their layer next runs).
    if (unit->held) dist_.all_gather(unit->full, unit->master);  // in place: master is a view of full
  }
}

TensorMap ZeroOptimizer::shard_state() const {
  TensorMap out;
  for (size_t i = 0; i < units_.size(); ++i) {
    const std::string prefix = "unit." + std::to_string(i) + ".";
    out[prefix + "weights"] = units_[i]->master;
    out[prefix + "exp_avg"] = units_[i]->exp_avg;
    out[prefix + "exp_avg_sq"] = units_[i]->exp_avg_sq;
  }
  return out;
}

json ZeroOptimizer::manifest() const {
  return {{"stage", stage_}, {"world_size", dist_.world_size()}, {"units", zero_manifest_units(groups_)}};
}

void ZeroOptimizer::load(const TrainCheckpoint& ck) {
  torch::NoGradGuard no_grad;
  if (ck.zero.is_null()) fail(ck.path, ": a replicated (--zero 0) checkpoint; resume it with --zero 0");
  if (ck.zero.at("units") != zero_manifest_units(groups_))
    fail(ck.path, ": the checkpoint's shards hold other parameters than this run trains (another model or task?)");
  const int old_world = ck.zero.at("world_size").get<int>();
  if (static_cast<int>(ck.shard_files.size()) != old_world)
    fail(ck.path, ": state.json lists ", ck.shard_files.size(), " shard files for ", old_world, " ranks");
  std::map<int, std::unique_ptr<io::SafetensorsFile>> files;  // the old ranks' files this rank reads
  auto file = [&](int old_rank) -> io::SafetensorsFile& {
    auto& f = files[old_rank];
    if (!f) f = std::make_unique<io::SafetensorsFile>(ck.shard_files[old_rank]);
    return *f;
  };
  const int rank = dist_.rank();
  for (size_t i = 0; i < units_.size(); ++i) {
    Unit& unit = *units_[i];
    const int64_t old_shard = shard_size(unit.numel, old_world);
    const int64_t begin = rank * unit.shard, end = std::min(begin + unit.shard, unit.numel);
    const std::pair<const char*, torch::Tensor*> parts[] = {
        {"weights", &unit.master}, {"exp_avg", &unit.exp_avg}, {"exp_avg_sq", &unit.exp_avg_sq}};
    for (const auto& [what, target] : parts) {
      const std::string key = "unit." + std::to_string(i) + "." + what;
      target->zero_();  // the padding past the unit's end
      // This rank's range, read from the old ranks' slices that cover it.
      for (int64_t pos = begin; pos < end;) {
        const int old_rank = static_cast<int>(pos / old_shard);
        const int64_t within = pos % old_shard, length = std::min(end - pos, old_shard - within);
        io::SafetensorsFile& f = file(old_rank);
        if (!f.contains(key)) fail(f.path(), ": shard tensor '", key, "' is missing");
        const torch::Tensor source = f.mapped_tensor(key);
        if (source.numel() != old_shard)
          fail(f.path(), ": shard tensor '", key, "' has ", source.numel(), " elements, expected ", old_shard);
        target->narrow(0, pos - begin, length).copy_(source.narrow(0, within, length));
        pos += length;
      }
    }
  }
  steps_ = ck.step;
  for (auto& unit : units_) dist_.all_gather(unit->full, unit->master);
}

}  // namespace dha::train_detail

namespace dha::train_detail {

std::vector<int> shards_to_read(const json& zero, int rank, int world) {
  const int old_world = zero.at("world_size").get<int>();
  std::set<int> ranks;
  for (const auto& unit : zero.at("units")) {
    const int64_t numel = unit.at("numel").get<int64_t>();
    const int64_t shard = shard_size(numel, world), old_shard = shard_size(numel, old_world);
    const int64_t begin = rank * shard, end = std::min(begin + shard, numel);
    for (int64_t pos = begin; pos < end; pos += old_shard - pos % old_shard) ranks.insert(static_cast<int>(pos / old_shard));
  }
  return {ranks.begin(), ranks.end()};
}

void ZeroOptimizer::finish() {
  torch::NoGradGuard no_grad;
  for (auto& unit : units_) {
    unit->exp_avg = unit->exp_avg_sq = unit->grad = unit->pending = torch::Tensor();
    if (!unit->on_demand || unit->held) continue;
    hold(*unit);
    unit->master = unit->full.narrow(0, dist_.rank() * unit->shard, unit->shard);  // its own copy goes
  }
  gathering_ = false;
  if (model_) (*model_)->layer_weights = nullptr;
}

}  // namespace dha::train_detail
