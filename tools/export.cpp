// dha-export: rewrite a model in another layout or format (same function), one
// of the formats of dha/export.h.
#include <cstdio>
#include <filesystem>

#include "cli_common.h"
#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"
#include "dha/tokenizer.h"

int main(int argc, char** argv) {
  CLI::App app{"Write a model in another layout or format; the function is unchanged", "dha-export"};
  std::string model_path, tokenizer_path, out, format_name = "dha", dtype = "keep";
  bool force = false;
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer copied along (default: the one in or beside the model)");
  app.add_option("--out", out, "output directory (a file for single-file formats)")->required();
  app.add_option("--format", format_name, dha::export_formats_help())->capture_default_str();
  app.add_option("--dtype", dtype, "weights on disk: " + dha::output_dtypes_help())->capture_default_str();
  app.add_flag("--force", force, "replace an existing --out");
  return dha::cli::run(app, argc, argv, [&] {
    const dha::ExportFormat& format = dha::find_export_format(format_name, "--format");
    dha::ExportWriteOptions options;
    options.dtype = dha::parse_output_dtype(dtype);
    if (std::filesystem::exists(out) && !force) dha::fail(out, ": already exists (pass --force to overwrite)");
    const dha::Checkpoint ck = dha::export_checkpoint(dha::io::load_checkpoint(model_path), format);
    const std::string tokenizer_file =
        tokenizer_path.empty() ? dha::find_tokenizer_for_model(model_path, ck.config.vocab_size) : tokenizer_path;
    std::unique_ptr<dha::Tokenizer> tokenizer;
    if (!tokenizer_file.empty()) tokenizer = dha::load_tokenizer(tokenizer_file, ck.config.vocab_size);
    options.tokenizer = tokenizer.get();
    if (format.single_file) {
      format.write(out, ck, options);
    } else {
      dha::io::StagedDirectory staged(out, force);
      format.write(staged.path(), ck, options);
      staged.commit();
    }
    std::printf("%s (%s, %s)\n", out.c_str(), format.name.c_str(), dha::describe_layout(ck.config).c_str());
    return 0;
  });
}
