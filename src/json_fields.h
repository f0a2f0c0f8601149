// Private to the recipe readers (training and conversion): typed keys, and the
// rule that a key the reader does not know is an error, not silently ignored.
#pragma once

#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "dha/error.h"

namespace dha::detail {

template <typename T>
void read_key(const nlohmann::json& j, const char* key, T& field, std::set<std::string>& seen) {
  if (!j.contains(key)) return;
  seen.insert(key);
  field = j.at(key).get<T>();
}

// Keys starting with "_comment" are notes for people.
inline void reject_unknown_keys(const nlohmann::json& j, const std::set<std::string>& seen, const std::string& where) {
  for (const auto& [key, value] : j.items())
    if (!seen.count(key) && key.rfind("_comment", 0) != 0) fail(where, ": unknown key \"", key, "\"");
}

}  // namespace dha::detail
