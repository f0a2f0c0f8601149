// Align-then-merge GQA (Jin et al., arXiv 2412.20677): inside each group, heads
// are aligned to each other by generalised Procrustes analysis on calibration
// activations, in float64, with transforms that leave the model's function
// unchanged: values get full orthogonal rotations folded into W_V and W_O,
// keys only 2x2 rotations in the RoPE planes applied to W_K and W_Q.
#pragma once

#include <functional>
#include <vector>

#include "dha/checkpoint.h"
#include "dha/model.h"
#include "dha/search.h"

namespace dha {

// Per-head calibration activations of one layer: keys before RoPE
// [H_K, N, d_h] and values [H_V, N, d_h] (N = tokens).
struct LayerActivations {
  torch::Tensor keys, values;
};

// Runs the model over tokens [B, T] and keeps every layer's activations.
std::vector<LayerActivations> collect_activations(Llama& model, const torch::Tensor& tokens);
// The same, handing each layer's activations to `use` as the forward pass
// reaches it and keeping none: memory for one layer's activations at a time
// (float64, 2 H d_h per token: 134 MB for a 7B layer at 2048 tokens).
void for_each_layer_activations(Llama& model, const torch::Tensor& tokens,
                                const std::function<void(int64_t layer, const LayerActivations&)>& use);

// The same function with the heads of each group rotated towards each other.
Checkpoint align_groups(const Checkpoint& source, const Grouping& grouping,
                        const std::vector<LayerActivations>& activations, int iterations = 5);
// The same from one forward pass of `model` (which computes `source`'s
// function) over tokens [B, T], each layer aligned as its activations arrive.
Checkpoint align_groups(const Checkpoint& source, const Grouping& grouping, Llama& model, const torch::Tensor& tokens,
                        int iterations = 5);

}  // namespace dha
