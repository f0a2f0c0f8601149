// An in-memory checkpoint: a config plus tensors named as in Hugging Face LLaMA
// ("model.layers.0.self_attn.q_proj.weight", ...), q/k rows in rotate-half order.
#pragma once

#include <map>
#include <string>

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

}  // namespace dha
