// dha-export: rewrite a model in another layout or format (same function):
// dha directory, HF directory, GQA or MHA re-layout, or a llama2.c .bin.
#include <cstdio>
#include <filesystem>

#include "cli_common.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/load.h"

int main(int argc, char** argv) {
  CLI::App app{"Write a model in another layout or format; the function is unchanged", "dha-export"};
  std::string model_path, tokenizer_path, out, format = "dha", dtype = "keep";
  bool force = false;
  app.add_option("--model", model_path, "llama2.c .bin, HF LLaMA directory or dha directory")->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer copied along (default: the one in or beside the model)");
  app.add_option("--out", out, "output directory (a file for llama2c)")->required();
  app.add_option("--format", format, "dha | hf | gqa (per-layer GQA re-layout) | mha (expanded) | llama2c")
      ->capture_default_str();
  app.add_option("--dtype", dtype, "keep | f32 | bf16 | f16")->capture_default_str();
  app.add_flag("--force", force, "replace an existing --out");
  return dha::cli::run(app, argc, argv, [&] {
    if (std::filesystem::exists(out) && !force) dha::fail(out, ": already exists (pass --force to overwrite)");
    dha::Checkpoint ck = dha::io::load_checkpoint(model_path);
    if (format == "llama2c") {
      dha::io::save_llama2c(out, ck);
      std::printf("%s\n", out.c_str());
      return 0;
    }
    dha::io::DirSaveOptions options;
    options.overwrite = force;
    if (dtype == "f32") options.dtype = torch::kFloat32;
    else if (dtype == "bf16") options.dtype = torch::kBFloat16;
    else if (dtype == "f16") options.dtype = torch::kFloat16;
    else if (dtype != "keep") dha::fail("--dtype \"", dtype, "\" is not one of keep, f32, bf16, f16");
    if (format == "gqa" || format == "mha") {
      ck = dha::export_checkpoint(ck, dha::parse_export_format(format));
      // Plain GQA/MHA goes out as an HF directory that transformers loads; a
      // per-layer GQA whose group sizes differ between layers needs the dha format.
      options.format = ck.config.layout.uniform_gqa_kv_heads() ? dha::io::DirFormat::kHf : dha::io::DirFormat::kDha;
    } else if (format == "hf") {
      options.format = dha::io::DirFormat::kHf;
    } else if (format != "dha") {
      dha::fail("--format \"", format, "\" is not one of dha, hf, gqa, mha, llama2c");
    }
    std::string tokenizer = tokenizer_path.empty() ? dha::find_tokenizer_for_model(model_path, ck.config.vocab_size)
                                                   : tokenizer_path;
    if (!tokenizer.empty())
      options.extra_files.push_back(
          {tokenizer, std::filesystem::path(tokenizer).extension() == ".model" ? "tokenizer.model" : "tokenizer.bin"});
    dha::io::save_hf_dir(out, ck, options);
    std::printf("%s (%s, %s)\n", out.c_str(), format.c_str(), dha::describe_layout(ck.config).c_str());
    return 0;
  });
}
