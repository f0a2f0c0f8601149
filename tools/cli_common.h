// What every dha command-line tool shares: option parsing and the rule that
// any failure prints one clear line and exits non-zero.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace dha::cli {

// Parses argv into `app`, then runs `body`. --help prints usage and exits 0;
// a bad option, a dha::Error or any other exception prints
// "<tool>: error: <message>" (one line) to stderr and exits 1.
int run(CLI::App& app, int argc, char** argv, const std::function<int()>& body);

}  // namespace dha::cli
