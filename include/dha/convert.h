// dha-convert's pipeline: head-dependence search -> fusion under an augmented
// Lagrangian -> collapse -> export (method dha), or the GQA baselines (mean
// pooling, align-then-merge), with a report and pictures.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dha {

struct ConvertOptions {
  std::string method = "dha";      // dha | gqa | aligned-gqa | shared-attention
  double budget = 0.25;            // rho: kept K+V heads over 2 L H
  // Shared Attention (method.md §4.3): "A-B,C-D" layer spans that reuse the
  // attention of the layer before the span. With shared-attention, empty means
  // "chosen for --budget"; with dha or gqa, the spans are applied first and the
  // budget counts their removed key heads.
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
  std::string measure = "fusion";  // weight | activation | fusion
  int64_t search_steps = 40;       // fusion measure: steps of whole-pool fusion
  int64_t search_average = 0;      // fusion measure: costs averaged over the last N steps (0: all)
  int64_t max_group_size = 0;      // 0: no cap
  bool uniform = false;            // the same count in every pool (ablation "w/o adaptive")
  int64_t rounds = 1;              // progressive search in this many rounds
  // Stage 2: fusion
  bool fusion = true;              // false: mean-pool the searched groups (ablation "w/o linear fusion")
  int64_t fusion_steps = 200;
  double lr = 1e-4;                // model weights theta
  double omega_lr = 5e-3;
  double lambda_lr = 1.0;
  double target_fraction = 0.25;   // the target falls to 0 over this share of the steps
  bool per_channel = false;        // Omega n x n x d_h instead of n x n
  double distill_weight = 0.0;     // KL(source || fusion model)
  // Export
  std::string export_format = "dha";  // dha | gqa | mha
};

// Reads a JSON recipe (keys as the fields above); unknown keys are errors.
ConvertOptions convert_options_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json convert_options_to_json(const ConvertOptions& options);

struct ConvertSummary {
  nlohmann::json report;  // what report.json holds
  std::string out_dir;
};

// Checks every input before any work, then runs the pipeline and writes
// out_dir atomically (an interrupted run leaves no out_dir behind).
ConvertSummary run_convert(const std::string& model_path, const std::string& tokenizer_path,
                           const std::string& out_dir, bool force, const ConvertOptions& options);

}  // namespace dha
