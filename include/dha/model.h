// LLaMA with decoupled K/V heads: RMSNorm, RoPE (rotate-half), SwiGLU, grouped
// attention through per-layer k_map / v_map, tied or untied classifier, and a
// KV cache that stores only H_K[l] key heads and H_V[l] value heads per layer.
// Parameter names equal the Hugging Face LLaMA names, so a Checkpoint's
// tensors map onto named_parameters() one to one.
#pragma once

#include <string>
#include <vector>

#include <functional>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "dha/checkpoint.h"
#include "dha/config.h"

namespace dha {

// Per layer: k [B, H_K[l], capacity, d_h], v [B, H_V[l], capacity, d_h];
// positions [0, length) are filled. A layer that shares attention has H_K = 0:
// its k entry holds no elements.
struct KVCache {
  std::vector<torch::Tensor> k;
  std::vector<torch::Tensor> v;
  int64_t length = 0;

  int64_t capacity() const { return k.empty() ? 0 : k.front().size(2); }
  // Bytes the cache holds (allocated for `capacity` positions).
  int64_t bytes() const;
};

// x W^T (+ b) for a weight W [out, in]. Unlike torch::nn::Linear it can be built
// without allocating its weight (the model then adopts a checkpoint's tensors),
// and a frozen weight held in a lower precision than x is cast to x's dtype one
// matrix at a time, in forward and again in backward: it is never kept in fp32.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in, int64_t out, bool bias, bool allocate);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;  // bias undefined when there is none
};
TORCH_MODULE(Projection);

// x W^T (+ b) with Projection's casting rules, for weights held elsewhere (the
// fusion stage's effective K/V weights). Under CUDA autocast the dtypes are autocast's.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

// Token ids [B, T] -> rows of the embedding [vocab, d].
class TokenEmbeddingImpl : public torch::nn::Module {
 public:
  TokenEmbeddingImpl(int64_t vocab, int64_t dim, bool allocate);
  torch::Tensor forward(const torch::Tensor& tokens);
  torch::Tensor weight;
};
TORCH_MODULE(TokenEmbedding);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, bool allocate = true);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// RoPE's inverse frequencies [d_h / 2] in float64: theta^(-2j/d_h), then the
// scaling's adjustment ("linear": / factor; "llama3": long wavelengths / factor,
// short ones kept, a smooth blend between), as transformers' modeling_rope_utils.
torch::Tensor rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling = {});

// Rotary position embedding in the rotate-half layout (dimension pairs (j, j + d_h/2)).
// A module only so that its tables follow the model across devices.
class RopeImpl : public torch::nn::Module {
 public:
  RopeImpl(int64_t head_dim, int64_t max_seq_len, double theta, const RopeScaling& scaling = {});
  // x: [B, heads, T, d_h] at positions start .. start+T-1.
  torch::Tensor apply(const torch::Tensor& x, int64_t start) const;

 private:
  torch::Tensor cos_, sin_;  // [max_seq_len, d_h] buffers, float32
};
TORCH_MODULE(Rope);

// What one forward pass may be asked beyond its logits, given per call (the
// model keeps none of it): the converter's instruments.
//
// Weights a layer's attention uses instead of its own k_proj / v_proj (and
// their biases, with attention biases): the fusion stage's operator-mixed
// weights. An undefined weight: the layer's own.
struct KVWeights {
  torch::Tensor k_weight, k_bias, v_weight, v_bias;
};
// Receives what attention computed, for the layers it asks for.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  // Keys before RoPE [B, H_K, T, d_h] (undefined in a layer that shares
  // attention) and values [B, H_V, T, d_h]: calibration statistics.
  virtual bool wants_keys_and_values(int64_t layer) const { return false; }
  virtual void keys_and_values(int64_t layer, const torch::Tensor& keys, const torch::Tensor& values) {}
  // Attention probabilities [B, H, T_q, T_k]: the cross-layer similarity analysis.
  virtual bool wants_probabilities(int64_t layer) const { return false; }
  virtual void probabilities(int64_t layer, const torch::Tensor& p) {}
};
struct ForwardOptions {
  KVCache* cache = nullptr;
  const std::vector<KVWeights>* kv_weights = nullptr;  // one entry per layer, or null
  AttentionObserver* observer = nullptr;               // null: nothing observed
};

// One layer's share of ForwardOptions.
struct LayerForward {
  const KVWeights* kv_weights = nullptr;
  AttentionObserver* observer = nullptr;
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, int64_t layer, bool allocate = true);
  // x: [B, T, d]; cache_k/cache_v: this layer's cache or undefined.
  // probabilities: for a sharing layer, the source's attention probabilities
  // [B, H, T, T_k] (read); for a layer that emits them, written here.
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope, int64_t start, torch::Tensor cache_k,
                        torch::Tensor cache_v, torch::Tensor& probabilities, const LayerForward& extras = {});
  // Null in a layer that shares attention (it has no queries or keys).
  Projection q_proj{nullptr}, k_proj{nullptr};
  Projection v_proj{nullptr}, o_proj{nullptr};
  torch::Tensor k_map, v_map;  // int64 [H] buffers (k_map undefined when sharing)

  bool shares_attention() const { return shares_; }
  // The source layer of a shared span: it materialises its attention
  // probabilities (instead of the fused op) and hands them on.
  bool emits_probabilities() const { return emits_; }

 private:
  int64_t layer_, n_heads_, n_k_heads_, n_v_heads_, head_dim_;
  bool shares_, emits_;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t dim, int64_t hidden_dim, bool allocate = true);
  torch::Tensor forward(const torch::Tensor& x);
  Projection gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t layer, bool allocate = true);
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope, int64_t start, torch::Tensor cache_k,
                        torch::Tensor cache_v, torch::Tensor& probabilities, const LayerForward& extras = {});
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(const ModelConfig& config, bool allocate = true);
  TokenEmbedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

// Where the model's weights come from when they are not always held: ZeRO-3
// keeps each rank's shard only and gathers a part just before it runs
// (forward, and again for a layer's recomputation in backward), releasing it
// after. Parts: -1 the embedding, 0..L-1 the decoder layers, L the final norm
// and head (released by the source itself once backward is done with them).
class LayerWeightSource {
 public:
  virtual ~LayerWeightSource() = default;
  // Makes part `part`'s parameters whole; `backward`: for a layer's
  // recomputation in backward (the next part needed is then part - 1).
  virtual void gather(int64_t part, bool backward) = 0;
  virtual void release(int64_t part) = 0;
};

class LlamaImpl : public torch::nn::Module {
 public:
  // Validates the config; parameters are zero until load_state(). With
  // allocate = false they are empty placeholders that make_model_over
  // replaces by a checkpoint's tensors (no memory for a copy that is discarded).
  explicit LlamaImpl(const ModelConfig& config, bool allocate = true);

  // tokens: int64 [B, T]. Returns logits [B, T, vocab] (float32 for a float32
  // model). With a cache, the tokens continue at position cache->length and
  // the cache is extended.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr);
  // The same with the converter's instruments (weights used instead of a
  // layer's K/V projections, an observer of attention).
  torch::Tensor forward(const torch::Tensor& tokens, const ForwardOptions& options);

  // An empty cache for `batch` sequences of up to `capacity` positions.
  KVCache make_cache(int64_t batch, int64_t capacity, torch::ScalarType dtype) const;

  const ModelConfig& config() const { return config_; }

  // Copies tensors (any float dtype) into the parameters; throws naming
  // `source` on a missing, extra or mis-shaped tensor.
  void load_state(const TensorMap& tensors, const std::string& source);
  // The parameters under their checkpoint names (shared storage, detached).
  TensorMap state() const;
  // The parameters as a checkpoint without copying on CPU: its tensors are the
  // model's (copied to the CPU when the model is elsewhere).
  Checkpoint shared_checkpoint(torch::ScalarType storage_dtype) const;

  Backbone model{nullptr};
  Projection lm_head{nullptr};  // null when tied to the embedding

  // Recompute each decoder layer in backward instead of keeping its
  // activations (only its input is kept): training memory for activations
  // falls from L layers' worth to one layer's plus L inputs. Used only when
  // gradients are being recorded and there is no KV cache.
  bool activation_checkpointing = false;
  // When set, every decoder layer's weights are gathered before it runs and
  // released after (not owned). Training with it needs activation
  // checkpointing: a layer's weights must not be kept for backward.
  LayerWeightSource* layer_weights = nullptr;

 private:
  ModelConfig config_;
  Rope rope_{nullptr};
};
TORCH_MODULE(Llama);

// A freshly initialised model for pre-training: weights N(0, 0.02), the
// residual output projections (o_proj, down_proj) scaled by 1/sqrt(2L), norms 1,
// biases 0.
Llama make_random_model(const ModelConfig& config, uint64_t seed);

// Builds a model on CPU in float32 from a checkpoint (its own copy of every weight).
Llama make_model(const Checkpoint& checkpoint, const std::string& source);

// Builds a model over a checkpoint's tensors without copying the frozen ones:
// a weight for which `trains(name)` holds gets its own float32 copy and
// requires grad; every other weight shares the checkpoint's storage, in its
// dtype, and is frozen (computed in float32 one matrix at a time on CPU).
// Without `trains`, nothing trains. The checkpoint must outlive no one: the
// model keeps the shared tensors alive.
Llama make_model_over(const Checkpoint& checkpoint, const std::string& source,
                         const std::function<bool(const std::string& name)>& trains = {});

}  // namespace dha
