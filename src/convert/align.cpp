// Generalised Procrustes alignment of heads inside groups (function-preserving).
#include "dha/align.h"

#include <cmath>

#include "dha/error.h"
#include "dha/io/mapped_region.h"

namespace dha {
namespace {

// Rotates rows (j, j + d_h/2) of a head's weight [d_h, d] (or [d_h, d + 1] with
// its bias) by angles [d_h/2].
torch::Tensor rotate_rope_planes(const torch::Tensor& w, const torch::Tensor& angles) {
  const int64_t half = w.size(0) / 2;
  const torch::Tensor c = angles.cos().unsqueeze(1), s = angles.sin().unsqueeze(1);
  const torch::Tensor x = w.narrow(0, 0, half), y = w.narrow(0, half, half);
  return torch::cat({c * x - s * y, s * x + c * y}, 0);
}

// Plane angles that best rotate a [N, d_h] onto m [N, d_h] (det +1 per plane).
torch::Tensor plane_angles(const torch::Tensor& a, const torch::Tensor& m) {
  const int64_t half = a.size(1) / 2;
  const torch::Tensor ax = a.narrow(1, 0, half), ay = a.narrow(1, half, half);
  const torch::Tensor mx = m.narrow(1, 0, half), my = m.narrow(1, half, half);
  return torch::atan2((ax * my - ay * mx).sum(0), (ax * mx + ay * my).sum(0));
}

// The orthogonal R minimising ||a R - m||_F.
torch::Tensor procrustes(const torch::Tensor& a, const torch::Tensor& m) {
  const auto [u, s, vh] = torch::linalg_svd(a.t().matmul(m), /*full_matrices=*/false);
  return u.matmul(vh);
}

torch::Tensor apply_plane_rotation_to_acts(const torch::Tensor& a, const torch::Tensor& angles) {
  return rotate_rope_planes(a.t(), angles).t();
}

// Hands every layer's keys (before RoPE) and values, as the forward computes
// them, flattened over batch and positions, in float64 on the CPU, to `use`.
class ActivationObserver : public AttentionObserver {
 public:
  using Use = std::function<void(int64_t, const LayerActivations&)>;
  ActivationObserver(const Use& use, int64_t tokens, int64_t head_dim) : use_(use), tokens_(tokens), head_dim_(head_dim) {}
  bool wants_keys_and_values(int64_t) const override { return true; }
  void keys_and_values(int64_t layer, const torch::Tensor& keys, const torch::Tensor& values) override {
    use_(layer, {flatten(keys), flatten(values)});
  }

 private:
  torch::Tensor flatten(const torch::Tensor& x) const {  // [B, n, T, d_h] -> [n, B*T, d_h]
    if (!x.defined()) return torch::zeros({0, tokens_, head_dim_}, torch::kFloat64);  // no keys: shared attention
    return x.transpose(0, 1).reshape({x.size(1), -1, x.size(3)}).to(torch::kCPU, torch::kFloat64);
  }
  const Use& use_;
  int64_t tokens_, head_dim_;
};

// Rotates the heads of layer l's groups in `out` (starting from `source`'s
// weights) towards each other, from that layer's activations.
void align_layer(const Checkpoint& source, Checkpoint& out, const Grouping& grouping, int64_t l,
                 const LayerActivations& activations, int iterations) {
  const ModelConfig& c = source.config;
  torch::NoGradGuard no_grad;
  const auto f64 = torch::kFloat64;
  // Heads [n, d_h, d (+ 1)]: a bias is one more column, so it turns with its head.
  torch::Tensor wq = projection_heads(source, l, "q_proj").to(f64).clone();
  torch::Tensor wk = projection_heads(source, l, "k_proj").to(f64).clone();
  torch::Tensor wv = projection_heads(source, l, "v_proj").to(f64).clone();
  torch::Tensor wo = source.tensors.at(projection_name(l, "o_proj")).to(f64).view({c.dim, c.n_heads, c.head_dim}).clone();

  // Keys: per-plane rotations, applied to the key head and every query head reading it.
  for (const auto& group : grouping.at(2 * l)) {
    if (group.size() < 2) continue;
    std::vector<torch::Tensor> acts;
    for (int64_t h : group) acts.push_back(activations.keys[h]);
    std::vector<torch::Tensor> angles(group.size(), torch::zeros({c.head_dim / 2}, f64));
    torch::Tensor mean = acts[0];
    for (int it = 0; it < iterations; ++it) {
      std::vector<torch::Tensor> aligned;
      for (size_t i = 0; i < group.size(); ++i) {
        angles[i] = plane_angles(acts[i], mean);
        aligned.push_back(apply_plane_rotation_to_acts(acts[i], angles[i]));
      }
      mean = torch::stack(aligned).mean(0);
    }
    for (size_t i = 0; i < group.size(); ++i) {
      const int64_t h = group[i];
      wk[h] = rotate_rope_planes(wk[h], angles[i]);
      for (int64_t q = 0; q < c.n_heads; ++q)
        if (c.layout.k_map[l][q] == h) wq[q] = rotate_rope_planes(wq[q], angles[i]);
    }
  }
  // Values: full orthogonal rotations, W_V <- R^T W_V and W_O[:, q] <- W_O[:, q] R.
  for (const auto& group : grouping.at(2 * l + 1)) {
    if (group.size() < 2) continue;
    std::vector<torch::Tensor> acts;
    for (int64_t h : group) acts.push_back(activations.values[h]);
    std::vector<torch::Tensor> rotations(group.size(), torch::eye(c.head_dim, f64));
    torch::Tensor mean = acts[0];
    for (int it = 0; it < iterations; ++it) {
      std::vector<torch::Tensor> aligned;
      for (size_t i = 0; i < group.size(); ++i) {
        rotations[i] = procrustes(acts[i], mean);
        aligned.push_back(acts[i].matmul(rotations[i]));
      }
      mean = torch::stack(aligned).mean(0);
    }
    for (size_t i = 0; i < group.size(); ++i) {
      const int64_t h = group[i];
      wv[h] = rotations[i].t().matmul(wv[h]);
      for (int64_t q = 0; q < c.n_heads; ++q)
        if (c.layout.v_map[l][q] == h) wo.select(1, q).copy_(wo.select(1, q).matmul(rotations[i]));
    }
  }
  set_projection_heads(out, l, "q_proj", wq.to(torch::kFloat32));
  set_projection_heads(out, l, "k_proj", wk.to(torch::kFloat32));
  set_projection_heads(out, l, "v_proj", wv.to(torch::kFloat32));
  out.tensors[projection_name(l, "o_proj")] = wo.reshape({c.dim, -1}).to(torch::kFloat32).contiguous();
  // The aligned copies are read from here on: when the source's are file
  // pages, the kernel may have them back (a later read faults them in again).
  for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
    for (bool bias : {false, true})
      if (const auto it = source.tensors.find(projection_name(l, proj, bias)); it != source.tensors.end())
        io::release_resident_pages(it->second);
}

void check_grouping(const Checkpoint& source, const Grouping& grouping) {
  if (static_cast<int64_t>(grouping.size()) != 2 * source.config.n_layers)
    fail("align: the grouping has ", grouping.size(), " pools, the model ", 2 * source.config.n_layers);
}

}  // namespace

void for_each_layer_activations(Llama& model, const torch::Tensor& tokens,
                                const std::function<void(int64_t, const LayerActivations&)>& use) {
  torch::NoGradGuard no_grad;
  ActivationObserver observer(use, tokens.numel(), model->config().head_dim);
  ForwardOptions options;
  options.observer = &observer;
  model->forward(tokens, options);
}

std::vector<LayerActivations> collect_activations(Llama& model, const torch::Tensor& tokens) {
  std::vector<LayerActivations> out(model->config().n_layers);
  for_each_layer_activations(model, tokens, [&](int64_t l, const LayerActivations& a) { out[l] = a; });
  return out;
}

Checkpoint align_groups(const Checkpoint& source, const Grouping& grouping,
                        const std::vector<LayerActivations>& activations, int iterations) {
  if (static_cast<int64_t>(activations.size()) != source.config.n_layers) fail("align: need activations for every layer");
  check_grouping(source, grouping);
  Checkpoint out = source;
  for (int64_t l = 0; l < source.config.n_layers; ++l) align_layer(source, out, grouping, l, activations[l], iterations);
  return out;
}

Checkpoint align_groups(const Checkpoint& source, const Grouping& grouping, Llama& model, const torch::Tensor& tokens,
                        int iterations) {
  check_grouping(source, grouping);
  Checkpoint out = source;
  for_each_layer_activations(model, tokens, [&](int64_t l, const LayerActivations& a) {
    align_layer(source, out, grouping, l, a, iterations);
  });
  return out;
}

}  // namespace dha
