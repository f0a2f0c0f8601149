// The search measures of stage 1 (docs/method.md §2): one table, each row a name,
// its help and the function that scores every pool's heads. dha-convert
// --measure, its --help and its error for an unknown name come from the table,
// so adding a measure is one row here (src/convert/measures.cpp) and its test.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/checkpoint.h"
#include "dha/convert.h"
#include "dha/data.h"
#include "dha/distributed.h"
#include "dha/lookup.h"

namespace dha {

// What a measure may read.
struct MeasureInputs {
  const ConvertOptions& options;  // the recipe (batch, search steps, rates, ...)
  const Checkpoint& model;        // float32, in this search round's layout
  SequenceSampler& sampler;       // calibration sequences
  int64_t seq_len = 0;
  torch::Device device;
  Distributed& dist;
  std::string work_dir;           // scratch directory for a measure that trains
  nlohmann::json& report;         // figures the measure records under "search"
};

struct SearchMeasure {
  std::string name;
  std::string help;
  bool trains = false;  // runs a training loop (its memory is planned as a stage)
  // One cost matrix [n, n] (float64, scale-free so pools compare) per pool of
  // all_pools(); an empty pool (the keys of a sharing layer) gets [0, 0].
  std::function<std::vector<torch::Tensor>(const MeasureInputs&)> costs;
};

const std::vector<SearchMeasure>& search_measures();
// The measure called `name`; otherwise an error listing every measure.
const SearchMeasure& find_search_measure(const std::string& name);
// "weight: ...; activation: ...; fusion: ..." for --help.
std::string search_measures_help();

}  // namespace dha
