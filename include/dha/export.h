// Export of a model (docs/method.md §5): one list of formats, each knowing how
// it lays out the heads and which container it writes. dha-convert --export
// and dha-export --format both read the list; adding a format is one row, its
// writer and its test.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dha/checkpoint.h"
#include "dha/lookup.h"
#include "dha/tokenizer.h"

namespace dha {

// How a format lays out the heads; every re-layout keeps the function.
enum class HeadRelayout {
  kKeep,         // as is
  kPerLayerGqa,  // K and V share one partition per layer; groups made equal
                 // (heads duplicated) and contiguous (query heads permuted with
                 // W_O's columns)
  kMha,          // every query head gets its own copy of its K and V heads
};

// What a writer is given beside the checkpoint.
struct ExportWriteOptions {
  std::optional<torch::ScalarType> dtype;  // weights on disk; unset: the checkpoint's storage dtype
  const Tokenizer* tokenizer = nullptr;    // written along (Tokenizer::write_files); null: none
};

struct ExportFormat {
  std::string name;
  std::string help;
  HeadRelayout relayout = HeadRelayout::kKeep;
  bool single_file = false;             // writes one file, not a model directory
  bool holds_shared_attention = false;  // can hold layers without keys (Shared Attention)
  // Writes the re-laid-out checkpoint: into the existing (staged, empty)
  // directory `path`, or as the file `path` (atomically) when single_file.
  std::function<void(const std::string& path, const Checkpoint&, const ExportWriteOptions&)> write;
  bool holds_biases = true;  // can hold q/k/v biases (Qwen2)
};

// Every format, in the order --help lists them.
const std::vector<ExportFormat>& export_formats();
// The format called `name`; otherwise an error naming `option` and every format.
const ExportFormat& find_export_format(const std::string& name, const std::string& option = "--format");
// "dha | hf | gqa | ..." with each format's help, for --help.
std::string export_formats_help(bool directories_only = false);

// The same function in the format's head layout. Layers that share attention
// are refused unless the format holds them.
Checkpoint export_checkpoint(const Checkpoint& model, const ExportFormat& format);
Checkpoint relayout_heads(const Checkpoint& model, HeadRelayout relayout);

}  // namespace dha
