// The conversion plan: every decision and every refusal that the options and
// the source config allow, made before any model is loaded.
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "dha/convert.h"
#include "method.h"
#include "dha/dtype.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/search.h"
#include "dha/search_measures.h"
#include "dha/shared_attention.h"

namespace dha {

namespace {

std::string short_number(double x) {
  std::ostringstream out;
  out << std::setprecision(4) << x;
  return out.str();
}

// "a, b or c": the names of the methods `keep` accepts.
template <typename Keep>
std::string method_names(Keep keep) {
  std::vector<std::string> names;
  for (const auto& row : convert::method_rows())
    if (keep(row)) names.push_back(row.name);
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

// The checks every method shares, of options alone.
void check_options(const ConvertOptions& options) {
  if (!(options.budget > 0.0 && options.budget <= 1.0)) fail("--budget ", options.budget, " must be in (0, 1]");
  if (options.batch < 1 || options.fusion_steps < 0 || options.search_steps < 1 || options.rounds < 1)
    fail("batch, search steps and rounds must be positive and fusion steps not negative");
  if (options.checkpoint_every < 0) fail("--checkpoint-every must not be negative");
  if (options.zero < 0 || options.zero > 3) fail("--zero ", options.zero, " is not 0, 1, 2 or 3");
}

// The export format: a directory that holds what the conversion writes.
void plan_export(const ConvertOptions& options, const convert::ConvertMethodRow& row, const ModelConfig& source,
                 const std::string& model_path, ConvertPlan& plan) {
  plan.export_format = &find_export_format(options.export_format, "--export");
  if (plan.export_format->single_file)
    fail("--export ", options.export_format, " writes a single file; convert with --export dha, then run dha-export --format ",
         options.export_format);
  const bool writes_shared_attention = row.grouping == convert::HeadGrouping::kNone || !options.share_spans.empty();
  if (writes_shared_attention && !plan.export_format->holds_shared_attention)
    fail("--export ", options.export_format, ": layers that share attention can only be written in the dha format (--export dha)");
  if (!source.layout.shared_spans().empty()) {  // a model that already shares attention
    if (row.needs_own_attention)
      fail(model_path, ": layers share attention (", describe_layout(source), "); ", row.name,
           " needs every layer's queries and keys");
    if (!plan.export_format->holds_shared_attention)
      fail(model_path, ": layers share attention, which only the dha format can hold (--export dha)");
  }
}

// --layout per-layer-gqa: K and V of a layer on one partition of equal groups.
void plan_per_layer_gqa(const ConvertOptions& options, const convert::ConvertMethodRow& row, const ModelConfig& source,
                        const std::string& model_path, ConvertPlan& plan) {
  static const std::vector<Named<bool>> kLayouts = {
      {false, "dha", "K and V grouped separately, any group sizes"},
      {true, "per-layer-gqa", "K and V of a layer on one partition of equal groups"}};
  plan.per_layer_gqa = parse_named(kLayouts, options.layout, "--layout");
  if (!plan.per_layer_gqa) return;
  if (!row.takes_per_layer_gqa)
    fail("--layout per-layer-gqa applies to --method ", method_names([](const auto& r) { return r.takes_per_layer_gqa; }),
         " (", row.name, " does not search its groups)");
  if (!plan.spans.empty()) fail("--layout per-layer-gqa: --share-spans removes keys, which no GQA layout can hold");
  if (options.rounds != 1) fail("--layout per-layer-gqa searches in one round (--rounds 1), not ", options.rounds);
  per_layer_gqa_pool_sizes(source, model_path);  // refuses a source without equal shared K/V groups
}

// The K+V heads head sharing keeps, and the refusals of the method's grouping.
void plan_head_target(const ConvertOptions& options, const convert::ConvertMethodRow& row, const ModelConfig& source,
                      const std::string& model_path, ConvertPlan& plan) {
  plan.target_heads = budget_heads(plan.shared, options.budget);
  plan.requested_heads = plan.target_heads;
  if (plan.target_heads == plan.shared.layout.kv_heads()) {
    // A GQA source at its own fraction of MHA's cache: nothing to remove.
    const double native = static_cast<double>(plan.target_heads) / (2 * source.n_layers * source.n_heads);
    plan.budget_note = "budget " + short_number(options.budget) + " keeps every K/V head: the source already holds " +
                       short_number(native) + " of an MHA model's KV cache, so no head is removed; --budget " +
                       short_number(native / 4) + " gives 4x less KV cache than the source";
  }
  const int64_t n_pools = pools_with_heads(plan.shared);
  if (row.grouping == convert::HeadGrouping::kContiguous) {
    if (plan.target_heads % n_pools != 0)
      fail("--method ", row.name, " puts the same number of heads in every pool: budget ", options.budget, " gives ",
           plan.target_heads, " heads over ", n_pools, " pools, not a whole number");
    contiguous_grouping(plan.shared, plan.target_heads / n_pools);  // divisibility check
  }
  if (!plan.per_layer_gqa) return;
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

}  // namespace

ConvertPlan plan_conversion(const ConvertOptions& options, const ModelConfig& source, const std::string& model_path) {
  ConvertPlan plan;
  plan.method = &find_row(convert::method_rows(), options.method, "--method");
  const convert::ConvertMethodRow& row = *plan.method;
  plan.source = source;
  plan.analyze_only = options.analyze_attention;
  if (!row.takes_share_spans && !options.share_spans.empty())
    fail("--share-spans combines with --method ", method_names([](const auto& r) { return r.takes_share_spans; }),
         ", not ", row.name);
  plan.measure = &find_search_measure(options.measure);
  check_options(options);
  plan_export(options, row, source, model_path, plan);
  if (!options.share_spans.empty()) plan.spans = parse_share_spans(options.share_spans, source.n_layers);
  plan_per_layer_gqa(options, row, source, model_path, plan);
  // Head sharing runs on the model with its spans applied: the budget counts
  // their removed key heads, and their key pools take no heads.
  plan.shared = source;
  plan.shared.layout = with_shared_spans(source.layout, plan.spans);
  plan.measure_similarity = plan.analyze_only || !plan.spans.empty();
  plan.shares_heads = row.grouping != convert::HeadGrouping::kNone && !plan.analyze_only;
  plan.uses_budget = !plan.analyze_only;
  plan.train_weights = parse_train_weights(options.train_weights);
  plan.output_dtype = parse_output_dtype(options.dtype);
  plan.seq_len = options.seq_len > 0 ? std::min(options.seq_len, source.max_seq_len) : source.max_seq_len;
  if (row.plan) row.plan(options, plan);
  if (plan.choose_spans) {
    // Fails when no choice of spans reaches the budget; that does not depend on the similarities.
    choose_share_spans(source, torch::zeros({source.n_layers, source.n_layers}), options.budget);
  } else if (plan.shares_heads) {
    plan_head_target(options, row, source, model_path, plan);
  }
  return plan;
}

namespace {

// What the fusion stage holds beside its trained copies (elements): the frozen
// weights alignment re-parameterised (fp32, in the fusion model), and the
// distillation teacher's own tensors (distillation_teacher: the source's, where
// they are not the fusion model's frozen ones), in all and in its largest part
// (a decoder layer, the embedding, or the norm and head, which a tied head
// reads from the embedding).
struct FusionWeights {
  int64_t aligned_frozen = 0;
  int64_t teacher_own = 0, teacher_own_largest_part = 0;
};

FusionWeights fusion_weights(const ConvertPlan& plan) {
  const ModelConfig& source = plan.source;
  auto in_fusion_model = [&](const std::string& name) {  // the start's layout: spans remove keys and queries
    const int64_t layer = name.rfind("model.layers.", 0) == 0 ? std::stoll(name.substr(13)) : -1;
    const bool query_or_key = name.find(".q_proj.") != std::string::npos || name.find(".k_proj.") != std::string::npos;
    return !(layer >= 0 && query_or_key && plan.shared.layout.shares_attention(layer));
  };
  auto aligned = [&](const std::string& name) {
    return plan.align && name.find(".self_attn.") != std::string::npos;
  };
  const bool any_trains = plan.train_weights != TrainWeights::kNone;
  // The teacher follows the start unless shared spans change the layout or a weight that trains was aligned.
  const bool follows_start = plan.spans.empty() && !(plan.align && any_trains);
  FusionWeights out;
  std::vector<int64_t> parts(source.n_layers + 2, 0);
  for (const auto& [name, shape] : expected_tensors(source)) {
    int64_t elements = 1;
    for (int64_t d : shape) elements *= d;
    const bool trains = weight_trains(plan.train_weights, name);
    if (aligned(name) && !trains) out.aligned_frozen += elements;
    const bool own = trains || (!follows_start && (!in_fusion_model(name) || aligned(name)));
    if (!own) continue;
    out.teacher_own += elements;
    const int64_t part = name.rfind("model.layers.", 0) == 0 ? std::stoll(name.substr(13))
                         : name.rfind("model.embed_tokens.", 0) == 0 ? -1
                                                                      : source.n_layers;
    parts[part + 1] += elements;
  }
  // A tied head reads the embedding's pages again after the last layer.
  if (source.tied_embeddings) parts.back() += parts.front();
  out.teacher_own_largest_part = *std::max_element(parts.begin(), parts.end());
  return out;
}

}  // namespace

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
  if (!cuda && !source_file_pages) in.source_copy_elements = trainable_parameters(plan.shared, plan.train_weights);
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
  const bool searched = plan.method->grouping == convert::HeadGrouping::kSearched;
  if (plan.shares_heads && searched && plan.measure->trains) {
    in.stage = "search";
    in.fusion_operator_elements = whole_pools;
    plans.push_back(plan_memory(in));
  }
  if (plan.fusion_stage) {
    in.stage = "fusion";
    in.fusion_operator_elements =
        fusion_operators > 0 ? fusion_operators : whole_pools * (options.per_channel ? plan.shared.head_dim : 1);
    in.teacher = options.distill_weight > 0;
    const FusionWeights held = fusion_weights(plan);
    in.frozen_fp32_elements = held.aligned_frozen;
    // The teacher's own tensors: on the CPU pages of the source's files that
    // it hands back part by part (DistillationTeacher), else all of them (a
    // copy on the device, or the source kept in memory).
    if (in.teacher)
      in.source_copy_elements = !cuda && source_file_pages ? held.teacher_own_largest_part : held.teacher_own;
    plans.push_back(plan_memory(in));
  }
  // Every conversion measures the source and its result with forward passes only.
  MemoryPlanInputs measure = in;
  measure.stage = "measure";
  measure.train_weights = TrainWeights::kNone;
  measure.inference_only = true;
  measure.teacher = false;
  measure.source_copy_elements = 0;
  measure.frozen_fp32_elements = 0;
  measure.fusion_operator_elements = 0;
  measure.fused_projection_elements = 0;
  measure.inference_copies = 0;
  plans.push_back(plan_memory(measure));
  return plans;
}

}  // namespace dha
