// The --dtype table shared by dha-convert, dha-train and dha-export.
#include "dha/dtype.h"

namespace dha {

const std::vector<Named<std::optional<c10::ScalarType>>>& output_dtypes() {
  static const std::vector<Named<std::optional<c10::ScalarType>>> dtypes = {
      {std::nullopt, "keep", "the source's storage dtype"},
      {c10::ScalarType::Float, "f32", "float32"},
      {c10::ScalarType::BFloat16, "bf16", "bfloat16"},
      {c10::ScalarType::Half, "f16", "float16"},
  };
  return dtypes;
}

std::optional<c10::ScalarType> parse_output_dtype(const std::string& name, const std::string& option) {
  return parse_named(output_dtypes(), name, option);
}

std::string output_dtypes_help() { return rows_help(output_dtypes()); }

}  // namespace dha
