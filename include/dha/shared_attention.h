// Shared Attention (docs/method.md §4.3; Liao & Vargas, arXiv 2407.12866): layers in
// a span reuse the attention probabilities of the last layer before the span,
// so they need no query or key projection and no key cache. Here: the span
// syntax, the conversion of a checkpoint, the cross-layer similarity of
// attention maps that tells which layers can share, and the automatic choice
// of spans for a KV budget.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/checkpoint.h"
#include "dha/config.h"
#include "dha/model.h"

namespace dha {

// Parses "A-B,C-D" (inclusive; "A" alone is A-A) for a model of n_layers.
// One clear error for bad syntax, a span starting at layer 0 (it has no
// earlier layer to share with), past the last layer, reversed, or overlapping
// another. Returns the spans sorted.
std::vector<LayerSpan> parse_share_spans(const std::string& text, int64_t n_layers);
std::string format_spans(const std::vector<LayerSpan>& spans);  // "2-3,5-5"

// `layout` with the layers of `spans` sharing attention (their k_map rows
// emptied); throws unless every span fits layers 1..L-1.
HeadLayout with_shared_spans(HeadLayout layout, const std::vector<LayerSpan>& spans);

// The model with the layers of `spans` sharing attention: their q_proj and
// k_proj are dropped (and their key caches with them); values, output
// projections and everything else are kept. Layers that already share stay so.
Checkpoint share_attention(const Checkpoint& source, const std::vector<LayerSpan>& spans);

// Cross-layer similarity of attention maps on calibration batches, per query
// head and averaged over heads, rows (query positions) and batches:
// cosine[a][b] = mean cos(P_a[t, :], P_b[t, :]) (1 on the diagonal) and
// js[a][b] = mean Jensen-Shannon divergence in nats (0 on the diagonal, at most ln 2).
struct AttentionSimilarity {
  torch::Tensor cosine;  // float64 [L, L]
  torch::Tensor js;      // float64 [L, L]
  int64_t rows = 0;      // attention rows averaged per pair (over heads and batches)
};
AttentionSimilarity measure_attention_similarity(Llama& model, const std::vector<torch::Tensor>& batches);

// Spans for a KV budget rho (kept K+V heads over 2 L H): greedily shares one
// more layer at a time, the one that leaves the largest total similarity
// between every sharing layer and the layer it then takes attention from (the
// last earlier layer that keeps its keys; sharing a layer re-points the
// sharers after it), ties to the later layer, until the model keeps at most
// round(rho * 2 L H) heads. Sharing removes only key heads, so a
// budget below what sharing every layer but 0 gives is an error naming that floor.
std::vector<LayerSpan> choose_share_spans(const ModelConfig& config, const torch::Tensor& cosine, double budget);

}  // namespace dha
