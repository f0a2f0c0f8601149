// The one lookup-table shape of the toolkit. Conversion methods, search
// measures, export formats, layouts, checkpoint families, file formats and
// dtypes are each a table of rows with a `name` and a `help`; options are
// found by name, --help lists the rows, and an unknown name is one error line
// that names the option and every row. Adding a row adds it to all three.
#pragma once

#include <string>
#include <vector>

#include "dha/error.h"

namespace dha {

// A value of an enum with its name and help: the row type of small option tables.
template <typename Value>
struct Named {
  Value value;
  std::string name;
  std::string help;
};

// "a, b, c": the rows' names in table order.
template <typename Row>
std::string row_names(const std::vector<Row>& rows) {
  std::string names;
  for (const auto& row : rows) names += (names.empty() ? "" : ", ") + row.name;
  return names;
}

// "a: help; b: help" for the rows that `keep` accepts (every row by default), for --help.
template <typename Row, typename Keep>
std::string rows_help(const std::vector<Row>& rows, Keep keep) {
  std::string help;
  for (const auto& row : rows)
    if (keep(row)) help += (help.empty() ? "" : "; ") + row.name + ": " + row.help;
  return help;
}
template <typename Row>
std::string rows_help(const std::vector<Row>& rows) {
  return rows_help(rows, [](const Row&) { return true; });
}

// The row called `name`, or null.
template <typename Row>
const Row* find_row_or_null(const std::vector<Row>& rows, const std::string& name) {
  for (const auto& row : rows)
    if (row.name == name) return &row;
  return nullptr;
}

// The row called `name`; otherwise `option "name" is not one of a, b, c`.
template <typename Row>
const Row& find_row(const std::vector<Row>& rows, const std::string& name, const std::string& option) {
  if (const Row* row = find_row_or_null(rows, name)) return *row;
  fail(option, " \"", name, "\" is not one of ", row_names(rows));
}

// The value named `name` in a Named table (the error as find_row's).
template <typename Value>
Value parse_named(const std::vector<Named<Value>>& table, const std::string& name, const std::string& option) {
  return find_row(table, name, option).value;
}

// The name of `value` in a Named table (every value of the enum has a row).
template <typename Value>
const std::string& name_of(const std::vector<Named<Value>>& table, const Value& value) {
  for (const auto& row : table)
    if (row.value == value) return row.name;
  fail("internal: a value without a row in its name table");
}

}  // namespace dha
