// Private to the conversion: the table of conversion methods. A row says
// everything the pipeline needs of a method — what the plan checks and
// refuses, how the heads of each pool are grouped, how grouped heads become
// the converted model (or what replaces attention) — and the pipeline reads
// only rows, never a method's name. Each method's stage code lives in
// src/convert/methods/<name>.cpp; the table is src/convert/methods.cpp
// (docs/architecture.md, "How to add a conversion method").
#pragma once

#include <string>
#include <vector>

#include "stages.h"

namespace dha::convert {

// How a method groups each pool's K (and V) heads before merging them.
enum class HeadGrouping {
  kSearched,    // the search measure's costs decide (--measure, --adaptive, --layout)
  kContiguous,  // equal contiguous groups, the same count in every pool
  kNone,        // heads are not shared (the method works on whole layers)
};

struct ConvertMethodRow {
  std::string name;
  std::string help;

  // ---- the plan (options and source config only; every refusal here) ----
  HeadGrouping grouping = HeadGrouping::kSearched;
  bool takes_share_spans = true;      // --share-spans may run before its head sharing
  bool needs_own_attention = false;   // refuses layers without queries and keys (a source that shares attention)
  bool takes_per_layer_gqa = false;   // --layout per-layer-gqa chooses its groups
  // Decisions and refusals of its own, after the ones every method shares
  // (null: none). Sets e.g. plan.fusion_stage and plan.align.
  void (*plan)(const ConvertOptions& options, ConvertPlan& plan) = nullptr;

  // ---- the stages ----
  // The grouped heads of `model` (the source's tensors as stored, with the
  // plan's spans applied) merged into the converted checkpoint. Records its stage name, the tokens
  // it read and, when it trains, its fusion result.
  MergeResult (*merge)(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping) = nullptr;
};

// Every method, in the order --help lists them.
const std::vector<ConvertMethodRow>& method_rows();

// The rows, one per file of src/convert/methods/.
ConvertMethodRow dha_method();
ConvertMethodRow gqa_method();
ConvertMethodRow aligned_gqa_method();
ConvertMethodRow shared_attention_method();

// Shared by the rows: mean pooling of each group (the GQA merge, and dha
// --no-fusion), and one merge timed as the stage `name`.
MergeResult mean_pooled(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping);

}  // namespace dha::convert
