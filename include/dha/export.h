// Export of a DHA model (method.md §5): native, as per-layer GQA, or as MHA.
#pragma once

#include <string>

#include "dha/checkpoint.h"

namespace dha {

enum class ExportFormat {
  kDha,  // as is: per-layer k_map / v_map in config.json
  kGqa,  // K and V share one partition per layer; groups made equal (heads
         // duplicated) and contiguous (query heads permuted with W_O's columns)
  kMha,  // every query head gets its own copy of its K and V heads
};

ExportFormat parse_export_format(const std::string& name);  // "dha" | "gqa" | "mha"
const char* export_format_name(ExportFormat format);

// The same function in the requested layout.
Checkpoint export_checkpoint(const Checkpoint& model, ExportFormat format);

}  // namespace dha
