// Held-out evaluation during training, data-parallel over the documents.
#include "held_out.h"

#include <algorithm>
#include <cmath>

#include "dha/eval.h"
#include "run_guards.h"

namespace dha::train_detail {

EvalPoint evaluate_held_out(TrainTask& task, const std::vector<std::vector<int32_t>>& docs, Distributed& dist,
                            const torch::Device& device, int64_t max_docs, int64_t step, int64_t tokens) {
  std::vector<std::vector<int32_t>> mine;
  const int64_t n = max_docs > 0 ? std::min<int64_t>(max_docs, docs.size()) : docs.size();
  for (int64_t i = dist.rank(); i < n; i += dist.world_size()) mine.push_back(docs[i]);
  double nll = 0.0, count = 0.0;
  if (!mine.empty()) {
    Autocast autocast(device);
    task.before_eval();
    const bool was_training = task.model()->is_training();
    task.model()->eval();
    const EvalResult r = evaluate_token_docs(task.model(), mine, 0, false, 0, task.forward_options());
    if (was_training) task.model()->train();
    nll = r.mean_nll * r.tokens;
    count = static_cast<double>(r.tokens);
  }
  const auto sums = dist.sum({nll, count});
  EvalPoint point;
  point.step = step;
  point.tokens = tokens;
  point.mean_nll = sums[1] > 0 ? sums[0] / sums[1] : std::nan("");
  point.eval_tokens = static_cast<int64_t>(sums[1]);
  return point;
}

}  // namespace dha::train_detail
