// aligned-gqa: contiguous equal groups whose heads are first aligned to each
// other by Procrustes rotations (function unchanged), then mean-pooled
// (Jin et al., arXiv 2412.20677).
#include "dha/align.h"
#include "../method.h"

namespace dha::convert {
namespace {

MergeResult align_and_merge(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping) {
  MergeResult result;
  result.stage = "align and merge";
  timed(ctx, result.stage, [&] {
    result.collapsed = collapse_groups(aligned_groups(ctx, model, grouping, result), grouping);
  });
  return result;
}

}  // namespace

ConvertMethodRow aligned_gqa_method() {
  ConvertMethodRow row;
  row.name = "aligned-gqa";
  row.help = "GQA groups aligned by Procrustes rotations, then merged";
  row.grouping = HeadGrouping::kContiguous;
  // Alignment rotates every layer's keys and queries: a layer that reuses
  // another's attention has neither.
  row.takes_share_spans = false;
  row.needs_own_attention = true;
  row.merge = align_and_merge;
  return row;
}

}  // namespace dha::convert
