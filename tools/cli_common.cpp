// Option parsing and one-line errors for the command-line tools.
#include "cli_common.h"

#include "dha/error.h"
#include "dha/io/atomic_file.h"

#include <cstdio>
#include <exception>
#include <map>
#include <sstream>

#include <c10/util/Exception.h>

namespace dha::cli {
namespace {

// Torch errors carry a backtrace after the first line; users need only the message.
std::string first_line(const std::string& message) {
  const size_t end = message.find('\n');
  return end == std::string::npos ? message : message.substr(0, end);
}

std::map<const CLI::App*, std::vector<RecipeKeyDoc>>& recipe_key_docs() {
  static std::map<const CLI::App*, std::vector<RecipeKeyDoc>> docs;
  return docs;
}

// A table cell: one line, no column breaks.
std::string cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

std::string code(const std::string& text) { return text.empty() ? "" : "`" + text + "`"; }

// The reference of one tool as Markdown: its description, then every option
// in the order --help lists them, then the recipe keys that have no flag.
std::string markdown_reference(CLI::App& app) {
  std::ostringstream out;
  const auto& keys = recipe_key_docs()[&app];
  auto key_of = [&](const CLI::Option* option) -> const RecipeKeyDoc* {
    for (const auto& k : keys)
      if (k.option == option) return &k;
    return nullptr;
  };
  out << "## " << app.get_name() << "\n\n" << app.get_description() << "\n\n";
  out << "| option | value | default | recipe key | meaning |\n|---|---|---|---|---|\n";
  for (CLI::Option* option : app.get_options()) {
    const RecipeKeyDoc* key = key_of(option);
    const bool is_flag = option->get_items_expected_max() == 0;
    std::string name = option->get_positional() && !option->nonpositional() ? option->get_name(true)
                                                                          : option->get_name(false, true);
    std::string value = is_flag ? "" : option->get_type_name();
    // A switch's default is not giving it; its recipe key's default goes beside the key.
    std::string default_value;
    if (key && key->sets.empty()) default_value = key->default_value;
    else if (!is_flag) {
      // The tool's own default text if it set one (dha-generate's seed: the clock), else the variable's value.
      default_value = option->get_default_str();
      if (default_value.empty()) default_value = option->capture_default_str()->get_default_str();
    }
    if (option->get_required()) default_value = "required";
    std::string recipe;
    if (key) {
      recipe = code(key->key);
      if (!key->sets.empty()) recipe += " = " + key->sets + " (default " + key->default_value + ")";
    }
    out << "| " << code(cell(name)) << " | " << cell(value) << " | " << code(cell(default_value)) << " | "
        << recipe << " | " << cell(option->get_description()) << " |\n";
  }
  bool any = false;
  for (const auto& k : keys) {
    if (k.option) continue;
    if (!any) {
      out << "\nRecipe keys without a flag (`--config` files only):\n\n"
             "| recipe key | default | meaning |\n|---|---|---|\n";
      any = true;
    }
    out << "| " << code(k.key) << " | " << code(cell(k.default_value)) << " | " << cell(k.help) << " |\n";
  }
  return out.str();
}

}  // namespace

void document_recipe_key(const CLI::App& app, RecipeKeyDoc doc) {
  recipe_key_docs()[&app].push_back(std::move(doc));
}

nlohmann::json RecipeOptions::resolve(const std::string& recipe_path) {
  for (const auto& collect : collect_) collect();
  nlohmann::json recipe = nlohmann::json::object();
  if (!recipe_path.empty()) {
    try {
      recipe = nlohmann::json::parse(io::read_file(recipe_path));
    } catch (const nlohmann::json::exception& e) {
      fail(recipe_path, ": not valid JSON (", e.what(), ")");
    }
  }
  for (const auto& [key, value] : given_.items()) recipe[key] = value;
  return recipe;
}

int run(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  const std::string tool = app.get_name();
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help-markdown") {
      std::printf("%s", markdown_reference(app).c_str());
      return 0;
    }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", tool.c_str(), first_line(e.what()).c_str());
    return 1;
  }
  try {
    return body();
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool.c_str(), first_line(e.what_without_backtrace()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool.c_str(), first_line(e.what()).c_str());
  }
  return 1;
}

}  // namespace dha::cli
