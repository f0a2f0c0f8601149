// Checkpoint -> GGUF for llama.cpp: a per-layer GQA model as the "llama"
// architecture when every layer has the same KV head count, else as "deci"
// (per-layer attention.head_count_kv), q/k rows permuted into llama.cpp's
// interleaved RoPE order, and the tokenizer as tokenizer.ggml.* metadata.
#pragma once

#include <optional>
#include <string>

#include <torch/types.h>

#include "dha/checkpoint.h"
#include "dha/io/gguf.h"

namespace dha::io {

// The GGUF architecture of the family the writer writes `config` as
// (io::written_family): "llama" for a GQA layout, "deci" for per-layer KV head
// counts. A family without one (qwen2: biases) is a dha::Error.
std::string gguf_architecture(const ModelConfig& config);

// The metadata of the file save_gguf_checkpoint writes. `tokenizer` (a
// sentencepiece .model or llama2.c tokenizer.bin with exactly vocab_size
// pieces) becomes tokenizer.ggml.model "llama" with its tokens, scores, types
// and special ids; a .gguf file gives its own tokenizer.* metadata as it is; without one the file says tokenizer.ggml.model "none"
// (llama.cpp's vocabulary-less model: it runs on token ids, it cannot
// tokenize text). `weights` is the dtype of the 2-D tensors (general.file_type).
GgufMetadata gguf_export_metadata(const ModelConfig& config, const std::string& tokenizer,
                                  torch::ScalarType weights);

// Writes `checkpoint` as a GGUF file atomically. Its layout must be per-layer
// GQA with contiguous equal groups and K and V on the same partition (what
// relayout_heads(kPerLayerGqa) makes), without shared attention; otherwise a
// dha::Error says so. Matrices are stored in `dtype` (float32, float16 or
// bfloat16; unset: the checkpoint's storage dtype), norm weights in float32
// as llama.cpp's converter does.
void save_gguf_checkpoint(const std::string& path, const Checkpoint& checkpoint,
                          std::optional<torch::ScalarType> dtype, const std::string& tokenizer);

}  // namespace dha::io
