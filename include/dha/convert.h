// dha-convert's pipeline (docs/method.md §2, §4): a plan decided from the
// options and the source config alone, then the stages — attention analysis,
// head-dependence search, fusion under an augmented Lagrangian (or the GQA
// baselines' pooling / alignment), collapse, export — and a report built from
// their results.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/config.h"
#include "dha/fusion.h"
#include "dha/memory_plan.h"
#include "dha/rank_environment.h"
#include "dha/recipe.h"
#include "dha/train.h"

namespace dha {

struct ExportFormat;
struct SearchMeasure;

struct ConvertOptions {
  std::string method = "dha";      // see convert_methods()
  double budget = 0.25;            // rho: kept K+V heads over 2 L H
  // Shared Attention (docs/method.md §4.3): "A-B,C-D" layer spans that reuse
  // the attention of the layer before the span. With shared-attention, empty
  // means "chosen for --budget"; with dha or gqa, the spans are applied first
  // and the budget counts their removed key heads.
  std::string share_spans;
  bool analyze_attention = false;  // only measure cross-layer attention similarity (no model written)
  std::vector<std::string> calib;  // calibration text files
  std::string eval_text;           // held-out text; default: the last `heldout` of each calibration file
  double heldout = 0.05;
  int64_t eval_docs = 200;
  uint64_t seed = 1234;
  std::string device = "auto";
  int64_t batch = 8;               // sequences per step (search, fusion, calibration statistics)
  int64_t seq_len = 256;           // 0: the model's context
  // Stage 1: search
  std::string measure = "fusion";  // see search_measures()
  int64_t search_steps = 40;       // fusion measure: steps of whole-pool fusion
  int64_t search_average = 0;      // fusion measure: costs averaged over the last N steps (0: all)
  int64_t max_group_size = 0;      // 0: no cap
  // The search's costs decide each pool's K and V head count (the paper's adaptive
  // allocation); false: the same count in every pool, as even as the budget allows
  // (counts differ by at most one), which measured better (docs/results/curves.md).
  bool adaptive = false;
  int64_t rounds = 1;              // progressive search in this many rounds
  // "dha": K and V grouped separately, any group sizes (the paper's layout);
  // "per-layer-gqa": K and V of a layer on one partition of equal groups,
  // which the gqa / gguf exports hold without duplicating heads.
  std::string layout = "dha";
  // Stage 2: fusion
  bool fusion = true;              // false: mean-pool the searched groups (ablation "w/o linear fusion")
  int64_t fusion_steps = 200;
  double lr = 1e-4;                // model weights theta
  double omega_lr = 5e-3;
  double lambda_lr = 1.0;
  double target_fraction = 0.25;   // the target falls to 0 over this share of the steps
  bool per_channel = false;        // Omega n x n x d_h instead of n x n
  bool align = true;               // dha: align each group's heads (function unchanged) before fusing them
  // Weight of KL(source || fusion model) next to the LM loss (0: the LM loss alone,
  // the paper's). The default's measurements: docs/results/curves.md.
  double distill_weight = 3.0;
  // Memory (search and fusion)
  std::string train_weights = "all";    // all | attention (the fused K/V projections) | none (only Omega)
  bool activation_checkpointing = false;  // recompute each decoder layer in backward
  int64_t zero = 0;                       // ZeRO stage of the search and fusion stages (0-3)
  int64_t checkpoint_every = 0;         // training checkpoints of search and fusion (0: none)
  // Export
  std::string export_format = "dha";  // see export_formats()
  std::string dtype = "keep";         // weights on disk: keep (the source's) | f32 | bf16 | f16
};

// The recipe keys of ConvertOptions, with their flags and help.
const RecipeFields<ConvertOptions>& convert_recipe_fields();
// Reads a JSON recipe; an unknown key or a value of the wrong type is an error naming `where`.
ConvertOptions convert_options_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json convert_options_to_json(const ConvertOptions& options);

// The conversion methods (dha; the baselines gqa and aligned-gqa; shared-attention),
// each one row of the method table (src/convert/method.h), which says everything
// the pipeline does for it.
namespace convert {
struct ConvertMethodRow;
}
struct ConvertMethodName {
  std::string name, help;
};
// By name and help, in the order --method's help lists them.
const std::vector<ConvertMethodName>& convert_methods();

// What a conversion will do, decided from the options and the source config
// before any model is loaded: every refusal of the options happens here.
struct ConvertPlan {
  const convert::ConvertMethodRow* method = nullptr;  // the method's row
  const std::string& method_name() const;
  bool analyze_only = false;                 // --analyze-attention: similarity only, no model written
  const SearchMeasure* measure = nullptr;    // how dha scores heads
  const ExportFormat* export_format = nullptr;
  std::vector<LayerSpan> spans;              // layers that share attention (given; or chosen when choose_spans)
  bool choose_spans = false;                 // shared-attention without spans: chosen for the budget
  bool measure_similarity = false;           // the cross-layer attention analysis runs
  bool uses_budget = true;                   // false for analysis, and for shared-attention with given spans
  bool shares_heads = true;                  // head sharing (search/pooling) follows the spans
  bool fusion_stage = false;                 // dha with fusion: a trained stage before the collapse
  bool align = false;                        // the fusion stage starts from aligned groups (not with shared spans)
  ModelConfig source;                        // the source model's config
  ModelConfig shared;                        // the source with the given spans applied: where head sharing starts
  int64_t target_heads = 0;                  // K+V heads after head sharing (0: none)
  bool per_layer_gqa = false;                // --layout per-layer-gqa: K and V on one partition of equal groups
  int64_t requested_heads = 0;               // the budget's heads; above target_heads when per-layer GQA
                                             // cannot reach them (the nearest total below is taken)
  std::string budget_note;                   // one line saying so (report.json, dha-convert's stdout); else empty
  int64_t seq_len = 0;                       // calibration sequence length
  TrainWeights train_weights = TrainWeights::kAll;
  std::optional<torch::ScalarType> output_dtype;  // unset: the source's storage dtype
};
ConvertPlan plan_conversion(const ConvertOptions& options, const ModelConfig& source, const std::string& model_path);

// The training settings of a conversion stage that trains (the search's
// fusion measure and the fusion stage): constant rate, no warmup, clip 1.
TrainConfig conversion_train_config(const ConvertOptions& options, int64_t steps, int64_t seq_len);
FusionOptions conversion_fusion_options(const ConvertOptions& options);

// The memory each trained stage of the conversion will need per rank: the
// search's whole-pool fusion (when the measure trains) and the fusion stage.
// `source_file_pages`: the source's weights are pages of its files
// (io::loads_file_pages), handed back once a stage has its fp32 copies, so
// they do not stay beside them. `fusion_operators`: the fusion stage's Omega entries (unknown before the
// search: 0 gives the whole-pool bound).
std::vector<MemoryPlan> conversion_memory_plans(const ConvertOptions& options, const ConvertPlan& plan,
                                                torch::ScalarType storage_dtype, bool source_file_pages, bool cuda,
                                                int world_size, int64_t fusion_operators = 0);

// The device a conversion runs on: --device, on CUDA the rank's local GPU.
torch::Device conversion_device(const ConvertOptions& options, const RankEnvironment& ranks,
                                const DeviceInventory& inventory = DeviceInventory::current());

// What a conversion did, typed (report.json holds all of it and more).
struct ConvertSummary {
  nlohmann::json report;  // what report.json holds
  std::string out_dir;
  ConvertPlan plan;
  // --analyze-attention: the similarity of consecutive layers (l - 1, l).
  struct LayerPair {
    int64_t first = 0, second = 0;
    double cosine = 0.0, js = 0.0;
  };
  std::vector<LayerPair> consecutive_similarity;
  // A conversion (not an analysis):
  std::string shared_spans;                      // "A-B,C-D" applied (given or chosen); empty: none
  int64_t kv_bytes_before = 0, kv_bytes_after = 0;  // per token at 2 bytes per element
  double source_nll = 0.0, converted_nll = 0.0;  // held-out NLL
  std::optional<double> after_sharing_nll;       // spans applied, before head sharing
  std::optional<double> after_fusion_nll;        // the fusion model, before the collapse
  double wall_seconds = 0.0;
};

// Checks every input before any work, then runs the plan's stages and writes
// out_dir atomically (an interrupted run leaves no out_dir behind).
ConvertSummary run_convert(const std::string& model_path, const std::string& tokenizer_path,
                           const std::string& out_dir, bool force, const ConvertOptions& options);

}  // namespace dha
