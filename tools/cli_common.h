// What every dha command-line tool shares: option parsing and the rule that
// any failure prints one clear line and exits non-zero.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dha/recipe.h"

namespace dha::cli {

// What docs/cli.md says of a recipe key beside --help's text: the key an
// option sets (with the value a switch gives it), and the keys a recipe file
// can hold that have no flag. Filled by RecipeOptions, read by --help-markdown.
struct RecipeKeyDoc {
  const CLI::Option* option = nullptr;  // null: a key without a flag
  std::string key;
  std::string sets;  // a switch: the value it gives the key ("false" for --no-align)
  std::string default_value;
  std::string help;
};
void document_recipe_key(const CLI::App& app, RecipeKeyDoc doc);

// Options that mirror the keys of a JSON recipe (--config). Only the options a
// user actually gives override the recipe; the others keep its values.
class RecipeOptions {
 public:
  explicit RecipeOptions(CLI::App& app) : app_(app) {}

  template <typename T>
  void add(const std::string& flag, const std::string& key, T defaults, const std::string& help) {
    auto value = std::make_shared<T>(defaults);
    CLI::Option* option = app_.add_option(flag, *value, help);
    if constexpr (!std::is_same_v<T, std::vector<std::string>>) option->capture_default_str();
    document_recipe_key(app_, {option, key, "", nlohmann::json(defaults).dump(), help});
    collect_.push_back([this, option, key, value] {
      if (option->count() > 0) given_[key] = *value;
    });
  }
  // A flag that sets `key` (whose default is `key_default`) to `value` when given.
  void add_flag(const std::string& flag, const std::string& key, bool value, const std::string& help,
                bool key_default = false) {
    CLI::Option* option = app_.add_flag(flag)->description(help);
    document_recipe_key(app_, {option, key, value ? "true" : "false", key_default ? "true" : "false", help});
    collect_.push_back([this, option, key, value] {
      if (option->count() > 0) given_[key] = value;
    });
  }
  // Every field of a recipe table that has a flag, with `defaults` shown in --help.
  template <class Options>
  void add_fields(const RecipeFields<Options>& fields, const Options& defaults) {
    for (const auto& field : fields) {
      if (field.flag.empty()) {
        std::visit(
            [&](auto member) {
              document_recipe_key(app_, {nullptr, field.key, "", nlohmann::json(defaults.*member).dump(), field.help});
            },
            field.member);
        continue;
      }
      std::visit(
          [&](auto member) {
            using T = std::decay_t<decltype(defaults.*member)>;
            if constexpr (std::is_same_v<T, bool>) {
              if (field.flag_sets)
                return add_flag(field.flag, field.key, *field.flag_sets, field.help, defaults.*member);
            }
            add<T>(field.flag, field.key, defaults.*member, field.help);
          },
          field.member);
    }
  }
  // The recipe file (empty path: none) with the given options applied on top.
  nlohmann::json resolve(const std::string& recipe_path);

 private:
  CLI::App& app_;
  std::vector<std::function<void()>> collect_;
  nlohmann::json given_ = nlohmann::json::object();
};

// Parses argv into `app`, then runs `body`. --help prints usage and exits 0;
// --help-markdown prints the tool's reference for docs/cli.md (every option,
// its default, its recipe key, its help; scripts/docs_generate) and exits 0;
// a bad option, a dha::Error or any other exception prints
// "<tool>: error: <message>" (one line) to stderr and exits 1.
int run(CLI::App& app, int argc, char** argv, const std::function<int()>& body);

}  // namespace dha::cli
