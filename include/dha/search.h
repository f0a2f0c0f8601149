// Stage 1 of dha-convert: head-dependence costs per pool and the global
// grouping with adaptive allocation (docs/method.md §2, stage 1).
//
// A pool is the key heads (or the value heads) of one layer: 2L pools. For an
// MHA source a pool has H heads; for a GQA source it has the existing KV heads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/config.h"

namespace dha {

struct PoolId {
  int64_t layer = 0;
  bool value = false;  // false: key heads, true: value heads
  std::string name() const { return "L" + std::to_string(layer) + (value ? "V" : "K"); }
};

// The 2L pools in order (L0 K, L0 V, L1 K, ...).
std::vector<PoolId> all_pools(int64_t n_layers);
// The pools that have heads: a layer that shares attention has an empty key pool.
int64_t pools_with_heads(const ModelConfig& config);

// groups[p][g] lists the pool heads (indices into pool p) that form group g.
// Groups are ordered by their smallest member.
using Grouping = std::vector<std::vector<std::vector<int64_t>>>;

// Every head its own group.
Grouping identity_grouping(const ModelConfig& config);
// Contiguous equal groups, `per_pool` groups in every pool (the GQA baseline);
// throws unless per_pool divides every pool's head count.
Grouping contiguous_grouping(const ModelConfig& config, int64_t per_pool);

// The layout after grouping: query head i, which read pool head h, now reads
// the group that contains h.
HeadLayout apply_grouping(const HeadLayout& layout, const Grouping& grouping);

// Pairwise costs of n heads, scale-free so that pools compare:
// 1 - linear CKA of the heads' weight slices w [n, d_h, d];
torch::Tensor weight_cost(const torch::Tensor& w);
// ||a_i - a_j||^2 / (||a_i||^2 + ||a_j||^2) of activations a [n, N, d_h];
torch::Tensor activation_cost(const torch::Tensor& a);
// the same after the best function-preserving rotation of a_i onto a_j, the
// transforms alignment applies: min_R ||a_i R - a_j||^2 / (||a_i||^2 + ||a_j||^2)
// over every orthogonal R (values), or over 2x2 rotations in the RoPE planes
// (j, j + d_h/2) only (keys, rope_planes). Symmetric; never above activation_cost.
torch::Tensor aligned_activation_cost(const torch::Tensor& a, bool rope_planes);
// The fusion measure (docs/method.md §2): ||W~_i - W~_j||^2 / (||W_i||^2 + ||W_j||^2)
// averaged over the steps of whole-pool fusion, W [n, d_h, d] the weights
// before fusion and W~ the effective weights after each step. Accumulated one
// step at a time, in float64, so no snapshot of the weights is kept.
class FusionCostAccumulator {
 public:
  explicit FusionCostAccumulator(const torch::Tensor& original);
  void add(const torch::Tensor& effective);
  torch::Tensor cost() const;  // float64 [n, n], zero diagonal

 private:
  torch::Tensor norms_, sum_;
  int64_t steps_ = 0;
};

struct GroupingOptions {
  int64_t target_total = 0;    // heads over all pools after grouping
  int64_t max_group_size = 0;  // 0: no cap (counted in pool heads)
  // The same count in every pool, as even as target_total allows (per pool
  // floor(target / pools) or one more); false: the globally cheapest merges decide.
  bool uniform = false;
};

// Repeatedly applies the globally cheapest merge (average linkage within a
// pool) over all pools until the total is target_total; every pool keeps at
// least one head. Deterministic (ties: first pool, first pair).
Grouping group_heads(const std::vector<torch::Tensor>& costs, const GroupingOptions& options);

// ---- per-layer GQA (dha-convert --layout per-layer-gqa) ---------------------
// K and V of a layer on ONE partition of equal groups, so that the gqa / gguf
// exports (which need exactly that) keep the converted model's KV bytes.

// The pool size n_l of every layer of a source that per-layer GQA can group:
// its K and V on one partition (k_map == v_map), each KV head read by H / n_l
// query heads (MHA, GQA). Otherwise one error naming `where` and the layer.
std::vector<int64_t> per_layer_gqa_pool_sizes(const ModelConfig& config, const std::string& where);

// The group counts a pool of n heads may take: the divisors G of n whose group
// size n / G is at most max_group_size (0: no cap), ascending.
std::vector<int64_t> equal_group_counts(int64_t n, int64_t max_group_size);

// The largest K+V head total 2 sum_l G_l at most `target` with each G_l from
// equal_group_counts (uniform: one G in every layer); an error when none is.
int64_t per_layer_gqa_reachable_heads(const std::vector<int64_t>& pool_sizes, int64_t target,
                                      const GroupingOptions& options);

// An equal-size partition of a pool and its cost: sum over groups of
// (heads removed) x (mean pairwise cost inside the group), i.e.
// (2 / s) sum_g sum_{i<j in g} c_ij for groups of s heads.
struct EqualPartition {
  std::vector<std::vector<int64_t>> groups;  // sorted members, ordered by the smallest
  double cost = 0.0;
  bool exact = false;  // proven optimal (exhaustive search) rather than a local optimum
};
double equal_partition_cost(const torch::Tensor& cost, const std::vector<std::vector<int64_t>>& groups);
// Pools with at most this many equal partitions are searched exhaustively
// (every pool of <= 12 heads; n = 16 into 2 groups of 8).
constexpr double kMaxExactPartitions = 1e5;
// The cheapest partition of cost [n, n] into n_groups groups of n / n_groups
// heads: exhaustive branch and bound when the count of such partitions is at
// most max_exact, else greedy seeding plus best-swap local search.
EqualPartition equal_partition(const torch::Tensor& cost, int64_t n_groups,
                               double max_exact = kMaxExactPartitions);

// The per-layer GQA search over the 2L pool costs (L0 K, L0 V, ...): a layer's
// joint cost is its K cost plus its V cost; each layer takes a group count
// G_l from equal_group_counts, with sum_l 2 G_l = target_total exactly (an
// error naming the nearest reachable total otherwise), chosen to minimise the
// summed partition costs; K and V pools of a layer get the same groups.
Grouping group_heads_per_layer_gqa(const std::vector<torch::Tensor>& costs, const GroupingOptions& options);

// The head target of a budget: round(rho * 2 L H), checked against the limits
// (>= one head per pool, <= the heads the source has) with a clear message.
int64_t budget_heads(const ModelConfig& config, double budget);

}  // namespace dha
