// dha-train's inputs: the model (loaded, or created from a JSON description),
// its tokenizer, the distillation teacher and the held-out documents, each
// checked against the token shards it is trained on.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dha/data.h"
#include "dha/model.h"
#include "dha/tokenizer.h"
#include "dha/train_job.h"

namespace dha::train_detail {

struct JobInputs {
  Llama model{nullptr};
  torch::ScalarType source_dtype = torch::kFloat32;  // of the checkpoint given (fp32 from scratch)
  std::string tokenizer_path;                        // given, else the model's, else the data's; may be empty
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<Llama> teacher;
  torch::ScalarType teacher_dtype = torch::kFloat32;  // the teacher is held in its stored dtype
  int64_t seq_len = 0;                                // the recipe's, or the model's context
};

// A --from-scratch description; its vocab defaults to `default_vocab`.
ModelConfig from_scratch_config(const std::string& path, int64_t default_vocab);

// The model and teacher on `device`, the tokenizer; refuses a model whose
// vocab is smaller than any source's, a sequence longer than its context,
// shards that begin documents otherwise than its tokenizer does, and a
// teacher of another vocab. `data`: the training split of each source of job.data.
JobInputs load_job_inputs(const TrainJob& job, const std::vector<MixtureSource>& data, const torch::Device& device);

// --eval-text in the dha-eval protocol, else the heldout splits of the sources
// (in order, `max_docs` in all), else none.
std::vector<std::vector<int32_t>> held_out_documents(const TrainJob& job, const JobInputs& inputs,
                                                     int64_t max_docs);

}  // namespace dha::train_detail
