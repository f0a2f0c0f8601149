// Loading dha-train's model, tokenizer, teacher and held-out documents.
#include "job_inputs.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"

namespace dha::train_detail {
namespace {

// The model, its source dtype and the tokenizer path it implies.
void load_model(const TrainJob& job, int64_t data_vocab, JobInputs& in) {
  in.tokenizer_path = job.tokenizer_path;
  const std::string data_dir = job.data.empty() ? std::string() : job.data.front().dir;
  if (!job.from_scratch_path.empty()) {
    in.model = make_random_model(from_scratch_config(job.from_scratch_path, data_vocab), job.config.seed);
    if (in.tokenizer_path.empty()) in.tokenizer_path = find_tokenizer_in_dir(data_dir);
    return;
  }
  io::LoadedModel loaded = io::load_model(job.model_path, job.tokenizer_path, /*need_tokenizer=*/false);
  in.model = loaded.model;
  in.source_dtype = loaded.checkpoint.storage_dtype;
  if (in.tokenizer_path.empty())
    in.tokenizer_path = find_tokenizer_for_model(job.model_path, in.model->config().vocab_size);
  if (in.tokenizer_path.empty()) in.tokenizer_path = find_tokenizer_in_dir(data_dir);
}

// Shards that begin documents otherwise than the model does (BOS, its
// pre-training separator, nothing) would train and evaluate it out of protocol.
void check_document_protocol(const TokenDataset& data, const JobInputs& in) {
  if (!in.tokenizer || data.version() < 2) return;
  const DocumentProtocol expected = document_protocol(*in.tokenizer), found = data.protocol();
  if (expected.first_token != found.first_token || expected.token_id != found.token_id)
    fail(data.dir(), ": documents begin with ", first_token_name(found.first_token), " (id ",
         found.token_id, ") but the model's tokenizer ", in.tokenizer_path, " begins them with ",
         first_token_name(expected.first_token), " (id ", expected.token_id,
         "); tokenize with the model's tokenizer");
}

// Frozen, in its stored dtype: a bf16 teacher costs 2 bytes per parameter.
void load_teacher(const TrainJob& job, const torch::Device& device, JobInputs& in) {
  if (job.teacher_path.empty()) return;
  const Checkpoint t = io::load_checkpoint(job.teacher_path);
  if (t.config.vocab_size != in.model->config().vocab_size)
    fail(job.teacher_path, ": the teacher's vocab (", t.config.vocab_size, ") differs from the student's (",
         in.model->config().vocab_size, ")");
  in.teacher_dtype = t.storage_dtype;
  in.teacher = make_model_over(t, job.teacher_path);
  (*in.teacher)->to(device);
}

}  // namespace

ModelConfig from_scratch_config(const std::string& path, int64_t default_vocab) {
  nlohmann::json description;
  try {
    description = nlohmann::json::parse(io::read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  return model_config_from_json(description, default_vocab, path);
}

JobInputs load_job_inputs(const TrainJob& job, const std::vector<MixtureSource>& data, const torch::Device& device) {
  JobInputs in;
  int64_t data_vocab = 0;
  for (const MixtureSource& source : data) data_vocab = std::max(data_vocab, source.data->vocab_size());
  load_model(job, data_vocab, in);
  const ModelConfig& model = in.model->config();
  for (const MixtureSource& source : data) {
    const TokenDataset* d = source.data;
    if (d->vocab_size() > model.vocab_size && d->format() != "dha")
      fail(d->dir(), ": the ", d->format(), " data holds token id ", d->vocab_size() - 1,
           ", outside the model's vocab of ", model.vocab_size, " (tokenized for another model?)");
    if (d->vocab_size() > model.vocab_size)
      fail(d->dir(), ": the shards' vocab (", d->vocab_size(), ") is larger than the model's (", model.vocab_size,
           "); tokenize with the model's tokenizer");
  }
  in.seq_len = job.config.seq_len > 0 ? job.config.seq_len : model.max_seq_len;
  if (in.seq_len > model.max_seq_len)
    fail("--seq-len ", in.seq_len, " exceeds the model's context of ", model.max_seq_len);
  if (!in.tokenizer_path.empty()) in.tokenizer = load_tokenizer(in.tokenizer_path, model.vocab_size);
  for (const MixtureSource& source : data) check_document_protocol(*source.data, in);
  load_teacher(job, device, in);
  in.model->to(device);
  return in;
}

std::vector<std::vector<int32_t>> held_out_documents(const TrainJob& job, const JobInputs& in,
                                                     int64_t max_docs) {
  std::vector<std::vector<int32_t>> docs;
  if (!job.eval_text.empty()) {
    if (!in.tokenizer) fail("--eval-text needs a tokenizer (pass --tokenizer)");
    for (const auto& doc : split_documents(io::read_file(job.eval_text)))
      docs.push_back(encode_document(*in.tokenizer, doc));
  } else {
    // Unindexed shards split where documents begin: BOS, or the model's
    // pre-training separator (llm.c's GPT-2 shards begin documents with <|endoftext|>).
    const int32_t protocol_token = in.tokenizer ? document_protocol(*in.tokenizer).token_id : -1;
    const int32_t split_at = protocol_token >= 0 ? protocol_token : static_cast<int32_t>(in.model->config().bos_id);
    for (const DataSource& source : job.data) {
      const int64_t left = max_docs > 0 ? max_docs - static_cast<int64_t>(docs.size()) : 0;
      if (max_docs > 0 && left <= 0) break;
      if (!std::filesystem::exists(source.dir) || TokenDataset::shard_paths(source.dir, "heldout").empty()) continue;
      for (auto& doc : TokenDataset(source.dir, "heldout").documents(split_at, left)) docs.push_back(std::move(doc));
    }
  }
  return docs;
}

}  // namespace dha::train_detail
