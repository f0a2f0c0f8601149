// The conversion's inputs, loaded once: the source model and its tokenizer,
// calibration and held-out text, the device and the process group.
#include <sys/resource.h>

#include "dha/corpus.h"
#include "dha/device.h"
#include "dha/eval.h"
#include "dha/io/load.h"
#include "dha/log.h"
#include "dha/loss.h"
#include "stages.h"

namespace dha::convert {

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux reports KiB
}

void log_stage(const std::string& name) { log::info("stage: ", name); }

Quality ConvertContext::measure(Llama& model) const {
  torch::NoGradGuard no_grad;
  model->eval();
  Quality q;
  const int64_t t = probe.size(1) - 1;
  q.lm_loss = lm_loss(model->forward(probe.narrow(1, 0, t)), probe.narrow(1, 1, t)).item<double>();
  q.heldout_nll = evaluate_token_docs(model, heldout, options.eval_docs, false).mean_nll;
  return q;
}

int64_t ConvertContext::heldout_docs() const {
  const int64_t n = static_cast<int64_t>(heldout.size());
  return options.eval_docs > 0 ? std::min(options.eval_docs, n) : n;
}

std::unique_ptr<ConvertContext> open_context(const ConvertOptions& options, const ConvertPlan& plan,
                                             const std::string& model_path, const std::string& tokenizer_path,
                                             io::StagedDirectory& staged) {
  io::LoadedModel loaded = io::load_model(model_path, tokenizer_path, /*need_tokenizer=*/true);
  auto ctx = std::make_unique<ConvertContext>(options, plan, staged);
  ctx->model_path = model_path;
  ctx->source = loaded.model;
  ctx->tokenizer = std::move(loaded.tokenizer);
  ctx->source_dtype = loaded.checkpoint.storage_dtype;
  // Calibration tokens: the documents of each file; its last `heldout` share is
  // held out unless --eval-text is given.
  std::vector<int32_t> calib_tokens;
  for (const auto& file : options.calib) {
    const auto docs = split_documents(io::read_file(file));
    if (docs.empty()) fail(file, ": calibration file holds no text");
    const size_t split = options.eval_text.empty() ? heldout_start(docs.size(), options.heldout) : docs.size();
    for (size_t d = 0; d < docs.size(); ++d) {
      auto ids = encode_document(*ctx->tokenizer, docs[d]);
      if (d < split) calib_tokens.insert(calib_tokens.end(), ids.begin(), ids.end());
      else ctx->heldout.push_back(std::move(ids));
    }
  }
  if (!options.eval_text.empty())
    for (const auto& doc : split_documents(io::read_file(options.eval_text)))
      ctx->heldout.push_back(encode_document(*ctx->tokenizer, doc));
  if (ctx->heldout.empty()) fail("no held-out documents: raise --heldout or pass --eval-text");
  ctx->calibration = std::make_unique<TokenDataset>(std::move(calib_tokens), plan.source.vocab_size, "calibration text");
  ctx->sampler = std::make_unique<SequenceSampler>(*ctx->calibration, plan.seq_len, options.seed);

  ctx->device = resolve_device(options.device, 0);
  ctx->dist = Distributed::from_env(ctx->device, std::chrono::seconds(300));
  ctx->source->to(ctx->device);
  ctx->probe = ctx->sampler->batch({}, 0, options.batch).to(ctx->device);
  return ctx;
}

}  // namespace dha::convert
