// dha-generate: continue a prompt with a model, greedy or sampled, using the KV cache.
#include <chrono>
#include <cstdio>

#include "cli_common.h"
#include "dha/eval.h"
#include "dha/io/load.h"

int main(int argc, char** argv) {
  CLI::App app{"Generate text with a LLaMA/DHA model (prints the prompt, then the continuation)",
               "dha-generate"};
  std::string model_path, tokenizer_path, prompt;
  dha::GenerateOptions options;
  options.seed = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer (default: the one in or beside the model)");
  app.add_option("--prompt", prompt, "text to continue (default: empty)");
  app.add_option("--max-new-tokens", options.max_new_tokens, "tokens to generate")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", options.temperature, "sampling temperature; 0 is greedy")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", options.top_p, "nucleus sampling mass; 1 disables")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", options.seed, "random seed")->default_str("the clock");
  return dha::cli::run(app, argc, argv, [&] {
    dha::io::LoadedModel loaded = dha::io::load_model(model_path, tokenizer_path);
    dha::generate(loaded.model, *loaded.tokenizer, prompt, options, [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    std::fputc('\n', stdout);
    return 0;
  });
}
