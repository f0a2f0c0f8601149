// The export formats and the head re-layouts they use (GQA refinement, MHA
// expansion), each without changing the model's function.
#include "dha/export.h"

#include <algorithm>
#include <map>
#include <numeric>

#include "dha/error.h"
#include "dha/io/gguf_export.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/tokenizer.h"

namespace dha {
namespace {

const char* relayout_name(HeadRelayout relayout) {
  return relayout == HeadRelayout::kKeep ? "dha" : relayout == HeadRelayout::kPerLayerGqa ? "gqa" : "mha";
}

void refuse_shared_attention(const ModelConfig& c, const std::string& format) {
  if (!c.layout.shared_spans().empty())
    fail("--export ", format, ": layers share attention (", describe_layout(c),
         "), which only the dha format can hold; export dha");
}

// An HF-style directory: plain HF when the layout is MHA/GQA, else the dha
// format (config.json carries the per-layer maps).
void write_directory(const std::string& dir, const Checkpoint& checkpoint, const ExportWriteOptions& options,
                     io::DirFormat format) {
  io::DirSaveOptions save;
  save.format = format;
  save.dtype = options.dtype;
  save.tokenizer = options.tokenizer;
  io::write_hf_files(dir, checkpoint, save);
}

io::DirFormat hf_if_standard(const Checkpoint& checkpoint) {
  return checkpoint.config.layout.uniform_gqa_kv_heads() ? io::DirFormat::kHf : io::DirFormat::kDha;
}

std::vector<ExportFormat> make_formats() {
  std::vector<ExportFormat> formats;
  formats.push_back({"dha", "the native directory: any layout, per-layer k_map / v_map in config.json",
                     HeadRelayout::kKeep, false, true,
                     [](const std::string& dir, const Checkpoint& ck, const ExportWriteOptions& options) {
                       write_directory(dir, ck, options, io::DirFormat::kDha);
                     }});
  formats.push_back({"hf", "a plain Hugging Face LLaMA directory (MHA/GQA layouts only)", HeadRelayout::kKeep, false,
                     false, [](const std::string& dir, const Checkpoint& ck, const ExportWriteOptions& options) {
                       write_directory(dir, ck, options, io::DirFormat::kHf);
                     }});
  formats.push_back({"gqa",
                     "per-layer GQA re-layout (K and V on one partition of equal contiguous groups); an HF "
                     "directory when every layer has the same count, else the dha directory",
                     HeadRelayout::kPerLayerGqa, false, false,
                     [](const std::string& dir, const Checkpoint& ck, const ExportWriteOptions& options) {
                       write_directory(dir, ck, options, hf_if_standard(ck));
                     }});
  formats.push_back({"mha", "expanded back to one K and V head per query head, as an HF directory",
                     HeadRelayout::kMha, false, false,
                     [](const std::string& dir, const Checkpoint& ck, const ExportWriteOptions& options) {
                       write_directory(dir, ck, options, io::DirFormat::kHf);
                     }});
  formats.push_back({"llama2c", "a llama2.c .bin file (fp32; MHA/GQA layouts only)", HeadRelayout::kKeep, true, false,
                     [](const std::string& file, const Checkpoint& ck, const ExportWriteOptions&) {
                       io::save_llama2c(file, ck);
                     }});
  formats.back().holds_biases = false;
  formats.push_back({"gguf",
                     "a llama.cpp GGUF file (f32 | f16 | bf16): the per-layer GQA re-layout, architecture llama "
                     "when every layer has the same KV head count, else deci (per-layer head_count_kv); the "
                     "tokenizer as its vocabulary, or without one a vocabulary-less file (llama.cpp runs it on "
                     "token ids)",
                     HeadRelayout::kPerLayerGqa, true, false,
                     [](const std::string& file, const Checkpoint& ck, const ExportWriteOptions& options) {
                       io::save_gguf_checkpoint(file, ck, options.dtype,
                                                options.tokenizer ? options.tokenizer->path() : std::string());
                     }});
  formats.back().holds_biases = false;
  return formats;
}

}  // namespace

const std::vector<ExportFormat>& export_formats() {
  static const std::vector<ExportFormat> formats = make_formats();
  return formats;
}

std::string export_formats_help(bool directories_only) {
  return rows_help(export_formats(), [&](const ExportFormat& f) { return !directories_only || !f.single_file; });
}

const ExportFormat& find_export_format(const std::string& wanted, const std::string& option) {
  return find_row(export_formats(), wanted, option);
}

Checkpoint export_checkpoint(const Checkpoint& model, const ExportFormat& format) {
  if (!format.holds_shared_attention) refuse_shared_attention(model.config, format.name);
  return relayout_heads(model, format.relayout);
}

Checkpoint relayout_heads(const Checkpoint& model, HeadRelayout relayout) {
  if (relayout == HeadRelayout::kKeep) return model;
  const ModelConfig& c = model.config;
  refuse_shared_attention(c, relayout_name(relayout));
  Checkpoint out = model;
  torch::NoGradGuard no_grad;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    // Heads [n, d_h, d (+ 1)]: a bias is permuted and duplicated with its head.
    const torch::Tensor wq = projection_heads(model, l, "q_proj");
    const torch::Tensor wk = projection_heads(model, l, "k_proj");
    const torch::Tensor wv = projection_heads(model, l, "v_proj");
    const torch::Tensor wo = model.tensors.at(projection_name(l, "o_proj")).view({c.dim, c.n_heads, c.head_dim});
    const auto& k_map = c.layout.k_map[l];
    const auto& v_map = c.layout.v_map[l];

    // order: query heads in their new positions; kv_source: the (K, V) head pair of each new KV head.
    std::vector<int64_t> order;
    std::vector<std::pair<int64_t, int64_t>> kv_source;
    int64_t group_size = 1;
    if (relayout == HeadRelayout::kMha) {
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
    set_projection_heads(out, l, "q_proj", wq.index_select(0, index));
    out.tensors[projection_name(l, "o_proj")] = wo.index_select(1, index).reshape({c.dim, c.n_heads * c.head_dim}).contiguous();
    set_projection_heads(out, l, "k_proj", wk.index_select(0, torch::tensor(k_heads, torch::kInt64)));
    set_projection_heads(out, l, "v_proj", wv.index_select(0, torch::tensor(v_heads, torch::kInt64)));
    std::vector<int64_t> map(c.n_heads);
    for (int64_t q = 0; q < c.n_heads; ++q) map[q] = q / group_size;
    out.config.layout.k_map[l] = map;
    out.config.layout.v_map[l] = map;
  }
  out.config.validate(std::string("the ") + relayout_name(relayout) + " export");
  return out;
}

}  // namespace dha
