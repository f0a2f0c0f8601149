// The conversion plan: every decision and every refusal that the options and
// the source config allow, made before any model is loaded.
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "dha/convert.h"
#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/search.h"
#include "dha/search_measures.h"
#include "dha/shared_attention.h"

namespace dha {

const std::vector<ConvertMethodInfo>& convert_methods() {
  static const std::vector<ConvertMethodInfo> methods = {
      {ConvertMethod::kDha, "dha", "head-dependence search, fusion under an augmented Lagrangian, collapse"},
      {ConvertMethod::kGqa, "gqa", "GQA by mean pooling of contiguous equal groups"},
      {ConvertMethod::kAlignedGqa, "aligned-gqa", "GQA groups aligned by Procrustes rotations, then merged"},
      {ConvertMethod::kSharedAttention, "shared-attention", "later layers reuse an earlier layer's attention"},
  };
  return methods;
}

namespace {

ConvertMethod parse_method(const std::string& name) {
  std::string names;
  for (const auto& m : convert_methods()) {
    if (m.name == name) return m.method;
    names += (names.empty() ? "" : ", ") + m.name;
  }
  fail("--method \"", name, "\" is not one of ", names);
}

std::string short_number(double x) {
  std::ostringstream out;
  out << std::setprecision(4) << x;
  return out.str();
}

bool parse_layout(const std::string& layout) {
  if (layout == "dha") return false;
  if (layout == "per-layer-gqa") return true;
  fail("--layout \"", layout, "\" is not one of dha, per-layer-gqa");
}

}  // namespace

ConvertPlan plan_conversion(const ConvertOptions& options, const ModelConfig& source, const std::string& model_path) {
  ConvertPlan plan;
  plan.method = parse_method(options.method);
  plan.source = source;
  plan.analyze_only = options.analyze_attention;
  const bool shared_only = plan.method == ConvertMethod::kSharedAttention;
  if (plan.method == ConvertMethod::kAlignedGqa && !options.share_spans.empty())
    fail("--share-spans combines with --method dha, gqa or shared-attention, not aligned-gqa");
  plan.measure = &find_search_measure(options.measure);
  if (!(options.budget > 0.0 && options.budget <= 1.0)) fail("--budget ", options.budget, " must be in (0, 1]");
  plan.export_format = &find_export_format(options.export_format, "--export");
  if (plan.export_format->single_file)
    fail("--export ", options.export_format, " writes a single file; convert with --export dha, then run dha-export --format ",
         options.export_format);
  if ((shared_only || !options.share_spans.empty()) && !plan.export_format->holds_shared_attention)
    fail("--export ", options.export_format, ": layers that share attention can only be written in the dha format (--export dha)");
  if (options.batch < 1 || options.fusion_steps < 0 || options.search_steps < 1 || options.rounds < 1)
    fail("batch, search steps and rounds must be positive and fusion steps not negative");

  if (!source.layout.shared_spans().empty()) {  // a model that already shares attention
    if (plan.method == ConvertMethod::kAlignedGqa)
      fail(model_path, ": layers share attention (", describe_layout(source),
           "); aligned-gqa needs every layer's queries and keys");
    if (!plan.export_format->holds_shared_attention)
      fail(model_path, ": layers share attention, which only the dha format can hold (--export dha)");
  }
  if (!options.share_spans.empty()) plan.spans = parse_share_spans(options.share_spans, source.n_layers);
  plan.per_layer_gqa = parse_layout(options.layout);
  if (plan.per_layer_gqa) {
    if (plan.method != ConvertMethod::kDha)
      fail("--layout per-layer-gqa applies to --method dha (", options.method, " is not a head search)");
    if (!plan.spans.empty()) fail("--layout per-layer-gqa: --share-spans removes keys, which no GQA layout can hold");
    if (options.rounds != 1) fail("--layout per-layer-gqa searches in one round (--rounds 1), not ", options.rounds);
    per_layer_gqa_pool_sizes(source, model_path);  // refuses a source without equal shared K/V groups
  }
  // Head sharing runs on the model with its spans applied: the budget counts
  // their removed key heads, and their key pools take no heads.
  plan.shared = source;
  plan.shared.layout = with_shared_spans(source.layout, plan.spans);
  plan.measure_similarity = plan.analyze_only || shared_only || !plan.spans.empty();
  plan.shares_heads = !shared_only && !plan.analyze_only;
  plan.uses_budget = !plan.analyze_only && !(shared_only && !options.share_spans.empty());
  plan.choose_spans = shared_only && plan.spans.empty() && !plan.analyze_only;
  if (plan.choose_spans) {
    // Fails when no choice of spans reaches the budget; that does not depend on the similarities.
    choose_share_spans(source, torch::zeros({source.n_layers, source.n_layers}), options.budget);
  } else if (plan.shares_heads) {
    plan.target_heads = budget_heads(plan.shared, options.budget);
    plan.requested_heads = plan.target_heads;
    const int64_t n_pools = pools_with_heads(plan.shared);
    if (plan.method != ConvertMethod::kDha) {
      if (plan.target_heads % n_pools != 0)
        fail("--method ", options.method, " puts the same number of heads in every pool: budget ", options.budget, " gives ",
             plan.target_heads, " heads over ", n_pools, " pools, not a whole number");
      contiguous_grouping(plan.shared, plan.target_heads / n_pools);  // divisibility check
    }
    if (plan.per_layer_gqa) {
      GroupingOptions grouping;
      grouping.max_group_size = options.max_group_size;
      // Equal groups allow only divisors of H per layer, so one count everywhere would
      // often fall far below the budget: this layout always chooses each layer's count.
      grouping.uniform = false;
      plan.target_heads =
          per_layer_gqa_reachable_heads(per_layer_gqa_pool_sizes(source, model_path), plan.target_heads, grouping);
      if (plan.target_heads != plan.requested_heads)
        plan.budget_note = "--layout per-layer-gqa: budget " + short_number(options.budget) + " asks for " +
                           std::to_string(plan.requested_heads) + " K+V heads, which equal groups per layer cannot " +
                           "reach; taking the nearest below, " + std::to_string(plan.target_heads) + " (budget " +
                           short_number(static_cast<double>(plan.target_heads) / (2 * source.n_layers * source.n_heads)) + ")";
    }
  }
  plan.fusion_stage = plan.method == ConvertMethod::kDha && options.fusion && options.fusion_steps > 0;
  plan.train_weights = parse_train_weights(options.train_weights);
  plan.output_dtype = parse_output_dtype(options.dtype);
  if (options.checkpoint_every < 0) fail("--checkpoint-every must not be negative");
  // Alignment rotates K heads in their RoPE planes and folds them into W_Q;
  // where layers share attention (new spans, or a source that already does)
  // some have no keys or queries of their own (as aligned-gqa, which refuses
  // them), so it is left out there.
  bool any_shared = false;
  for (int64_t l = 0; l < plan.shared.n_layers; ++l) any_shared = any_shared || plan.shared.layout.shares_attention(l);
  plan.align = options.align && plan.fusion_stage && !any_shared;
  if (options.zero < 0 || options.zero > 3) fail("--zero ", options.zero, " is not 0, 1, 2 or 3");
  plan.seq_len = options.seq_len > 0 ? std::min(options.seq_len, source.max_seq_len) : source.max_seq_len;
  return plan;
}

std::vector<MemoryPlan> conversion_memory_plans(const ConvertOptions& options, const ConvertPlan& plan,
                                                torch::ScalarType storage_dtype, bool source_file_pages, bool cuda,
                                                int world_size, int64_t fusion_operators) {
  MemoryPlanInputs in;
  in.model = plan.shared;
  in.micro_batch = options.batch;
  in.seq_len = plan.seq_len;
  in.world_size = world_size;
  in.zero = static_cast<int>(options.zero);
  in.cuda = cuda;
  in.storage_dtype = storage_dtype;
  in.train_weights = plan.train_weights;
  in.activation_checkpointing = options.activation_checkpointing;
  // What trains is a copy of the source checkpoint, which stays in host
  // memory beside it unless its pages belong to the file (then handed back).
  in.keeps_source = plan.train_weights != TrainWeights::kNone && !cuda && !source_file_pages;
  int64_t whole_pools = 0;  // Omega of whole-pool fusion: n^2 per pool of n heads
  int64_t projections = 0;  // the K/V weights of every pool (rows of head_dim x dim, and biases)
  const ModelConfig& m = plan.shared;
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const int64_t k = m.layout.n_k_heads(l), v = m.layout.n_v_heads(l);
    whole_pools += k * k + v * v;
    projections += (m.layout.shares_attention(l) ? v : k + v) * m.head_dim * (m.dim + (m.attention_bias ? 1 : 0));
  }
  in.fused_projection_elements = projections;
  // Fusion reads every layer's K/V projections before the forward: ZeRO-3 keeps them whole.
  if (plan.train_weights != TrainWeights::kNone) in.kept_whole_elements = projections;
  std::vector<MemoryPlan> plans;
  if (plan.shares_heads && plan.method == ConvertMethod::kDha && plan.measure->trains) {
    in.stage = "search";
    in.fusion_operator_elements = whole_pools;
    plans.push_back(plan_memory(in));
  }
  if (plan.fusion_stage) {
    in.stage = "fusion";
    in.fusion_operator_elements =
        fusion_operators > 0 ? fusion_operators : whole_pools * (options.per_channel ? plan.shared.head_dim : 1);
    in.teacher = options.distill_weight > 0;
    if (in.teacher) {
      // The teacher shares the fusion model's frozen weights and keeps its own copy
      // of those that train (teacher_sharing_frozen). With shared spans it is the
      // source itself: on the CPU the source's own tensors, on CUDA a copy on the device.
      if (cuda && !plan.spans.empty()) in.inference_copies = 1;
      else in.keeps_source = plan.train_weights != TrainWeights::kNone;
    }
    plans.push_back(plan_memory(in));
  }
  // Every conversion measures the source and its result with forward passes only.
  MemoryPlanInputs measure = in;
  measure.stage = "measure";
  measure.train_weights = TrainWeights::kNone;
  measure.inference_only = true;
  measure.teacher = false;
  measure.keeps_source = false;
  measure.fusion_operator_elements = 0;
  measure.fused_projection_elements = 0;
  measure.inference_copies = 0;
  plans.push_back(plan_memory(measure));
  return plans;
}

}  // namespace dha
