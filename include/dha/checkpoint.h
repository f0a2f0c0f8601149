// An in-memory checkpoint: a config plus tensors named as in Hugging Face LLaMA
// ("model.layers.0.self_attn.q_proj.weight", ...), q/k rows in rotate-half order,
// and the head view of the q/k/v projections that the conversion stages share.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "dha/config.h"

namespace dha {

using TensorMap = std::map<std::string, torch::Tensor>;

struct Checkpoint {
  ModelConfig config;
  TensorMap tensors;
  // The dtype the weights were stored in (writers keep it unless told otherwise).
  torch::ScalarType storage_dtype = torch::kFloat32;
};

// Names and shapes every checkpoint of `config` must hold, in canonical order.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& config);

// Throws dha::Error naming `source` unless `tensors` holds exactly the expected
// names with the expected shapes.
void check_tensors(const ModelConfig& config, const TensorMap& tensors, const std::string& source);

// The heads of a q/k/v projection as affine maps of [x, 1]: the weight viewed
// [n, d_h, d], with the bias as one more column ([n, d_h, d + 1]) when there is
// one. Fusion, alignment, pooling and the export re-layouts mix, rotate, average
// and permute heads in this form, so a head's bias always travels with it.
torch::Tensor join_heads(const torch::Tensor& weight, const torch::Tensor& bias, int64_t head_dim);
// The inverse: {weight [n * d_h, d], bias [n * d_h] (undefined unless `bias`)}.
std::pair<torch::Tensor, torch::Tensor> split_heads(const torch::Tensor& heads, bool bias);

// "model.layers.<layer>.self_attn.<proj>.weight" (and ".bias").
std::string projection_name(int64_t layer, const std::string& proj, bool bias = false);
// join_heads of a checkpoint's projection ("q_proj", "k_proj" or "v_proj"); the
// bias column is there when config.attention_bias.
torch::Tensor projection_heads(const Checkpoint& checkpoint, int64_t layer, const std::string& proj);
// Stores heads [n, d_h, d (+ 1)] as the projection's weight (and bias), on the
// CPU, in the heads' dtype.
void set_projection_heads(Checkpoint& checkpoint, int64_t layer, const std::string& proj, const torch::Tensor& heads);

}  // namespace dha
