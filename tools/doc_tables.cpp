// dha-doc-tables: the documentation tables that code can write, as Markdown,
// from the tables the toolkit itself reads (checkpoint families, file formats,
// export formats, conversion methods). scripts/docs_generate puts each between
// its "<!-- BEGIN GENERATED name -->" markers, and a test fails when a
// committed document differs. Not installed: a build tool of the docs.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cli_common.h"
#include "dha/convert.h"
#include "dha/export.h"
#include "dha/io/checkpoint_family.h"
#include "dha/io/load.h"
#include "dha/lookup.h"

namespace {

std::string yes_no(bool b) { return b ? "yes" : "no"; }
std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

std::string families_table() {
  std::string out =
      "| `model_type` | what it is | written as (`architectures`) | GGUF architecture |\n"
      "|---|---|---|---|\n";
  for (const auto& f : dha::io::checkpoint_families())
    out += "| `" + f.name + "` | " + f.summary + " | " + (f.writes ? "`" + f.architecture + "`" : "read only") +
           " | " + or_dash(f.gguf_architecture) + " |\n";
  return out;
}

std::string checkpoint_formats_table() {
  std::string out = "| format | a `--model` path that is |\n|---|---|\n";
  for (const auto& f : dha::io::checkpoint_formats()) out += "| `" + f.name + "` | " + f.help + " |\n";
  return out;
}

std::string relayout(dha::HeadRelayout r) {
  switch (r) {
    case dha::HeadRelayout::kKeep: return "as converted";
    case dha::HeadRelayout::kPerLayerGqa: return "per-layer GQA";
    case dha::HeadRelayout::kMha: return "MHA";
  }
  return "";
}

std::string export_formats_table() {
  std::string out =
      "| format | heads as | writes | Shared Attention | q/k/v biases | what it is |\n|---|---|---|---|---|---|\n";
  for (const auto& f : dha::export_formats())
    out += "| `" + f.name + "` | " + relayout(f.relayout) + " | " + (f.single_file ? "a file" : "a directory") +
           " | " + yes_no(f.holds_shared_attention) + " | " + yes_no(f.holds_biases) + " | " + f.help + " |\n";
  return out;
}

std::string methods_table() {
  std::string out = "| `--method` | what it does |\n|---|---|\n";
  for (const auto& m : dha::convert_methods()) out += "| `" + m.name + "` | " + m.help + " |\n";
  return out;
}

struct DocTable {
  std::string name, help;
  std::function<std::string()> write;
};

const std::vector<DocTable>& doc_tables() {
  static const std::vector<DocTable> tables = {
      {"families", "checkpoint families (config.json model_type)", families_table},
      {"checkpoint-formats", "file formats --model reads", checkpoint_formats_table},
      {"export-formats", "dha-export --format / dha-convert --export", export_formats_table},
      {"methods", "dha-convert --method", methods_table},
  };
  return tables;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print a documentation table as Markdown, from the toolkit's own tables", "dha-doc-tables"};
  std::string table;
  app.add_option("table", table, dha::rows_help(doc_tables()))->required();
  return dha::cli::run(app, argc, argv, [&] {
    std::printf("%s", dha::find_row(doc_tables(), table, "table").write().c_str());
    return 0;
  });
}
