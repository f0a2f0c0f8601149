// LLaMA-family GGUF files (a GGUF architecture of the checkpoint families,
// dha/io/checkpoint_family.h: "llama" or "deci") as dha checkpoints: config
// from the {arch}.* metadata, tensors renamed to the canonical (HF) names and
// q/k rows turned back from llama.cpp's interleaved order into HF's
// rotate-half order, per layer with that layer's KV head count.
#pragma once

#include <optional>
#include <string>

#include "dha/checkpoint.h"
#include "dha/io/gguf.h"

namespace dha::io {

// Reads a .gguf file. Quantized tensors (Q8_0, Q4_0, Q4_1) are dequantized
// and the checkpoint's storage dtype is then float32; a file of plain float
// tensors keeps their dtypes (storage dtype: the token embedding's).
// Throws a one-line dha::Error naming the file and the key or tensor on
// anything the toolkit's LLaMA cannot represent.
Checkpoint load_gguf_checkpoint(const std::string& path);
Checkpoint gguf_to_checkpoint(const GgufFile& file);
// The storage dtype of a .gguf file, from the token embedding's tensor type
// (the header only).
torch::ScalarType gguf_storage_dtype(const std::string& path);

// The config a GGUF file's metadata describes (architecture llama or deci),
// with a per-layer GQA layout (contiguous groups) when head_count_kv is a
// per-layer array. vocab_size comes from {arch}.vocab_size, else the token
// list, else the token embedding; tied_embeddings is true when the file has
// no output.weight.
ModelConfig gguf_model_config(const GgufFile& file);

// llama.cpp tensor names <-> HF names: "blk.3.attn_q.weight" <->
// "model.layers.3.self_attn.q_proj.weight", "token_embd.weight" <->
// "model.embed_tokens.weight", "output_norm.weight" <-> "model.norm.weight",
// "output.weight" <-> "lm_head.weight". nullopt for any other name.
std::optional<std::string> hf_name_from_gguf(const std::string& gguf_name);
std::optional<std::string> gguf_name_from_hf(const std::string& hf_name);

}  // namespace dha::io
