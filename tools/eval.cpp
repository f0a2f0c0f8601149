// dha-eval: mean NLL per token, perplexity and KV bytes per token on a text file;
// or multiple-choice accuracy (acc, acc_norm) on task files, as lm-eval scores them.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/choice_eval.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"

namespace {

// dha-eval --task: every task file read (and refused) before the model loads,
// then one table, the requests file and the JSON line.
int run_choice_tasks(const std::string& model_path, const std::string& tokenizer_path,
                     const std::vector<std::string>& task_paths, const std::string& first_token_name, int64_t batch,
                     int64_t max_items, const std::string& requests_path, bool as_json) {
  std::vector<std::pair<std::string, std::vector<dha::ChoiceItem>>> tasks_in;
  for (const auto& path : task_paths) {
    const std::string name = std::filesystem::path(path).stem().string();
    for (const auto& [other, items] : tasks_in)
      if (other == name) dha::fail(path, ": a second task named ", name, " (tasks are named by file stem)");
    std::vector<dha::ChoiceItem> items = dha::read_choice_task(path);
    if (max_items > 0 && static_cast<int64_t>(items.size()) > max_items) items.resize(max_items);
    tasks_in.emplace_back(name, std::move(items));
  }
  dha::io::LoadedModel loaded = dha::io::load_model(model_path, tokenizer_path);
  const auto first = first_token_name == "none"       ? dha::ChoiceFirstToken::kNone
                     : first_token_name == "document" ? dha::ChoiceFirstToken::kDocument
                                                      : dha::ChoiceFirstToken::kTokenizer;
  nlohmann::json tasks = nlohmann::json::object();
  std::string requests;
  std::printf("model: %s (first token: %s)\n%-24s %8s %8s %8s %9s %8s\n", model_path.c_str(),
              first_token_name.c_str(), "task", "items", "acc", "stderr", "acc_norm", "stderr");
  for (size_t t = 0; t < tasks_in.size(); ++t) {
    const auto& [name, items] = tasks_in[t];
    const dha::ChoiceTaskResult r =
        dha::evaluate_choice_task(loaded.model, *loaded.tokenizer, items, first, batch, /*show_progress=*/true);
    std::printf("%-24s %8lld %8.4f %8.4f %9.4f %8.4f\n", name.c_str(), static_cast<long long>(r.items), r.acc,
                r.acc_stderr, r.acc_norm, r.acc_norm_stderr);
    tasks[name] = {{"file", task_paths[t]}, {"items", r.items},           {"acc", r.acc},
                   {"acc_stderr", r.acc_stderr}, {"acc_norm", r.acc_norm}, {"acc_norm_stderr", r.acc_norm_stderr}};
    for (const auto& q : r.requests)
      requests += nlohmann::json{{"task", name},
                                 {"item", q.item},
                                 {"choice", q.choice},
                                 {"loglikelihood", q.loglikelihood},
                                 {"is_greedy", q.is_greedy},
                                 {"context_ids", q.context_ids},
                                 {"continuation_ids", q.continuation_ids}}
                      .dump() +
                  "\n";
  }
  if (!requests_path.empty()) dha::io::write_file_atomic(requests_path, requests);
  if (as_json)
    std::printf("%s\n",
                nlohmann::json{{"model", model_path}, {"first_token", first_token_name}, {"tasks", tasks}}.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Held-out NLL of a model: documents are the blank-line-separated chunks of a text file,\n"
               "each exactly as written (edge spaces kept). Each is scored as the model reads a document:\n"
               "BOS + tokens when its tokenizer adds BOS; else its pre-training document separator + tokens\n"
               "when it declares one (<|endoftext|>, else EOS); else the tokens alone. Every token after the\n"
               "first is predicted; the JSON records which (first_token: bos | separator | given). A document\n"
               "longer than the model's context is truncated to it, unless --stride scores it whole.\n"
               "With --task instead: zero-shot multiple-choice accuracy as lm-evaluation-harness scores it.",
               "dha-eval"};
  std::string model_path, tokenizer_path, text_path;
  int64_t max_docs = 0;
  int64_t stride = 0;
  std::string ids_path;
  bool as_json = false;
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer (default: the one in or beside the model)");
  std::vector<std::string> task_paths;
  std::string first_token_name = "tokenizer", requests_path;
  int64_t batch = 16, max_items = 0;
  auto* text_option = app.add_option("--text", text_path, "UTF-8 text; documents separated by blank lines");
  auto* task_option = app.add_option(
      "--task", task_paths,
      "instead: a multiple-choice task, JSONL of {\"context\": str, \"choices\": [str], \"gold\": int} (each "
      "choice scored as the continuation of the context, exactly as written); repeat for a table of tasks");
  text_option->excludes(task_option);
  app.add_option("--first-token", first_token_name,
                 "--task: what leads each context: 'tokenizer' (what the tokenizer adds by default, BOS for "
                 "Llama: lm-eval's hf model as it encodes by default), 'document' (as --text reads documents: "
                 "a separator-led model's separator too) or 'none' (lm-eval's add_bos_token=False)")
      ->capture_default_str()
      ->check(CLI::IsMember({"tokenizer", "document", "none"}));
  app.add_option("--batch", batch,
                 "--task: items of one context length run together (requests, for those scored whole)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-items", max_items, "--task: score only the first N items of each task (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--save-requests", requests_path,
                 "--task: also write every request as JSONL (task, item, choice, loglikelihood, is_greedy, "
                 "context_ids, continuation_ids), to compare with another harness");
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
    if (!task_paths.empty())
      return run_choice_tasks(model_path, tokenizer_path, task_paths, first_token_name, batch, max_items,
                              requests_path, as_json);
    if (text_path.empty()) dha::fail("give --text FILE (held-out NLL) or --task FILE.jsonl (multiple choice)");
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
