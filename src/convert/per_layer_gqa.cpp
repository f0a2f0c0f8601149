// The per-layer GQA search (dha-convert --layout per-layer-gqa): K and V of a
// layer grouped on one partition of equal groups, head counts allocated across
// layers under the exact budget.
//
// How the equal-size grouping is done, and why:
// - Average-linkage merges (group_heads) cannot be restricted to equal sizes:
//   a layer's count jumps between divisors of H (8 -> 4 -> 2 -> 1), and the
//   groups at one count are not always unions of those at the next (12 heads:
//   groups of 2 at G = 6, of 3 at G = 4). So each layer is scored at every
//   allowed count G on its own, by the cheapest equal partition into G groups.
// - A partition's cost is sum_g (|g| - 1) x mean pairwise cost in g: heads
//   removed times their mean linkage, the units of the dha search's merge
//   costs (a pair costs c_ij, as one merge does). Within a layer, at a fixed G,
//   that is the classical min-sum equal-size clustering.
// - Small pools (<= kMaxExactPartitions partitions: every pool of <= 12
//   heads, the 8 KV heads of Llama 3 / Llama 2 70B, the demo's 8 heads) are
//   solved exactly by branch and bound; larger ones (32-head MHA) by greedy
//   seeding (cheapest free pair, grown by the cheapest free head) then
//   best-improving swaps between groups until none improves.
// - Allocation: one G per layer, minimising the summed costs with
//   sum_l 2 G_l = the target exactly: a multiple-choice knapsack over L layers,
//   solved exactly by dynamic programming over the running head total. A
//   greedy over single merges, as dha's, cannot move in steps of several
//   groups, and a greedy over steps can overshoot the budget.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "dha/error.h"
#include "dha/search.h"

namespace dha {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

using Matrix = std::vector<std::vector<double>>;

Matrix to_matrix(const torch::Tensor& cost) {
  const torch::Tensor c = cost.to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t n = c.size(0);
  const auto acc = c.accessor<double, 2>();
  Matrix m(n, std::vector<double>(n));
  // Every measure's costs are non-negative (branch and bound relies on it);
  // a float round-off below zero counts as zero.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) m[i][j] = i == j ? 0.0 : std::max(0.0, acc[i][j]);
  return m;
}

// Sum of pairwise costs inside each group.
double intra_sum(const Matrix& c, const std::vector<std::vector<int64_t>>& groups) {
  double sum = 0.0;
  for (const auto& g : groups)
    for (size_t a = 0; a < g.size(); ++a)
      for (size_t b = a + 1; b < g.size(); ++b) sum += c[g[a]][g[b]];
  return sum;
}

std::vector<std::vector<int64_t>> sorted_groups(std::vector<std::vector<int64_t>> groups) {
  for (auto& g : groups) std::sort(g.begin(), g.end());
  std::sort(groups.begin(), groups.end());
  return groups;
}

// Exhaustive search over equal partitions in canonical order: a group starts
// at the smallest free head and takes its other members in increasing order.
// Prunes on the partial sum (costs are non-negative); ties keep the first.
struct ExactSearch {
  ExactSearch(const Matrix& cost, int64_t heads, int64_t size) : c(cost), n(heads), s(size), used(heads, 0) {}
  const Matrix& c;
  int64_t n, s;
  std::vector<int64_t> order;  // heads in assignment order: groups are consecutive chunks of s
  std::vector<char> used;
  double best = kInf;
  std::vector<int64_t> best_order;

  void run(double partial) {
    const int64_t placed = static_cast<int64_t>(order.size());
    if (placed == n) {
      if (partial < best) best = partial, best_order = order;
      return;
    }
    if (placed % s == 0) {  // a new group: its first member is the smallest free head
      const int64_t h = std::find(used.begin(), used.end(), 0) - used.begin();
      place(h, partial);
      return;
    }
    const int64_t group_begin = placed - placed % s;
    const int64_t need = s - placed % s;  // members still to add, each above the last
    for (int64_t h = order.back() + 1; h < n; ++h) {
      if (used[h]) continue;
      int64_t free_above = 0;  // enough free heads from h on to finish the group?
      for (int64_t k = h; k < n && free_above < need; ++k) free_above += !used[k];
      if (free_above < need) break;
      double add = 0.0;
      for (int64_t m = group_begin; m < placed; ++m) add += c[h][order[m]];
      if (partial + add >= best) continue;
      place(h, partial + add);
    }
  }
  void place(int64_t h, double partial) {
    used[h] = 1;
    order.push_back(h);
    run(partial);
    order.pop_back();
    used[h] = 0;
  }
};

std::vector<std::vector<int64_t>> exact_partition(const Matrix& c, int64_t n, int64_t s) {
  ExactSearch search(c, n, s);
  search.run(0.0);
  std::vector<std::vector<int64_t>> groups(n / s);
  for (int64_t i = 0; i < n; ++i) groups[i / s].push_back(search.best_order[i]);
  return groups;
}

// Greedy seeding, then best-improving swaps of two heads between two groups.
std::vector<std::vector<int64_t>> local_search_partition(const Matrix& c, int64_t n, int64_t s) {
  const int64_t n_groups = n / s;
  std::vector<char> used(n, 0);
  std::vector<std::vector<int64_t>> groups;
  for (int64_t g = 0; g < n_groups; ++g) {
    double best = kInf;
    int64_t bi = -1, bj = -1;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j)
        if (!used[i] && !used[j] && c[i][j] < best) best = c[i][j], bi = i, bj = j;
    std::vector<int64_t> group = {bi, bj};
    used[bi] = used[bj] = 1;
    while (static_cast<int64_t>(group.size()) < s) {
      double cheapest = kInf;
      int64_t pick = -1;
      for (int64_t h = 0; h < n; ++h) {
        if (used[h]) continue;
        double sum = 0.0;
        for (int64_t m : group) sum += c[h][m];
        if (sum < cheapest) cheapest = sum, pick = h;
      }
      group.push_back(pick);
      used[pick] = 1;
    }
    groups.push_back(group);
  }
  // to_group[h][g]: sum of h's costs to the members of group g.
  const int64_t max_swaps = 100 * n;  // each swap strictly lowers the cost; a guard, never reached in practice
  for (int64_t swaps = 0; swaps < max_swaps; ++swaps) {
    Matrix to_group(n, std::vector<double>(n_groups, 0.0));
    std::vector<int64_t> group_of(n);
    for (int64_t g = 0; g < n_groups; ++g)
      for (int64_t m : groups[g]) {
        group_of[m] = g;
        for (int64_t h = 0; h < n; ++h) to_group[h][g] += c[h][m];
      }
    double best = -1e-12;  // only strict improvements (beyond round-off)
    int64_t ba = -1, bb = -1;
    for (int64_t a = 0; a < n; ++a)
      for (int64_t b = a + 1; b < n; ++b) {
        const int64_t ga = group_of[a], gb = group_of[b];
        if (ga == gb) continue;
        const double delta =
            to_group[b][ga] + to_group[a][gb] - to_group[a][ga] - to_group[b][gb] - 2.0 * c[a][b];
        if (delta < best) best = delta, ba = a, bb = b;
      }
    if (ba < 0) break;
    auto& ga = groups[group_of[ba]];
    auto& gb = groups[group_of[bb]];
    *std::find(ga.begin(), ga.end(), ba) = bb;
    *std::find(gb.begin(), gb.end(), bb) = ba;
  }
  return groups;
}

}  // namespace

std::vector<int64_t> per_layer_gqa_pool_sizes(const ModelConfig& config, const std::string& where) {
  const HeadLayout& layout = config.layout;
  std::vector<int64_t> sizes;
  for (int64_t l = 0; l < config.n_layers; ++l) {
    if (layout.shares_attention(l))
      fail(where, ": layer ", l, " shares attention (no keys); --layout per-layer-gqa needs every layer's K and V");
    if (layout.k_map[l] != layout.v_map[l])
      fail(where, ": layer ", l, " has K and V on different partitions (", describe_layout(config),
           "); --layout per-layer-gqa needs an MHA or GQA source");
    const int64_t n = layout.n_k_heads(l);
    std::vector<int64_t> readers(n, 0);
    for (int64_t h : layout.k_map[l]) readers[h] += 1;
    for (int64_t h = 0; h < n; ++h)
      if (readers[h] * n != config.n_heads)
        fail(where, ": layer ", l, " KV head ", h, " is read by ", readers[h], " query heads, not ", config.n_heads,
             " / ", n, "; --layout per-layer-gqa needs equal GQA groups in the source");
    sizes.push_back(n);
  }
  return sizes;
}

std::vector<int64_t> equal_group_counts(int64_t n, int64_t max_group_size) {
  std::vector<int64_t> counts;
  for (int64_t g = 1; g <= n; ++g)
    if (n % g == 0 && (max_group_size <= 0 || n / g <= max_group_size)) counts.push_back(g);
  return counts;
}

int64_t per_layer_gqa_reachable_heads(const std::vector<int64_t>& pool_sizes, int64_t target,
                                      const GroupingOptions& options) {
  if (pool_sizes.empty()) fail("per-layer GQA: the model has no layers");
  const int64_t n_layers = static_cast<int64_t>(pool_sizes.size());
  int64_t best = -1;
  if (options.uniform) {
    for (int64_t g : equal_group_counts(pool_sizes[0], options.max_group_size)) {
      bool everywhere = true;
      for (int64_t n : pool_sizes) everywhere = everywhere && n % g == 0 && (options.max_group_size <= 0 || n / g <= options.max_group_size);
      if (everywhere && 2 * n_layers * g <= target) best = std::max(best, 2 * n_layers * g);
    }
  } else {
    // Reachable sums of G_l, layer by layer.
    const int64_t total = std::accumulate(pool_sizes.begin(), pool_sizes.end(), int64_t{0});
    std::vector<char> reach(total + 1, 0);
    reach[0] = 1;
    for (int64_t n : pool_sizes) {
      std::vector<char> next(total + 1, 0);
      for (int64_t sum = 0; sum <= total; ++sum)
        if (reach[sum])
          for (int64_t g : equal_group_counts(n, options.max_group_size))
            if (sum + g <= total) next[sum + g] = 1;
      reach = next;
    }
    for (int64_t sum = 0; sum <= total; ++sum)
      if (reach[sum] && 2 * sum <= target) best = std::max(best, 2 * sum);
  }
  if (best < 0)
    fail("--layout per-layer-gqa: no choice of equal groups per layer keeps at most ", target, " K+V heads",
         options.uniform ? " with the same count in every layer" : "",
         options.max_group_size > 0 ? " under --max-group-size " + std::to_string(options.max_group_size) : "",
         " (the fewest is one group per layer: ", 2 * n_layers, " heads)");
  return best;
}

double equal_partition_cost(const torch::Tensor& cost, const std::vector<std::vector<int64_t>>& groups) {
  const Matrix c = to_matrix(cost);
  double total = 0.0;
  for (const auto& g : groups)
    if (g.size() > 1) total += 2.0 / static_cast<double>(g.size()) * intra_sum(c, {g});
  return total;
}

EqualPartition equal_partition(const torch::Tensor& cost, int64_t n_groups, double max_exact) {
  const int64_t n = cost.size(0);
  if (cost.dim() != 2 || cost.size(1) != n) fail("equal partition: the cost must be square, got ", cost.sizes());
  if (n_groups < 1 || n_groups > n || n % n_groups != 0)
    fail("equal partition: ", n_groups, " groups cannot split ", n, " heads equally");
  const int64_t s = n / n_groups;
  EqualPartition result;
  const Matrix c = to_matrix(cost);
  // log of n! / ((s!)^G G!), the number of partitions into G unlabelled groups of s.
  const double log_count = std::lgamma(n + 1.0) - n_groups * std::lgamma(s + 1.0) - std::lgamma(n_groups + 1.0);
  if (s == 1 || n_groups == 1) {
    for (int64_t g = 0; g < n_groups; ++g) {
      result.groups.emplace_back();
      for (int64_t i = 0; i < s; ++i) result.groups.back().push_back(g * s + i);
    }
    result.exact = true;
  } else if (log_count <= std::log(std::max(max_exact, 1.0)) + 1e-9) {
    result.groups = exact_partition(c, n, s);
    result.exact = true;
  } else {
    result.groups = local_search_partition(c, n, s);
  }
  result.groups = sorted_groups(result.groups);
  result.cost = 2.0 / static_cast<double>(s) * intra_sum(c, result.groups);
  return result;
}

Grouping group_heads_per_layer_gqa(const std::vector<torch::Tensor>& costs, const GroupingOptions& options) {
  if (costs.empty() || costs.size() % 2 != 0)
    fail("per-layer GQA grouping: expected 2 pools per layer (K, V), got ", costs.size());
  const int64_t n_layers = static_cast<int64_t>(costs.size() / 2);
  std::vector<int64_t> sizes;
  std::vector<torch::Tensor> joint;
  for (int64_t l = 0; l < n_layers; ++l) {
    const torch::Tensor& k = costs[2 * l];
    const torch::Tensor& v = costs[2 * l + 1];
    if (k.size(0) == 0 || k.sizes() != v.sizes())
      fail("per-layer GQA grouping: layer ", l, " has ", k.size(0), " key and ", v.size(0),
           " value heads; K and V must be the same heads");
    sizes.push_back(k.size(0));
    joint.push_back(k.to(torch::kFloat64) + v.to(torch::kFloat64));
  }
  const int64_t reachable = per_layer_gqa_reachable_heads(sizes, options.target_total, options);
  if (reachable != options.target_total)
    fail("--layout per-layer-gqa cannot keep exactly ", options.target_total, " K+V heads with equal groups per layer",
         options.uniform ? " and one count in every layer" : "",
         options.max_group_size > 0 ? " of at most --max-group-size " + std::to_string(options.max_group_size) + " heads"
                                    : "",
         "; the nearest below is ", reachable);

  // Each layer at each allowed count: its cheapest equal partition.
  std::vector<std::map<int64_t, EqualPartition>> options_of(n_layers);
  for (int64_t l = 0; l < n_layers; ++l)
    for (int64_t g : equal_group_counts(sizes[l], options.max_group_size)) options_of[l][g] = equal_partition(joint[l], g);

  std::vector<int64_t> chosen(n_layers);
  const int64_t groups_total = options.target_total / 2;
  if (options.uniform) {
    std::fill(chosen.begin(), chosen.end(), groups_total / n_layers);
  } else {
    // best[l][sum]: the least cost of layers < l with sum_l G_l = sum; choice[l][sum]: layer l-1's G.
    std::vector<std::vector<double>> best(n_layers + 1, std::vector<double>(groups_total + 1, kInf));
    std::vector<std::vector<int64_t>> choice(n_layers + 1, std::vector<int64_t>(groups_total + 1, -1));
    best[0][0] = 0.0;
    for (int64_t l = 0; l < n_layers; ++l)
      for (int64_t sum = 0; sum <= groups_total; ++sum) {
        if (!std::isfinite(best[l][sum])) continue;
        for (const auto& [g, partition] : options_of[l]) {  // ascending G: ties keep the fewer groups
          if (sum + g > groups_total) break;
          const double c = best[l][sum] + partition.cost;
          if (c < best[l + 1][sum + g]) best[l + 1][sum + g] = c, choice[l + 1][sum + g] = g;
        }
      }
    int64_t sum = groups_total;
    for (int64_t l = n_layers; l > 0; --l) {
      chosen[l - 1] = choice[l][sum];
      sum -= chosen[l - 1];
    }
  }
  Grouping grouping;
  for (int64_t l = 0; l < n_layers; ++l) {
    const auto& groups = options_of[l].at(chosen[l]).groups;
    grouping.push_back(groups);  // keys
    grouping.push_back(groups);  // values: the same partition
  }
  return grouping;
}

}  // namespace dha
