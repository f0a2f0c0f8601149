// The conversion's inputs, loaded once: the source checkpoint (as stored) and
// its tokenizer, calibration and held-out text, the device and the process
// group; and the per-stage memory accounting.
#include "dha/corpus.h"
#include "dha/eval.h"
#include "dha/io/load.h"
#include "dha/log.h"
#include "dha/loss.h"
#include "dha/memory.h"
#include "stages.h"

namespace dha {

torch::Device conversion_device(const ConvertOptions& options, const RankEnvironment& ranks,
                                const DeviceInventory& inventory) {
  return resolve_device(options.device, ranks, inventory);
}

}  // namespace dha

namespace dha::convert {

void begin_stage(const ConvertContext& ctx, const std::string& name, const std::optional<MemoryPlan>& plan) {
  log::info("stage: ", name);
  if (plan) log::info(plan->table());
  MemoryMeter::reset_peak();
  reset_device_peak(ctx.device);
}

StageTiming end_stage(const ConvertContext& ctx, const std::string& name, double seconds,
                      std::optional<MemoryPlan> plan) {
  return {name, seconds, peak_rss_bytes() / 1048576.0, MemoryMeter::peak_bytes(), device_peak_bytes(ctx.device),
          std::move(plan)};
}

Quality ConvertContext::measure(Llama& model, const ForwardOptions& forward) const {
  torch::NoGradGuard no_grad;
  model->eval();
  Quality q;
  const int64_t t = probe.size(1) - 1;
  q.lm_loss = lm_loss(model->forward(probe.narrow(1, 0, t), forward), probe.narrow(1, 1, t)).item<double>();
  q.heldout_nll = evaluate_token_docs(model, heldout, options.eval_docs, false, 0, forward).mean_nll;
  return q;
}

int64_t ConvertContext::heldout_docs() const {
  const int64_t n = static_cast<int64_t>(heldout.size());
  return options.eval_docs > 0 ? std::min(options.eval_docs, n) : n;
}

Llama ConvertContext::source_model() const {
  Llama model = make_model_over(source, model_path);
  model->to(device);
  return model;
}

std::optional<MemoryPlan> ConvertContext::stage_plan(const std::string& stage, int64_t fusion_operators) const {
  for (const auto& p : conversion_memory_plans(options, plan, source.storage_dtype, io::loads_file_pages(model_path),
                                               device.is_cuda(), dist->world_size(), fusion_operators))
    if (p.stage == stage) return p;
  return std::nullopt;
}

std::unique_ptr<ConvertContext> open_context(const ConvertOptions& options, const ConvertPlan& plan,
                                             const std::string& model_path, const std::string& tokenizer_path,
                                             const RankEnvironment& ranks, io::StagedDirectory& staged) {
  MemoryMeter::install();
  auto ctx = std::make_unique<ConvertContext>(options, plan, staged);
  ctx->model_path = model_path;
  ctx->source = io::load_checkpoint(model_path);
  ctx->tokenizer = io::load_model_tokenizer(model_path, tokenizer_path, ctx->source.config.vocab_size);
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

  ctx->device = conversion_device(options, ranks);
  ctx->dist = Distributed::join(ranks, ctx->device, std::chrono::seconds(300));
  ctx->probe = ctx->sampler->batch({}, 0, options.batch).to(ctx->device);
  return ctx;
}

}  // namespace dha::convert
