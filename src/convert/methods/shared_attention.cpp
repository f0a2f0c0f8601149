// shared-attention: later layers reuse an earlier layer's attention
// probabilities (Liao & Vargas, arXiv 2407.12866). The spans are the whole
// conversion (docs/method.md §4.3): chosen for --budget from the cross-layer
// similarity, or given with --share-spans; no head is merged.
#include "../method.h"

namespace dha::convert {
namespace {

void plan_shared_attention(const ConvertOptions& options, ConvertPlan& plan) {
  plan.measure_similarity = true;
  plan.choose_spans = plan.spans.empty() && !plan.analyze_only;
  // Given spans are the conversion; --budget only matters when they are chosen for it.
  plan.uses_budget = plan.uses_budget && options.share_spans.empty();
}

MergeResult keep_shared(ConvertContext&, const Checkpoint& model, const Grouping&) {
  MergeResult result;
  result.collapsed = model;
  return result;
}

}  // namespace

ConvertMethodRow shared_attention_method() {
  ConvertMethodRow row;
  row.name = "shared-attention";
  row.help = "later layers reuse an earlier layer's attention";
  row.grouping = HeadGrouping::kNone;
  row.plan = plan_shared_attention;
  row.merge = keep_shared;
  return row;
}

}  // namespace dha::convert
