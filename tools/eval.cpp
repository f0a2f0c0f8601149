// dha-eval: mean NLL per token, perplexity and KV bytes per token on a text file.
#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"

int main(int argc, char** argv) {
  CLI::App app{"Held-out NLL of a model: documents are the blank-line-separated chunks of a text file,\n"
               "each exactly as written (edge spaces kept). Each is scored as the model reads a document:\n"
               "BOS + tokens when its tokenizer adds BOS; else its pre-training document separator + tokens\n"
               "when it declares one (<|endoftext|>, else EOS); else the tokens alone. Every token after the\n"
               "first is predicted; the JSON records which (first_token: bos | separator | given). A document\n"
               "longer than the model's context is truncated to it, unless --stride scores it whole.",
               "dha-eval"};
  std::string model_path, tokenizer_path, text_path;
  int64_t max_docs = 0;
  int64_t stride = 0;
  std::string ids_path;
  bool as_json = false;
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer (default: the one in or beside the model)");
  app.add_option("--text", text_path, "UTF-8 text; documents separated by blank lines")->required();
  app.add_option("--max-docs", max_docs, "score only the first N documents (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--stride", stride,
                 "score documents longer than the context whole, by sliding windows of the context "
                 "that advance N tokens (1..context; each token scored once, with at least "
                 "context - N + 1 tokens of left context). Without it they are truncated to the context");
  app.add_flag("--json", as_json, "end with one JSON object on the last line");
  app.add_option("--save-ids", ids_path,
                 "also write the token ids scored, one JSON array per document (truncated to the context "
                 "unless --stride is given), "
                 "so that another runtime can score the same ids");
  return dha::cli::run(app, argc, argv, [&] {
    const std::vector<std::string> docs = dha::split_documents(dha::io::read_file(text_path));
    if (docs.empty()) dha::fail(text_path, ": holds no document (no non-blank text)");
    dha::io::LoadedModel loaded = dha::io::load_model(model_path, tokenizer_path);
    const int64_t context = loaded.model->config().max_seq_len;
    // 0 is the library's "no stride"; given on the command line it is a mistake.
    if (app.count("--stride") > 0 && stride < 1)
      dha::fail("--stride ", stride, " must be between 1 and the model's context (", context, ")");
    const dha::EvalResult r = dha::evaluate_nll(loaded.model, *loaded.tokenizer, docs, max_docs,
                                                /*show_progress=*/true, stride);
    if (!ids_path.empty()) {
      // What evaluate_nll scored: each document's ids (cut to the context
      // without --stride), those with a token to predict.
      const size_t n_docs = max_docs > 0 ? std::min<size_t>(max_docs, docs.size()) : docs.size();
      nlohmann::json ids = nlohmann::json::array();
      for (size_t d = 0; d < n_docs; ++d) {
        std::vector<int32_t> doc = dha::encode_document(*loaded.tokenizer, docs[d]);
        if (stride == 0 && doc.size() > static_cast<size_t>(context)) doc.resize(context);
        if (doc.size() >= 2) ids.push_back(doc);
      }
      dha::io::write_file_atomic(ids_path, ids.dump() + "\n");
    }
    const dha::DocumentProtocol protocol = dha::document_protocol(*loaded.tokenizer);
    // The separator's text names it (<|endoftext|>); a BOS piece can be
    // anything ("\n<s>\n" in llama2.c's tokenizer.bin), so it goes by its id.
    const std::string separator_text = protocol.first_token == dha::FirstToken::kSeparator
                                           ? loaded.tokenizer->decode_piece(protocol.token_id, protocol.token_id)
                                           : "";
    std::printf("model:              %s\n", model_path.c_str());
    if (protocol.first_token == dha::FirstToken::kGiven)
      std::printf("first token:        given (no BOS, no separator); every later token is predicted\n");
    else if (protocol.first_token == dha::FirstToken::kBos)
      std::printf("first token:        BOS (id %d); every token of the text is predicted\n", protocol.token_id);
    else
      std::printf("first token:        the separator %s (id %d); every token of the text is predicted\n",
                  separator_text.c_str(), protocol.token_id);
    std::printf("documents:          %lld\n", static_cast<long long>(r.docs));
    std::printf("tokens:             %lld\n", static_cast<long long>(r.tokens));
    if (stride > 0)
      std::printf("windows:            %lld (context %lld, stride %lld; every token scored once)\n",
                  static_cast<long long>(r.windows), static_cast<long long>(context), static_cast<long long>(stride));
    else if (r.truncated_docs > 0)
      std::printf("truncated:          %lld documents longer than the context (%lld tokens) were cut to it; "
                  "--stride scores them whole\n",
                  static_cast<long long>(r.truncated_docs), static_cast<long long>(context));
    std::printf("mean NLL per token: %.6f\n", r.mean_nll);
    std::printf("perplexity:         %.4f\n", r.ppl);
    std::printf("KV bytes per token: %lld (bf16 cache)\n", static_cast<long long>(r.kv_bytes_per_token));
    if (as_json) {
      nlohmann::json j = {{"model", model_path}, {"text", text_path},  {"mean_nll", r.mean_nll},
                          {"ppl", r.ppl},        {"tokens", r.tokens}, {"docs", r.docs},
                          {"kv_bytes_per_token", r.kv_bytes_per_token},
                          {"first_token", dha::first_token_name(protocol.first_token)},
                          {"first_token_id", nullptr},
                          {"context", context},  {"stride", stride}, {"windows", r.windows},
                          {"truncated_docs", r.truncated_docs}};
      if (protocol.token_id >= 0) j["first_token_id"] = protocol.token_id;
      if (!separator_text.empty()) j["separator"] = separator_text;
      std::printf("%s\n", j.dump().c_str());
    }
    return 0;
  });
}
