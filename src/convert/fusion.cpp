// Fusion operators, the fusion loss, the augmented Lagrangian and the collapse.
#include "dha/fusion.h"

#include <cmath>

#include "dha/error.h"
#include "dha/io/mapped_region.h"
#include "dha/loss.h"

namespace dha {
namespace {

const char* proj_of(const PoolId& p) { return p.value ? "v_proj" : "k_proj"; }

}  // namespace

// A head is its weight rows with its bias as one more column (join_heads): the
// measures, the operators and the collapse all see the bias as part of the head.
torch::Tensor pool_weights(const Checkpoint& checkpoint, const PoolId& pool) {
  const ModelConfig& c = checkpoint.config;
  if (!pool.value && c.layout.shares_attention(pool.layer))
    return torch::zeros({0, c.head_dim, c.dim + (c.attention_bias ? 1 : 0)});
  return projection_heads(checkpoint, pool.layer, proj_of(pool));
}

Checkpoint collapse_groups(const Checkpoint& source, const Grouping& grouping,
                           const std::vector<torch::Tensor>& effective) {
  const std::vector<PoolId> pools = all_pools(source.config.n_layers);
  if (grouping.size() != pools.size()) fail("collapse: grouping has ", grouping.size(), " pools, expected ", pools.size());
  Checkpoint out = source;
  out.config.layout = apply_grouping(source.config.layout, grouping);
  torch::NoGradGuard no_grad;
  for (size_t p = 0; p < pools.size(); ++p) {
    if (grouping[p].empty()) continue;  // the key pool of a layer that shares attention
    // The mean in float32 whatever the weights are stored in.
    const torch::Tensor w = (effective.empty() ? pool_weights(source, pools[p]) : effective[p]).to(torch::kFloat32);
    std::vector<torch::Tensor> heads;
    for (const auto& group : grouping[p])
      heads.push_back(w.index_select(0, torch::tensor(group, torch::kInt64).to(w.device())).mean(0));
    set_projection_heads(out, pools[p].layer, proj_of(pools[p]), torch::stack(heads).to(torch::kCPU, torch::kFloat32));
  }
  out.config.validate("collapsed model");
  return out;
}

FusionTask::FusionTask(Llama model, Grouping grouping, int64_t total_steps, const FusionOptions& options,
                       std::optional<Llama> teacher)
    : model_(std::move(model)),
      grouping_(std::move(grouping)),
      pools_(all_pools(model_->config().n_layers)),
      total_steps_(total_steps),
      options_(options),
      teacher_(std::move(teacher)) {
  const auto float_options = model_->model->embed_tokens->weight.options().dtype(torch::kFloat32);
  const int64_t head_dim = model_->config().head_dim;
  for (size_t p = 0; p < pools_.size(); ++p) {
    omegas_.emplace_back();
    for (const auto& group : grouping_.at(p)) {
      const int64_t n = static_cast<int64_t>(group.size());
      if (n < 2) {
        omegas_.back().emplace_back();
        continue;
      }
      torch::Tensor eye = torch::eye(n, float_options);
      if (options_.per_channel) eye = eye.unsqueeze(-1).repeat({1, 1, head_dim});
      omegas_.back().push_back(eye.set_requires_grad(true));
    }
  }
  lambda1_ = torch::zeros({1}, float_options).set_requires_grad(true);
  lambda2_ = torch::zeros({1}, float_options).set_requires_grad(true);
  if (teacher_) {
    (*teacher_)->eval();
    for (auto& p : (*teacher_)->parameters()) p.set_requires_grad(false);
  }
  initial_loss_ = fusion_loss();
}

torch::Tensor FusionTask::pool_weight(const PoolId& pool) {
  auto& attention = *model_->model->layers[pool.layer]->as<DecoderLayer>()->self_attn;
  const ModelConfig& c = model_->config();
  if (!pool.value && attention.shares_attention())
    return torch::zeros({0, c.head_dim, c.dim + (c.attention_bias ? 1 : 0)}, attention.v_proj->weight.options());
  const Projection& proj = pool.value ? attention.v_proj : attention.k_proj;
  return join_heads(proj->weight, proj->bias, c.head_dim);  // bias undefined without attention biases
}

torch::Tensor FusionTask::fused_pool(size_t p, const torch::Tensor& w) {
  // Effective weights are float32 even when frozen weights are held in a lower precision.
  torch::Tensor fused = w.to(torch::kFloat32);
  for (size_t g = 0; g < grouping_[p].size(); ++g) {
    const torch::Tensor& omega = omegas_[p][g];
    if (!omega.defined()) continue;
    const torch::Tensor index = torch::tensor(grouping_[p][g], torch::kInt64).to(w.device());
    const torch::Tensor members = w.index_select(0, index).to(torch::kFloat32);  // [n, d_h, d]
    // Scalar: W~_j = sum_i Omega[j, i] W_i. Per channel: mixes row c with Omega[j, i, c].
    const torch::Tensor mixed = options_.per_channel ? torch::einsum("jic,icd->jcd", {omega, members})
                                                     : torch::einsum("ji,icd->jcd", {omega, members});
    fused = fused.index_copy(0, index, mixed);
  }
  return fused;
}

std::vector<torch::Tensor> FusionTask::effective_weights() {
  std::vector<torch::Tensor> out;
  for (size_t p = 0; p < pools_.size(); ++p) out.push_back(fused_pool(p, pool_weight(pools_[p])));
  return out;
}

torch::Tensor FusionTask::fusion_loss_tensor(const std::vector<torch::Tensor>& fused,
                                             std::vector<std::vector<double>>* per_group) {
  torch::Tensor weighted = torch::zeros({}, fused.front().options().dtype(torch::kFloat32));
  double members = 0.0;
  for (size_t p = 0; p < pools_.size(); ++p) {
    const torch::Tensor original = pool_weight(pools_[p]).detach().to(torch::kFloat32);
    if (per_group) per_group->emplace_back();
    for (const auto& group : grouping_[p]) {
      const int64_t n = static_cast<int64_t>(group.size());
      if (n < 2) {
        if (per_group) per_group->back().push_back(0.0);
        continue;
      }
      const torch::Tensor index = torch::tensor(group, torch::kInt64).to(original.device());
      const torch::Tensor a = fused[p].index_select(0, index).to(torch::kFloat32).reshape({n, -1});
      // sum_{j != k} ||a_j - a_k||^2 = 2n sum_j ||a_j||^2 - 2 ||sum_j a_j||^2
      const torch::Tensor pairwise = 2.0 * n * a.pow(2).sum() - 2.0 * a.sum(0).pow(2).sum();
      const torch::Tensor scale = original.index_select(0, index).pow(2).sum() / n;
      const torch::Tensor loss = pairwise / (n * (n - 1)) / scale.clamp_min(1e-30);
      if (per_group) per_group->back().push_back(loss.item<double>());
      weighted = weighted + n * loss;
      members += n;
    }
  }
  return members > 0 ? weighted / members : weighted;
}

std::vector<std::vector<double>> FusionTask::group_losses() {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<double>> out;
  fusion_loss_tensor(effective_weights(), &out);
  return out;
}

double FusionTask::fusion_loss() {
  torch::NoGradGuard no_grad;
  return fusion_loss_tensor(effective_weights(), nullptr).item<double>();
}

double FusionTask::target(int64_t step) const {
  const double span = options_.target_fraction * static_cast<double>(total_steps_);
  if (span <= 0) return 0.0;
  return initial_loss_ * std::max(0.0, 1.0 - static_cast<double>(step) / span);
}

void FusionTask::use_fused_weights(const std::vector<torch::Tensor>& fused) {
  const bool bias = model_->config().attention_bias;
  kv_weights_.assign(model_->config().n_layers, KVWeights{});
  for (size_t p = 0; p < pools_.size(); ++p) {
    const int64_t layer = pools_[p].layer;
    if (!pools_[p].value && model_->config().layout.shares_attention(layer)) continue;
    auto [w, b] = split_heads(fused[p], bias);  // a fused bias mixes with the same operator as its weight
    KVWeights& kv = kv_weights_[layer];
    (pools_[p].value ? kv.v_weight : kv.k_weight) = w;
    (pools_[p].value ? kv.v_bias : kv.k_bias) = b;
  }
}

ForwardOptions FusionTask::forward_options() const {
  ForwardOptions options;
  options.kv_weights = &kv_weights_;
  return options;
}

void FusionTask::before_eval() {
  torch::NoGradGuard no_grad;
  use_fused_weights(effective_weights());
}

std::vector<ParamGroup> FusionTask::param_groups(const TrainConfig& config) {
  ParamGroup theta{"model", {}, config.lr, config.weight_decay, true, true};
  for (const auto& item : model_->named_parameters())  // frozen weights get no gradient, no optimizer state
    if (item.value().requires_grad()) theta.params.emplace_back(item.key(), item.value());
  ParamGroup omega{"omega", {}, options_.omega_lr, 0.0, true, true};
  for (size_t p = 0; p < pools_.size(); ++p)
    for (size_t g = 0; g < omegas_[p].size(); ++g)
      if (omegas_[p][g].defined())
        omega.params.emplace_back("fusion.omega." + pools_[p].name() + "." + std::to_string(g), omegas_[p][g]);
  // Gradient ascent on the multipliers: a negative rate, no schedule, no clipping.
  ParamGroup lambda{"lambda", {{"fusion.lambda1", lambda1_}, {"fusion.lambda2", lambda2_}}, -options_.lambda_lr, 0.0,
                    false, false};
  std::vector<ParamGroup> groups{lambda};
  if (!theta.params.empty()) groups.insert(groups.begin(), theta);
  if (!omega.params.empty()) groups.insert(groups.end() - 1, omega);
  return groups;
}

torch::Tensor FusionTask::loss(const torch::Tensor& batch, StepScalars& scalars) {
  const std::vector<torch::Tensor> fused = effective_weights();
  use_fused_weights(fused);
  const int64_t t = batch.size(1) - 1;
  const torch::Tensor inputs = batch.narrow(1, 0, t), targets = batch.narrow(1, 1, t);
  const torch::Tensor logits = model_->forward(inputs, forward_options());
  torch::Tensor objective = lm_loss(logits, targets);
  scalars["lm_loss"] = objective.detach();
  if (teacher_ && options_.distill_weight > 0) {
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard no_grad;
      teacher_logits = (*teacher_)->forward(inputs);
    }
    const torch::Tensor kl = distill_kl(logits, teacher_logits, 1.0);
    scalars["kl"] = kl.detach();
    objective = objective + options_.distill_weight * kl;
  }
  const torch::Tensor l_f = fusion_loss_tensor(fused, nullptr);
  const double t_now = target(step_);
  const torch::Tensor gap = l_f - t_now;
  scalars["fusion_loss"] = l_f.detach();
  scalars["target"] = torch::full({}, t_now, l_f.options().dtype(torch::kFloat64));
  scalars["lambda1"] = lambda1_.detach().reshape({});
  scalars["lambda2"] = lambda2_.detach().reshape({});
  return objective + (lambda1_ * gap).sum() + (lambda2_ * gap * gap).sum();
}

void FusionTask::after_step(int64_t step, int64_t total_steps, std::map<std::string, double>& metrics) {
  step_ = step;
  FusionRecord r;
  r.step = step;
  r.lm_loss = metrics["lm_loss"];
  r.fusion_loss = metrics["fusion_loss"];
  r.target = metrics["target"];
  r.lambda1 = lambda1_.item<double>();
  r.lambda2 = lambda2_.item<double>();
  records_.push_back(r);
  if (observer_ && step > total_steps - observe_last_) {
    torch::NoGradGuard no_grad;
    observer_(effective_weights());
  }
}

TensorMap FusionTask::state() {
  TensorMap out = model_->state();
  for (size_t p = 0; p < pools_.size(); ++p)
    for (size_t g = 0; g < omegas_[p].size(); ++g)
      if (omegas_[p][g].defined())
        out["fusion.omega." + pools_[p].name() + "." + std::to_string(g)] = omegas_[p][g].detach();
  out["fusion.lambda1"] = lambda1_.detach();
  out["fusion.lambda2"] = lambda2_.detach();
  return out;
}

void FusionTask::load_state(const TensorMap& tensors, const std::string& source) {
  TensorMap model_tensors;
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors)
    if (name.rfind("fusion.", 0) != 0) model_tensors[name] = t;
  model_->load_state(model_tensors, source);
  for (size_t p = 0; p < pools_.size(); ++p)
    for (size_t g = 0; g < omegas_[p].size(); ++g)
      if (omegas_[p][g].defined()) {
        const std::string key = "fusion.omega." + pools_[p].name() + "." + std::to_string(g);
        if (!tensors.count(key)) fail(source, ": fusion operator '", key, "' is missing");
        omegas_[p][g].copy_(tensors.at(key));
      }
  lambda1_.copy_(tensors.at("fusion.lambda1"));
  lambda2_.copy_(tensors.at("fusion.lambda2"));
}

nlohmann::json FusionTask::extra_state() {
  return {{"initial_fusion_loss", initial_loss_}, {"step", step_}};
}

void FusionTask::load_extra_state(const nlohmann::json& j) {
  initial_loss_ = j.value("initial_fusion_loss", initial_loss_);
  step_ = j.value("step", step_);
}

Checkpoint FusionTask::collapse() {
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> fused = effective_weights();
  // The trained weights go into the collapsed model as they are, not copied.
  return collapse_groups(model_->shared_checkpoint(torch::kFloat32), grouping_, fused);
}

Llama distillation_teacher(const Checkpoint& source, const Checkpoint& start, Llama fused, const torch::Device& device) {
  const auto params = fused->named_parameters();
  auto same = [](const Checkpoint& a, const Checkpoint& b, const std::string& name) {
    const auto x = a.tensors.find(name), y = b.tensors.find(name);
    return x != a.tensors.end() && y != b.tensors.end() && x->second.is_same(y->second);
  };
  // `start` computes the source's function when it keeps the source's layout
  // (no spans). Following it lets the teacher read every frozen weight of the
  // fusion model, aligned ones included, unless a weight that trains differs
  // from the source's: its starting value would then have to be kept beside
  // the fusion model's copy, and the source's own is already there.
  bool follow_start = start.config.layout == source.config.layout;
  for (const auto& item : params)
    if (item.value().requires_grad() && !same(start, source, item.key())) follow_start = false;
  const Checkpoint& base = follow_start ? start : source;
  Checkpoint view = base;  // the map of tensor handles; no data is copied here
  for (auto& [name, tensor] : view.tensors) {
    const torch::Tensor* param = params.find(name);
    const bool shared = param && !param->requires_grad() && same(start, base, name);
    tensor = shared ? param->detach() : tensor.to(device);
  }
  Llama teacher = make_model_over(view, "distillation teacher");
  teacher->to(device);  // its buffers (RoPE tables); the weights are there already
  return teacher;
}

// Part -1: the embedding; 0..L-1: the decoder layers; L: the final norm and the head.
class DistillationTeacher::PageHandBack : public LayerWeightSource {
 public:
  PageHandBack(const Llama& teacher, const Llama& fused) : parts_(teacher->config().n_layers + 2) {
    const auto fused_params = fused->named_parameters();
    const int64_t n_layers = teacher->config().n_layers;
    for (const auto& item : teacher->named_parameters()) {
      const torch::Tensor* in_fusion = fused_params.find(item.key());
      // The fusion model's frozen weights are read by its own forward and backward too: they stay.
      const bool own = !in_fusion || in_fusion->data_ptr() != item.value().data_ptr();
      if (!own || !io::is_mapped(item.value())) continue;
      parts_[part_of(item.key(), n_layers) + 1].push_back(item.value());
    }
  }
  bool empty() const {
    for (const auto& part : parts_)
      if (!part.empty()) return false;
    return true;
  }
  void gather(int64_t, bool) override {}  // the pages come back as they are read
  void release(int64_t part) override {
    for (const auto& t : parts_[part + 1]) io::release_resident_pages(t);
  }

 private:
  static int64_t part_of(const std::string& name, int64_t n_layers) {
    const std::string layers = "model.layers.";
    if (name.rfind(layers, 0) == 0) return std::stoll(name.substr(layers.size()));
    return name.rfind("model.embed_tokens.", 0) == 0 ? -1 : n_layers;
  }
  std::vector<std::vector<torch::Tensor>> parts_;
};

DistillationTeacher::DistillationTeacher(const Checkpoint& source, const Checkpoint& start, Llama fused,
                                         const torch::Device& device)
    : model_(distillation_teacher(source, start, fused, device)) {
  if (!device.is_cpu()) return;
  auto pages = std::make_unique<PageHandBack>(model_, fused);
  if (pages->empty()) return;
  pages_ = std::move(pages);
  model_->layer_weights = pages_.get();
}

DistillationTeacher::~DistillationTeacher() = default;
DistillationTeacher::DistillationTeacher(DistillationTeacher&&) noexcept = default;
DistillationTeacher& DistillationTeacher::operator=(DistillationTeacher&&) noexcept = default;

}  // namespace dha
