// Typed config.json fields with one-line errors naming the file and the key,
// shared by the HF directory reader and the checkpoint families' quirks.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "dha/error.h"

namespace dha::io::detail {

template <typename T>
T required(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail(where, ": field \"", key, "\" is missing");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(where, ": field \"", key, "\" has the wrong type (", j.at(key).dump(), ")");
  }
}

// `fallback` when the key is absent or null (as transformers' config classes read them).
template <typename T>
T optional_field(const nlohmann::json& j, const char* key, T fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return required<T>(j, key, where);
}

}  // namespace dha::io::detail
