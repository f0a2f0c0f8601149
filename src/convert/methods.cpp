// The table of conversion methods: one row per method (src/convert/method.h),
// read by the plan, the stages, the report and every tool's --help.
#include "method.h"


namespace dha {
namespace convert {

const std::vector<ConvertMethodRow>& method_rows() {
  static const std::vector<ConvertMethodRow> rows = {
      dha_method(),
      gqa_method(),
      aligned_gqa_method(),
      shared_attention_method(),
  };
  return rows;
}

MergeResult mean_pooled(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping) {
  MergeResult result;
  result.stage = "mean pooling";
  timed(ctx, result.stage, [&] { result.collapsed = collapse_groups(model, grouping); });
  return result;
}

}  // namespace convert

const std::vector<ConvertMethodName>& convert_methods() {
  static const std::vector<ConvertMethodName> methods = [] {
    std::vector<ConvertMethodName> out;
    for (const auto& row : convert::method_rows()) out.push_back({row.name, row.help});
    return out;
  }();
  return methods;
}

const std::string& ConvertPlan::method_name() const { return method->name; }

}  // namespace dha
