// gqa: GQA by mean pooling of contiguous equal groups (Ainslie et al., 2023).
#include "../method.h"

namespace dha::convert {

ConvertMethodRow gqa_method() {
  ConvertMethodRow row;
  row.name = "gqa";
  row.help = "GQA by mean pooling of contiguous equal groups";
  row.grouping = HeadGrouping::kContiguous;
  row.merge = mean_pooled;
  return row;
}

}  // namespace dha::convert
