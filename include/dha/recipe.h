// Recipe options defined once. Each option of a JSON recipe (dha-convert's
// ConvertOptions, dha-train's TrainConfig) is one row of a field table: its key,
// its command-line flag, its help and the member it sets. Reading a recipe,
// writing the resolved recipe and the tools' command lines all come from the
// table, so an option cannot be spelled differently in two places.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/error.h"

namespace dha {

template <class Options>
struct RecipeField {
  using Member = std::variant<bool Options::*, int64_t Options::*, uint64_t Options::*, double Options::*,
                              std::string Options::*, std::vector<std::string> Options::*>;
  std::string key;   // JSON key
  std::string flag;  // command-line flag ("--budget"); empty: recipe only
  std::string help;
  Member member;
  // A boolean shown as a switch: giving the flag sets the member to this value
  // (true for --per-channel, false for --no-fusion).
  std::optional<bool> flag_sets = std::nullopt;
};

template <class Options>
using RecipeFields = std::vector<RecipeField<Options>>;

namespace detail {

template <typename T>
const char* recipe_type_name() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  else if constexpr (std::is_same_v<T, uint64_t>) return "a non-negative integer";
  else if constexpr (std::is_same_v<T, double>) return "a number";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else return "a list of strings";
}

// Strict on types: 1.5 for an integer or "true" for a boolean is an error, not a conversion.
template <typename T>
bool recipe_value_fits(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, bool>) return v.is_boolean();
  else if constexpr (std::is_same_v<T, int64_t>) return v.is_number_integer();
  else if constexpr (std::is_same_v<T, uint64_t>)
    return v.is_number_unsigned() || (v.is_number_integer() && v.template get<int64_t>() >= 0);
  else if constexpr (std::is_same_v<T, double>) return v.is_number();
  else if constexpr (std::is_same_v<T, std::string>) return v.is_string();
  else return v.is_array() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& e) { return e.is_string(); });
}

}  // namespace detail

// Options from a recipe object: fields it does not name keep the defaults of
// Options{}. A key not in the table is an error naming `where` (keys starting
// with "_comment" are notes for people), and so is a value of the wrong type.
template <class Options>
Options read_recipe(const nlohmann::json& j, const RecipeFields<Options>& fields, const std::string& where) {
  if (!j.is_object()) fail(where, ": a recipe must be a JSON object");
  Options options;
  for (const auto& [key, value] : j.items()) {
    if (key.rfind("_comment", 0) == 0) continue;
    const auto field = std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.key == key; });
    if (field == fields.end()) fail(where, ": unknown key \"", key, "\"");
    std::visit(
        [&](auto member) {
          using T = std::decay_t<decltype(options.*member)>;
          if (!detail::recipe_value_fits<T>(value))
            fail(where, ": \"", key, "\" must be ", detail::recipe_type_name<T>(), " (got ", value.dump(), ")");
          options.*member = value.template get<T>();
        },
        field->member);
  }
  return options;
}

// Every field of the table (an object: its keys come out sorted).
template <class Options>
nlohmann::json write_recipe(const Options& options, const RecipeFields<Options>& fields) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& field : fields) std::visit([&](auto member) { j[field.key] = options.*member; }, field.member);
  return j;
}

}  // namespace dha
