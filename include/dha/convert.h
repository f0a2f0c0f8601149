// dha-convert's pipeline (docs/method.md §2, §4): a plan decided from the
// options and the source config alone, then the stages — attention analysis,
// head-dependence search, fusion under an augmented Lagrangian (or the GQA
// baselines' pooling / alignment), collapse, export — and a report built from
// their results.
#pragma once

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
  // The same K and V head count in every pool, as even as the budget allows (counts
  // differ by at most one); false: the search's costs decide each pool's count (the
  // paper's adaptive allocation). Balanced counts measured better here (README).
  bool uniform = true;
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
  // KL(source || fusion model) next to the LM loss: better than the LM loss alone wherever
  // heads merge, and weight 3 better than 1 (lower at the end of every stories260K curve,
  // lower right after conversion on the demo model) while 10 was worse on the MHA twin
  // (README, "DHA against the baselines at equal total tokens").
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

enum class ConvertMethod {
  kDha,              // search, fusion, collapse
  kGqa,              // contiguous equal groups, mean pooling (Ainslie et al.)
  kAlignedGqa,       // contiguous equal groups, Procrustes alignment, then mean (Jin et al.)
  kSharedAttention,  // layers reuse an earlier layer's attention (Liao & Vargas)
};
struct ConvertMethodInfo {
  ConvertMethod method;
  std::string name, help;
};
const std::vector<ConvertMethodInfo>& convert_methods();

// What a conversion will do, decided from the options and the source config
// before any model is loaded: every refusal of the options happens here.
struct ConvertPlan {
  ConvertMethod method = ConvertMethod::kDha;
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

struct ConvertSummary {
  nlohmann::json report;  // what report.json holds
  std::string out_dir;
};

// Checks every input before any work, then runs the plan's stages and writes
// out_dir atomically (an interrupted run leaves no out_dir behind).
ConvertSummary run_convert(const std::string& model_path, const std::string& tokenizer_path,
                           const std::string& out_dir, bool force, const ConvertOptions& options);

}  // namespace dha
