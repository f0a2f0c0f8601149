// Shared Attention: spans, conversion, cross-layer attention similarity, span choice.
#include "dha/shared_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "dha/error.h"

namespace dha {
namespace {

int64_t parse_layer(const std::string& text, const std::string& whole) {
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || value < 0)
    fail("--share-spans \"", whole, "\": \"", text, "\" is not a layer number (expected spans like 3-5,7-8)");
  return value;
}

}  // namespace

std::vector<LayerSpan> parse_share_spans(const std::string& text, int64_t n_layers) {
  std::vector<LayerSpan> spans;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t dash = item.find('-');
    const int64_t first = parse_layer(item.substr(0, dash), text);
    const int64_t last = dash == std::string::npos ? first : parse_layer(item.substr(dash + 1), text);
    if (last < first) fail("--share-spans \"", text, "\": span ", item, " ends before it starts");
    if (first == 0)
      fail("--share-spans \"", text, "\": span ", item,
           " starts at layer 0, which has no earlier layer to take attention from; start at 1 or later");
    if (last >= n_layers)
      fail("--share-spans \"", text, "\": span ", item, " goes past the last layer (the model has ", n_layers,
           " layers: 0..", n_layers - 1, ")");
    spans.push_back({first, last});
  }
  if (spans.empty()) fail("--share-spans \"", text, "\": no spans (expected e.g. 3-5,7-8)");
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first <= spans[i - 1].second)
      fail("--share-spans \"", text, "\": spans ", spans[i - 1].first, "-", spans[i - 1].second, " and ",
           spans[i].first, "-", spans[i].second, " overlap");
  return spans;
}

std::string format_spans(const std::vector<LayerSpan>& spans) {
  std::string out;
  for (const auto& [first, last] : spans) {
    if (!out.empty()) out += ",";
    out += std::to_string(first) + "-" + std::to_string(last);
  }
  return out;
}

HeadLayout with_shared_spans(HeadLayout layout, const std::vector<LayerSpan>& spans) {
  const int64_t n_layers = layout.n_layers();
  for (const auto& [first, last] : spans) {
    if (first < 1 || last >= n_layers || last < first)
      fail("shared attention: span ", first, "-", last, " does not fit a model of ", n_layers, " layers");
    for (int64_t l = first; l <= last; ++l) layout.k_map[l].clear();
  }
  return layout;
}

Checkpoint share_attention(const Checkpoint& source, const std::vector<LayerSpan>& spans) {
  Checkpoint out = source;
  ModelConfig& c = out.config;
  c.layout = with_shared_spans(c.layout, spans);
  for (const auto& [first, last] : spans)
    for (int64_t l = first; l <= last; ++l) {
      // The probabilities are per query head, so source and sharer must agree
      // on H; every layer of a LLaMA config has the same H, checked here
      // because the sharer keeps its own o_proj over H heads.
      const auto o_proj = source.tensors.find(projection_name(l, "o_proj"));
      if (o_proj == source.tensors.end() || o_proj->second.size(1) != c.n_heads * c.head_dim)
        fail("shared attention: layer ", l, " does not have ", c.n_heads, " query heads like the others");
      for (const char* dropped : {"q_proj", "k_proj"})
        for (bool bias : {false, true})  // biases with their projections (none without attention biases)
          out.tensors.erase(projection_name(l, dropped, bias));
    }
  c.validate("shared-attention model");
  return out;
}

namespace {

// Every layer's attention probabilities of one forward pass.
class ProbabilityCollector : public AttentionObserver {
 public:
  explicit ProbabilityCollector(int64_t n_layers) : p_(n_layers) {}
  bool wants_probabilities(int64_t) const override { return true; }
  void probabilities(int64_t layer, const torch::Tensor& p) override { p_[layer] = p; }
  std::vector<torch::Tensor> take() {
    std::vector<torch::Tensor> out(p_.size());
    out.swap(p_);
    return out;
  }

 private:
  std::vector<torch::Tensor> p_;
};

}  // namespace

AttentionSimilarity measure_attention_similarity(Llama& model, const std::vector<torch::Tensor>& batches) {
  if (batches.empty()) fail("attention similarity: no calibration batches");
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t n_layers = model->config().n_layers;
  ProbabilityCollector collector(n_layers);
  ForwardOptions options;
  options.observer = &collector;
  AttentionSimilarity out;
  out.cosine = torch::zeros({n_layers, n_layers}, torch::kFloat64);
  out.js = torch::zeros({n_layers, n_layers}, torch::kFloat64);
  // One sequence at a time: L x [H, T, T] probabilities fit where
  // L x [B, H, T, T] may not (a large model).
  std::vector<torch::Tensor> sequences;
  for (const torch::Tensor& batch : batches)
    for (int64_t i = 0; i < batch.size(0); ++i) sequences.push_back(batch.narrow(0, i, 1));
  for (const torch::Tensor& sequence : sequences) {
    model->forward(sequence, options);
    // float64: in float32, (p + q) / 2 of two tiny probabilities can flush to
    // zero where p does not, and the divergence would read infinite.
    std::vector<torch::Tensor> p = collector.take();  // per layer [1, H, T, T]
    for (auto& layer : p) layer = layer.to(torch::kFloat64);
    for (int64_t a = 0; a < n_layers; ++a) {
      const torch::Tensor norm_a = p[a].norm(2, -1);
      const torch::Tensor self_entropy_a = torch::xlogy(p[a], p[a]).sum(-1);
      for (int64_t b = a; b < n_layers; ++b) {
        const torch::Tensor cosine = (p[a] * p[b]).sum(-1) / (norm_a * p[b].norm(2, -1)).clamp_min(1e-30);
        const torch::Tensor m = 0.5 * (p[a] + p[b]);
        // JS = (KL(Pa || M) + KL(Pb || M)) / 2 with 0 log 0 = 0.
        const torch::Tensor js = 0.5 * (self_entropy_a - torch::xlogy(p[a], m).sum(-1) +
                                        torch::xlogy(p[b], p[b]).sum(-1) - torch::xlogy(p[b], m).sum(-1));
        const double c = cosine.sum().item<double>();
        const double j = js.clamp_min(0.0).sum().item<double>();
        out.cosine[a][b] += c, out.js[a][b] += j;
        if (b != a) out.cosine[b][a] += c, out.js[b][a] += j;
      }
    }
    out.rows += p[0].numel() / p[0].size(-1);
  }
  out.cosine /= static_cast<double>(out.rows);
  out.js /= static_cast<double>(out.rows);
  return out;
}

std::vector<LayerSpan> choose_share_spans(const ModelConfig& config, const torch::Tensor& cosine, double budget) {
  if (!(budget > 0.0 && budget <= 1.0)) fail("--budget ", budget, " must be in (0, 1]");
  const int64_t n_layers = config.n_layers;
  if (cosine.dim() != 2 || cosine.size(0) != n_layers || cosine.size(1) != n_layers)
    fail("choose_share_spans: the similarity matrix is not ", n_layers, " x ", n_layers);
  const int64_t full = 2 * n_layers * config.n_heads;
  const int64_t target = std::llround(budget * static_cast<double>(full));
  HeadLayout layout = config.layout;
  const auto similarity = cosine.to(torch::kFloat64).contiguous();
  // How alike every sharing layer is to the layer it actually takes attention
  // from. Sharing layer l also re-points the sharers after it that used l, so
  // each candidate is scored by the total it leaves, not by its own pair alone.
  auto total_similarity = [&](const HeadLayout& candidate) {
    double total = 0.0;
    for (int64_t l = 1; l < n_layers; ++l)
      if (candidate.shares_attention(l)) total += similarity[candidate.attention_source(l)][l].item<double>();
    return total;
  };
  while (layout.kv_heads() > target) {
    int64_t best = -1;
    double best_total = -std::numeric_limits<double>::infinity();
    for (int64_t l = 1; l < n_layers; ++l) {
      if (layout.shares_attention(l)) continue;
      const double total = total_similarity(with_shared_spans(layout, {{l, l}}));
      if (total >= best_total) best_total = total, best = l;  // ">=": ties go to the later layer
    }
    if (best < 0) {
      const HeadLayout all = n_layers > 1 ? with_shared_spans(config.layout, {{1, n_layers - 1}}) : config.layout;
      fail("--budget ", budget, " cannot be reached by sharing attention alone: sharing every layer but 0 keeps ",
           all.kv_heads(), " of ", full, " heads (budget ", static_cast<double>(all.kv_heads()) / full,
           "); raise --budget or combine with head sharing (--method dha --share-spans ...)");
    }
    layout = with_shared_spans(layout, {{best, best}});
  }
  return layout.shared_spans();
}

}  // namespace dha
