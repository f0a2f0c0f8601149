// Byte-level BPE encode speed: the documents of a text file (blank-line split,
// as the corpus tools do) through a tokenizer.json, single-threaded; compare
// with bench/bpe_encode_reference.py (Hugging Face tokenizers) on the same files.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/tokenizer_bpe.h"

int main(int argc, char** argv) {
  if (argc < 3 || std::string(argv[1]) == "--help") {
    std::printf(
        "usage: bench_bpe_encode TOKENIZER.json TEXT.txt [PASSES]\n"
        "Encodes every document of TEXT.txt PASSES times (default 2: the first fills the\n"
        "word cache) and prints MB/s and tokens/s per pass.\n");
    return 0;
  }
  try {
    const auto tok = dha::ByteLevelBpeTokenizer::load(argv[1]);
    const std::vector<std::string> docs = dha::split_documents(dha::io::read_file(argv[2]));
    const int passes = argc > 3 ? std::stoi(argv[3]) : 2;
    size_t bytes = 0;
    for (const auto& d : docs) bytes += d.size();
    std::printf("%s: %zu documents, %.2f MB; tokenizer %s (%lld tokens)\n", argv[2], docs.size(), bytes / 1e6,
                argv[1], static_cast<long long>(tok->vocab_size()));
    for (int pass = 0; pass < passes; ++pass) {
      size_t tokens = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const auto& d : docs) tokens += tok->encode(d, false, false).size();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("pass %d: %.3f s, %.2f MB/s, %.0f tokens/s, %zu tokens\n", pass + 1, s, bytes / 1e6 / s,
                  tokens / s, tokens);
    }
  } catch (const dha::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
