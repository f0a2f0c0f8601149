// The dtypes weights are written in, by the name every tool's --dtype takes.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "dha/lookup.h"

namespace dha {

// keep (unset: the source's own storage dtype), f32, bf16, f16.
const std::vector<Named<std::optional<c10::ScalarType>>>& output_dtypes();
// The dtype named `name`; otherwise an error naming `option` and every choice.
std::optional<c10::ScalarType> parse_output_dtype(const std::string& name, const std::string& option = "--dtype");
// "keep | f32 | bf16 | f16" with what each means, for --help.
std::string output_dtypes_help();

}  // namespace dha
