// The memory plan: the peak bytes per rank a training stage will need, by
// category, computed from the model config and the run's settings before
// anything is allocated. dha-convert and dha-train print it (and record it next
// to the measured peak); --plan-only answers "does it fit" without a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "dha/config.h"
#include "dha/lookup.h"

namespace dha {

// What trains in a stage.
enum class TrainWeights {
  kAll,        // every weight (joint theta training; dha-train)
  kAttention,  // only the K/V projections that are being fused
  kNone,       // no model weight (only the fusion operators and multipliers)
};
const std::vector<Named<TrainWeights>>& train_weights_choices();
TrainWeights parse_train_weights(const std::string& name);  // "all" | "attention" | "none"
const char* train_weights_name(TrainWeights weights);
// Whether the checkpoint tensor `name` trains under `weights`.
bool weight_trains(TrainWeights weights, const std::string& name);

struct MemoryPlanInputs {
  ModelConfig model;
  std::string stage = "train";       // a name for the table
  int64_t micro_batch = 1;           // sequences per rank per micro-step
  int64_t seq_len = 0;               // 0: the model's context
  int world_size = 1;
  int zero = 0;                      // ZeRO stage: 1-3 shard the trained state over world_size ranks
  int64_t kept_whole_elements = 0;   // ZeRO-3: trained weights read outside the forward (never gathered per part)
  bool cuda = false;                 // bf16 autocast compute; else fp32 compute on CPU
  torch::ScalarType storage_dtype = torch::kFloat32;  // how frozen weights are held
  TrainWeights train_weights = TrainWeights::kAll;
  bool activation_checkpointing = false;
  bool teacher = false;              // distillation: the teacher's logits (its weights: source_copy_elements)
  int64_t fusion_operator_elements = 0;  // Omega entries (fp32, trained with AdamW)
  int64_t fused_projection_elements = 0; // K/V projection entries recomputed from Omega each step
  int64_t inference_copies = 0;      // extra frozen copies of the model held alongside (storage dtype)
  // The source's own tensors held beside the trained fp32 copies, in the
  // storage dtype: the source kept in memory, or a distillation teacher's.
  int64_t source_copy_elements = 0;
  // Frozen weights held in fp32 rather than the storage dtype (the ones
  // alignment re-parameterised).
  int64_t frozen_fp32_elements = 0;
  bool inference_only = false;       // forward passes without gradients (measurement, pooling, export)
};

struct MemoryCategory {
  std::string name;
  int64_t bytes = 0;
  std::string note;
};

struct MemoryPlan {
  std::string stage;
  int64_t parameters = 0;  // of the model
  std::vector<MemoryCategory> categories;

  int64_t total() const;
  double bytes_per_parameter() const;
  // One short table: category, GiB, bytes/parameter, note; and the total.
  std::string table() const;
  nlohmann::json to_json() const;
};

// The bytes a LLaMA layer keeps for backward per token (autograd's saved
// tensors), by the compute path the model takes; activation checkpointing
// keeps only each layer's input and recomputes one layer at a time.
int64_t activation_bytes_per_token_per_layer(const ModelConfig& config, int64_t layer, bool cuda);

MemoryPlan plan_memory(const MemoryPlanInputs& inputs);

// The parameters that train under `weights` (K/V projections for kAttention).
int64_t trainable_parameters(const ModelConfig& config, TrainWeights weights);

}  // namespace dha
