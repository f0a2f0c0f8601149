// Generalised Procrustes alignment of heads inside groups (function-preserving).
#include "dha/align.h"

#include <cmath>

#include "dha/error.h"

namespace dha {
namespace {

std::string layer_name(int64_t l, const char* proj) {
  return "model.layers." + std::to_string(l) + ".self_attn." + proj + ".weight";
}

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

}  // namespace

std::vector<LayerActivations> collect_activations(Llama& model, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  const int64_t n_layers = model->config().n_layers;
  for (int64_t l = 0; l < n_layers; ++l) model->model->layers[l]->as<DecoderLayer>()->self_attn->capture = true;
  model->forward(tokens);
  std::vector<LayerActivations> out;
  for (int64_t l = 0; l < n_layers; ++l) {
    auto& attention = *model->model->layers[l]->as<DecoderLayer>()->self_attn;
    attention.capture = false;
    auto flatten = [&](const torch::Tensor& x) {  // [B, n, T, d_h] -> [n, B*T, d_h]
      if (!x.defined()) return torch::zeros({0, tokens.numel(), model->config().head_dim}, torch::kFloat64);  // no keys: shared attention
      return x.transpose(0, 1).reshape({x.size(1), -1, x.size(3)}).to(torch::kCPU, torch::kFloat64);
    };
    out.push_back({flatten(attention.captured_keys), flatten(attention.captured_values)});
    attention.captured_keys = attention.captured_values = torch::Tensor();
  }
  return out;
}

Checkpoint align_groups(const Checkpoint& source, const Grouping& grouping,
                        const std::vector<LayerActivations>& activations, int iterations) {
  const ModelConfig& c = source.config;
  if (static_cast<int64_t>(activations.size()) != c.n_layers) fail("align: need activations for every layer");
  Checkpoint out = source;
  torch::NoGradGuard no_grad;
  const auto f64 = torch::kFloat64;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    // Heads [n, d_h, d (+ 1)]: a bias is one more column, so it turns with its head.
    torch::Tensor wq = projection_heads(source, l, "q_proj").to(f64).clone();
    torch::Tensor wk = projection_heads(source, l, "k_proj").to(f64).clone();
    torch::Tensor wv = projection_heads(source, l, "v_proj").to(f64).clone();
    torch::Tensor wo = source.tensors.at(layer_name(l, "o_proj")).to(f64).view({c.dim, c.n_heads, c.head_dim}).clone();

    // Keys: per-plane rotations, applied to the key head and every query head reading it.
    for (const auto& group : grouping.at(2 * l)) {
      if (group.size() < 2) continue;
      std::vector<torch::Tensor> acts;
      for (int64_t h : group) acts.push_back(activations[l].keys[h]);
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
      for (int64_t h : group) acts.push_back(activations[l].values[h]);
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
    out.tensors[layer_name(l, "o_proj")] = wo.reshape({c.dim, -1}).to(torch::kFloat32).contiguous();
  }
  return out;
}

}  // namespace dha
