// Option parsing and one-line errors for the command-line tools.
#include "cli_common.h"

#include "dha/error.h"
#include "dha/io/atomic_file.h"

#include <cstdio>
#include <exception>

#include <c10/util/Exception.h>

namespace dha::cli {
namespace {

// Torch errors carry a backtrace after the first line; users need only the message.
std::string first_line(const std::string& message) {
  const size_t end = message.find('\n');
  return end == std::string::npos ? message : message.substr(0, end);
}

}  // namespace

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
