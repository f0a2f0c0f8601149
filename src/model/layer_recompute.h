// Private to the model: activation checkpointing of one decoder layer.
#pragma once

#include <torch/types.h>

#include "dha/model.h"

namespace dha {

// The layer's output for input x [B, T, d] at positions 0..T-1, like
// layer.forward without a cache, but keeping only x for backward: the layer is
// run again in backward to rebuild its activations, under the autocast state
// of the forward pass. `probabilities` works as in DecoderLayer::forward: read
// by a layer that shares attention, written by a layer that emits it, and
// differentiable either way. `extras.kv_weights` are inputs of the
// recomputation (their gradients flow back to whoever made them);
// `extras.observer` sees the forward run only.
// With `weights`, the layer (number `index`) is gathered before each of its
// two runs and released after.
torch::Tensor recomputed_layer_forward(DecoderLayerImpl& layer, const torch::Tensor& x, const Rope& rope,
                                       torch::Tensor& probabilities, const LayerForward& extras = {},
                                       LayerWeightSource* weights = nullptr, int64_t index = 0);

}  // namespace dha
