// The memory plan: bytes per rank by category, from the config alone.
#include "dha/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "dha/error.h"

namespace dha {
namespace {

constexpr int64_t kFp32 = 4;
// What a CPU process holds before any tensor: LibTorch, MKL and their buffers.
constexpr int64_t kCpuRuntimeBytes = int64_t{450} << 20;

int64_t element_bytes(torch::ScalarType dtype) {
  return dtype == torch::kFloat32 ? 4 : dtype == torch::kFloat64 ? 8 : 2;
}

// The largest weight matrix (elements): the transient fp32 copy of a frozen
// low-precision weight is one such matrix at a time.
int64_t largest_matrix(const ModelConfig& c) {
  return std::max({c.vocab_size * c.dim, c.hidden_dim * c.dim, c.n_heads * c.head_dim * c.dim});
}

// The parameters of decoder layer l that train under `weights`.
int64_t layer_trainable(const ModelConfig& c, int64_t l, TrainWeights weights) {
  if (weights == TrainWeights::kNone) return 0;
  const int64_t kv_heads = c.layout.n_k_heads(l) + c.layout.n_v_heads(l);
  const int64_t bias = c.attention_bias ? 1 : 0;
  if (weights == TrainWeights::kAttention)
    return (c.layout.shares_attention(l) ? c.layout.n_v_heads(l) : kv_heads) * c.head_dim * (c.dim + bias);
  return 2 * c.dim + (c.layout.shares_attention(l) ? 1 : 2) * c.n_heads * c.head_dim * c.dim +
         kv_heads * c.head_dim * c.dim +
         bias * ((c.layout.shares_attention(l) ? 0 : c.n_heads) + kv_heads) * c.head_dim + 3 * c.hidden_dim * c.dim;
}

}  // namespace

const std::vector<Named<TrainWeights>>& train_weights_choices() {
  static const std::vector<Named<TrainWeights>> choices = {
      {TrainWeights::kAll, "all", "theta jointly with Omega"},
      {TrainWeights::kAttention, "attention", "only the K/V projections being fused"},
      {TrainWeights::kNone, "none", "only Omega and lambda; weights stay frozen in the source dtype"},
  };
  return choices;
}

TrainWeights parse_train_weights(const std::string& name) {
  return parse_named(train_weights_choices(), name, "--train-weights");
}

const char* train_weights_name(TrainWeights weights) { return name_of(train_weights_choices(), weights).c_str(); }

bool weight_trains(TrainWeights weights, const std::string& name) {
  if (weights == TrainWeights::kAll) return true;
  if (weights == TrainWeights::kNone) return false;
  return name.find(".k_proj.") != std::string::npos || name.find(".v_proj.") != std::string::npos;
}

int64_t trainable_parameters(const ModelConfig& c, TrainWeights weights) {
  if (weights == TrainWeights::kAll) return c.parameter_count();
  if (weights == TrainWeights::kNone) return 0;
  return c.layout.kv_heads() * c.head_dim * (c.dim + (c.attention_bias ? 1 : 0));
}

int64_t activation_bytes_per_token_per_layer(const ModelConfig& c, int64_t layer, bool cuda) {
  // Saved for backward, per token (elements): the two norms' normalised and
  // scaled outputs (2 d each), the residual sum (d), the attention output
  // before o_proj (d_h H, as the op returns it and again contiguous for the
  // projection), q and k after RoPE, v, the keys and values expanded to the
  // query heads by the attention's reference path (2 d_h H), and the MLP's
  // gate, its SiLU, up and their product (4 f). A layer that shares attention
  // has no q or k and keeps the probabilities it is handed (counted by the
  // source layer through T).
  const int64_t h = c.n_heads, hk = c.layout.n_k_heads(layer), hv = c.layout.n_v_heads(layer);
  int64_t elements = 5 * c.dim + 4 * c.hidden_dim + c.head_dim * (2 * h + hv);
  if (!c.layout.shares_attention(layer)) elements += c.head_dim * (h + hk + 2 * h);
  else elements += c.head_dim * h;  // the values expanded to the query heads
  // On CUDA the saved tensors are bf16 under autocast, except the norms' fp32 statistics.
  return elements * (cuda ? 2 : kFp32);
}

int64_t MemoryPlan::total() const {
  int64_t sum = 0;
  for (const auto& c : categories) sum += c.bytes;
  return sum;
}

double MemoryPlan::bytes_per_parameter() const {
  return parameters > 0 ? static_cast<double>(total()) / static_cast<double>(parameters) : 0.0;
}

std::string MemoryPlan::table() const {
  std::string out = "memory plan (" + stage + ", per rank)\n";
  char line[256];
  for (const auto& c : categories) {
    if (c.bytes == 0) continue;
    std::snprintf(line, sizeof(line), "  %-18s %9.3f GiB %7.2f B/param  %s\n", c.name.c_str(),
                  static_cast<double>(c.bytes) / (1 << 30),
                  parameters > 0 ? static_cast<double>(c.bytes) / parameters : 0.0, c.note.c_str());
    out += line;
  }
  std::snprintf(line, sizeof(line), "  %-18s %9.3f GiB %7.2f B/param\n", "total", static_cast<double>(total()) / (1 << 30),
                bytes_per_parameter());
  out += line;
  return out;
}

nlohmann::json MemoryPlan::to_json() const {
  nlohmann::json categories_json = nlohmann::json::object();
  for (const auto& c : categories) categories_json[c.name] = c.bytes;
  return {{"stage", stage},
          {"parameters", parameters},
          {"bytes", total()},
          {"bytes_per_parameter", bytes_per_parameter()},
          {"categories", categories_json}};
}

MemoryPlan plan_memory(const MemoryPlanInputs& in) {
  const ModelConfig& c = in.model;
  MemoryPlan plan;
  plan.stage = in.stage;
  plan.parameters = c.parameter_count();
  const int64_t trained = trainable_parameters(c, in.train_weights);
  const int64_t frozen = plan.parameters - trained;
  const int64_t frozen_bytes = element_bytes(in.storage_dtype);
  const int64_t tokens = in.micro_batch * (in.seq_len > 0 ? in.seq_len : c.max_seq_len);
  auto add = [&](const std::string& name, int64_t bytes, const std::string& note) {
    plan.categories.push_back({name, bytes, note});
  };

  // ZeRO: each of `shards` ranks holds 1/shards of the sharded state (each
  // tensor padded to a multiple of the ranks).
  const int shards = in.zero > 0 && !in.inference_only ? std::max(1, in.world_size) : 1;
  auto per_rank = [&](int64_t bytes) { return (bytes + shards - 1) / shards; };
  // The largest trained tensor: the transient of a gradient being reduced.
  const int64_t largest_param = in.train_weights == TrainWeights::kAll       ? largest_matrix(c)
                                : in.train_weights == TrainWeights::kAttention ? c.n_heads * c.head_dim * c.dim
                                                                               : 0;
  // ZeRO-3 holds one part of the model whole at a time (a decoder layer, the
  // embedding, the head with the final norm), and while a part is whole its
  // largest tensor's gradient is the one being reduced; on CUDA the next
  // layer's gather is in flight too.
  int64_t gathered = 0, largest_layer_part = 0;
  if (in.zero == 3) {
    const bool all = in.train_weights == TrainWeights::kAll;
    const int64_t layer_matrix = all ? std::max(c.hidden_dim * c.dim, c.n_heads * c.head_dim * c.dim)
                                     : c.n_heads * c.head_dim * c.dim;
    for (int64_t l = 0; l < c.n_layers; ++l)
      largest_layer_part = std::max(largest_layer_part, layer_trainable(c, l, in.train_weights));
    const int64_t head = all ? 2 * c.vocab_size * c.dim + c.dim : 0;  // the head, and its gradient
    gathered = std::max(largest_layer_part * (in.cuda ? 2 : 1) + layer_matrix, head);
  }
  const std::string zero_note = shards > 1 ? ", 1/" + std::to_string(shards) + " per rank (ZeRO-" + std::to_string(in.zero) + ")" : "";

  // The RoPE tables (cos and sin, fp32) and the head maps live beside the weights.
  const int64_t tables = 2 * c.max_seq_len * c.head_dim * kFp32 + 2 * c.n_layers * c.n_heads * 8;
  const int64_t whole = std::min(in.kept_whole_elements, trained);
  const int64_t trained_weights =
      in.zero == 3 ? per_rank((trained - whole) * kFp32) + whole * kFp32 + gathered * kFp32 : trained * kFp32;
  const int64_t frozen_fp32 = std::min(in.frozen_fp32_elements, frozen);
  add("weights", trained_weights + frozen * frozen_bytes + frozen_fp32 * (kFp32 - frozen_bytes) + tables,
      std::string("trained in fp32") +
          (in.zero == 3 ? zero_note + " + one part whole with its gradient" + (in.cuda ? " (and the next: prefetch)" : "") +
                              (whole > 0 ? " + the fused K/V projections, whole" : "")
                        : "") +
          (frozen > 0 ? ", frozen in the storage dtype" : "") + (frozen_fp32 > 0 ? " (aligned ones in fp32)" : "") +
          "; RoPE tables");
  if (in.cuda)
    add("autocast copies", (in.zero == 3 ? largest_layer_part * 2 : trained) * 2,
        "bf16 copies of the trained weights, forward to backward");
  if (in.source_copy_elements > 0)
    add("source weights", in.source_copy_elements * frozen_bytes,
        in.teacher ? "the teacher's own: the source's tensors it does not share with the fusion model"
                   : "the source's copy of the trained weights");
  if (in.zero == 0) add("gradients", trained * kFp32, "fp32, trained weights only");
  else if (in.zero == 1)
    add("gradients", trained * kFp32 + per_rank(largest_param * kFp32),
        "fp32, whole until the step, then reduce-scattered one tensor at a time");
  else
    add("gradients", per_rank(trained * kFp32) + (in.zero == 2 ? largest_param * kFp32 : 0),
        "fp32" + zero_note + ", each tensor reduced as backward produces it" +
            (in.zero == 2 ? " (+ the largest one's)" : " (the one in flight: under weights)"));
  add("optimizer state", per_rank(trained * 2 * kFp32), "AdamW moments, fp32" + zero_note);
  add("fusion operators", in.fusion_operator_elements * 4 * kFp32, "Omega, its gradient and moments");
  // Each step recomputes the fused K/V projections from Omega and the weights;
  // backward keeps the fused result, the mixed members and the fusion loss's
  // view of them (fp32; a frozen pool's fp32 upcast is transient).
  add("fused projections", in.fused_projection_elements * 3 * kFp32, "fp32, kept for backward");

  int64_t per_token = 0, largest_layer = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const int64_t layer = activation_bytes_per_token_per_layer(c, l, in.cuda);
    per_token += layer;
    largest_layer = std::max(largest_layer, layer);
  }
  const int64_t act_bytes = in.cuda ? 2 : kFp32;
  int64_t activations = tokens * (per_token + 3 * c.dim * act_bytes);  // + embedding output and final norm
  if (in.activation_checkpointing)
    activations = tokens * (c.n_layers * c.dim * act_bytes + largest_layer + 3 * c.dim * act_bytes);
  if (in.inference_only) activations = tokens * (largest_layer + 3 * c.dim * act_bytes);  // one layer at a time
  add("activations", activations,
      std::to_string(tokens) + " tokens" +
          (in.inference_only ? ", no gradient" : in.activation_checkpointing ? ", checkpointed per layer" : ""));
  // The logits, their log-softmax and its gradient, fp32.
  add("logits and loss", (in.inference_only ? 2 : 3) * tokens * c.vocab_size * kFp32,
      in.inference_only ? "fp32 logits, log-softmax" : "fp32 logits, log-softmax, gradient");
  if (in.teacher) add("teacher logits", tokens * c.vocab_size * kFp32, "fp32");
  if (in.inference_copies > 0)
    add("model copies", in.inference_copies * plan.parameters * frozen_bytes, "frozen, storage dtype (a teacher)");
  const bool upcasts = !in.cuda && frozen > 0 && frozen_bytes < kFp32;
  // AdamW's denominator: one temporary the size of the largest trained tensor,
  // or of the slice (2^24 elements) the update of a larger one goes by.
  const int64_t largest_trained = std::min<int64_t>(int64_t{1} << 24,
                                  in.inference_only                             ? 0
                                  : in.train_weights == TrainWeights::kAll       ? largest_matrix(c)
                                  : in.train_weights == TrainWeights::kAttention ? c.n_heads * c.head_dim * c.dim
                                                                                 : 0);
  // A frozen low-precision weight is upcast one matrix at a time, in forward
  // and again in backward, never two at once.
  add("workspace", (upcasts ? largest_matrix(c) : 0) * kFp32 + largest_trained * kFp32 +
                       (shards > 1 ? per_rank(largest_param * kFp32) : 0),
      std::string(upcasts ? "fp32 copy of one frozen weight at a time; " : "") +
          (largest_trained > 0 ? "AdamW's update of the largest tensor" : ""));
  if (!in.cuda) add("runtime", kCpuRuntimeBytes, "LibTorch and BLAS in the process");
  return plan;
}

}  // namespace dha
