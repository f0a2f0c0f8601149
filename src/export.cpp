// Re-layout of a DHA checkpoint as GQA or MHA without changing its function.
#include "dha/export.h"

#include <algorithm>
#include <map>
#include <numeric>

#include "dha/error.h"

namespace dha {
namespace {

std::string name(int64_t l, const char* proj) {
  return "model.layers." + std::to_string(l) + ".self_attn." + proj + ".weight";
}

}  // namespace

ExportFormat parse_export_format(const std::string& s) {
  if (s == "dha") return ExportFormat::kDha;
  if (s == "gqa") return ExportFormat::kGqa;
  if (s == "mha") return ExportFormat::kMha;
  fail("--export \"", s, "\" is not one of dha, gqa, mha");
}

const char* export_format_name(ExportFormat f) {
  return f == ExportFormat::kDha ? "dha" : f == ExportFormat::kGqa ? "gqa" : "mha";
}

Checkpoint export_checkpoint(const Checkpoint& model, ExportFormat format) {
  if (format == ExportFormat::kDha) return model;
  const ModelConfig& c = model.config;
  if (!c.layout.shared_spans().empty())
    fail("--export ", export_format_name(format), ": layers share attention (", describe_layout(c),
         "), which only the dha format can hold; export dha");
  Checkpoint out = model;
  torch::NoGradGuard no_grad;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const torch::Tensor wq = model.tensors.at(name(l, "q_proj")).view({c.n_heads, c.head_dim, c.dim});
    const torch::Tensor wk = model.tensors.at(name(l, "k_proj")).view({-1, c.head_dim, c.dim});
    const torch::Tensor wv = model.tensors.at(name(l, "v_proj")).view({-1, c.head_dim, c.dim});
    const torch::Tensor wo = model.tensors.at(name(l, "o_proj")).view({c.dim, c.n_heads, c.head_dim});
    const auto& k_map = c.layout.k_map[l];
    const auto& v_map = c.layout.v_map[l];

    // order: query heads in their new positions; kv_source: the (K, V) head pair of each new KV head.
    std::vector<int64_t> order;
    std::vector<std::pair<int64_t, int64_t>> kv_source;
    int64_t group_size = 1;
    if (format == ExportFormat::kMha) {
      for (int64_t q = 0; q < c.n_heads; ++q) order.push_back(q), kv_source.push_back({k_map[q], v_map[q]});
    } else {
      // The common refinement: query heads that read the same (K, V) pair.
      std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> cells;
      for (int64_t q = 0; q < c.n_heads; ++q) cells[{k_map[q], v_map[q]}].push_back(q);
      group_size = 0;
      for (const auto& [pair, members] : cells) group_size = std::gcd(group_size, static_cast<int64_t>(members.size()));
      // Cells in order of their first query head; each split into chunks of group_size.
      std::vector<std::pair<int64_t, std::pair<int64_t, int64_t>>> by_first;
      for (const auto& [pair, members] : cells) by_first.push_back({members.front(), pair});
      std::sort(by_first.begin(), by_first.end());
      for (const auto& [first, pair] : by_first) {
        const auto& members = cells[pair];
        for (size_t i = 0; i < members.size(); ++i) {
          if (i % group_size == 0) kv_source.push_back(pair);
          order.push_back(members[i]);
        }
      }
    }
    const torch::Tensor index = torch::tensor(order, torch::kInt64);
    std::vector<int64_t> k_heads, v_heads;
    for (const auto& [k, v] : kv_source) k_heads.push_back(k), v_heads.push_back(v);
    out.tensors[name(l, "q_proj")] = wq.index_select(0, index).reshape({c.n_heads * c.head_dim, c.dim}).contiguous();
    out.tensors[name(l, "o_proj")] = wo.index_select(1, index).reshape({c.dim, c.n_heads * c.head_dim}).contiguous();
    out.tensors[name(l, "k_proj")] =
        wk.index_select(0, torch::tensor(k_heads, torch::kInt64)).reshape({-1, c.dim}).contiguous();
    out.tensors[name(l, "v_proj")] =
        wv.index_select(0, torch::tensor(v_heads, torch::kInt64)).reshape({-1, c.dim}).contiguous();
    std::vector<int64_t> map(c.n_heads);
    for (int64_t q = 0; q < c.n_heads; ++q) map[q] = q / group_size;
    out.config.layout.k_map[l] = map;
    out.config.layout.v_map[l] = map;
  }
  out.config.validate(std::string("the ") + export_format_name(format) + " export");
  return out;
}

}  // namespace dha
