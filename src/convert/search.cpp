// Head costs and the global average-linkage grouping with adaptive allocation.
#include "dha/search.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dha/error.h"

namespace dha {

std::vector<PoolId> all_pools(int64_t n_layers) {
  std::vector<PoolId> pools;
  for (int64_t l = 0; l < n_layers; ++l) {
    pools.push_back({l, false});
    pools.push_back({l, true});
  }
  return pools;
}

int64_t pools_with_heads(const ModelConfig& c) {
  int64_t pools = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) pools += c.layout.shares_attention(l) ? 1 : 2;
  return pools;
}

Grouping identity_grouping(const ModelConfig& c) {
  Grouping grouping;
  for (const PoolId& p : all_pools(c.n_layers)) {
    const int64_t n = p.value ? c.layout.n_v_heads(p.layer) : c.layout.n_k_heads(p.layer);
    std::vector<std::vector<int64_t>> groups;
    for (int64_t h = 0; h < n; ++h) groups.push_back({h});
    grouping.push_back(groups);
  }
  return grouping;
}

Grouping contiguous_grouping(const ModelConfig& c, int64_t per_pool) {
  Grouping grouping;
  for (const PoolId& p : all_pools(c.n_layers)) {
    const int64_t n = p.value ? c.layout.n_v_heads(p.layer) : c.layout.n_k_heads(p.layer);
    if (n == 0) {  // the keys of a layer that shares attention
      grouping.emplace_back();
      continue;
    }
    if (per_pool <= 0 || n % per_pool != 0)
      fail("GQA needs equal contiguous groups: pool ", p.name(), " has ", n, " heads, which ", per_pool,
           " groups cannot split equally; choose a budget giving a divisor of ", n, " heads per pool");
    const int64_t size = n / per_pool;
    std::vector<std::vector<int64_t>> groups(per_pool);
    for (int64_t h = 0; h < n; ++h) groups[h / size].push_back(h);
    grouping.push_back(groups);
  }
  return grouping;
}

HeadLayout apply_grouping(const HeadLayout& layout, const Grouping& grouping) {
  HeadLayout out = layout;
  for (int64_t l = 0; l < layout.n_layers(); ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const auto& groups = grouping.at(2 * l + kind);
      std::vector<int64_t> group_of;
      for (size_t g = 0; g < groups.size(); ++g)
        for (int64_t h : groups[g]) {
          if (h >= static_cast<int64_t>(group_of.size())) group_of.resize(h + 1, -1);
          group_of[h] = static_cast<int64_t>(g);
        }
      auto& map = kind ? out.v_map[l] : out.k_map[l];
      for (auto& head : map) {
        if (head >= static_cast<int64_t>(group_of.size()) || group_of[head] < 0)
          fail("grouping of pool L", l, kind ? "V" : "K", " does not cover head ", head);
        head = group_of[head];
      }
    }
  }
  return out;
}

torch::Tensor weight_cost(const torch::Tensor& w) {
  // Each head's slice [d_h, d] as d_h features over d inputs, centred over inputs.
  const int64_t n = w.size(0);
  if (n == 0) return torch::zeros({0, 0}, torch::kFloat64);
  const torch::Tensor x = w.to(torch::kFloat64).transpose(1, 2);  // [n, d, d_h]
  const torch::Tensor centred = x - x.mean(1, true);
  torch::Tensor cost = torch::zeros({n, n}, torch::kFloat64);
  std::vector<double> self(n);
  for (int64_t i = 0; i < n; ++i) self[i] = centred[i].t().matmul(centred[i]).pow(2).sum().sqrt().item<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      const double cross = centred[j].t().matmul(centred[i]).pow(2).sum().item<double>();
      const double denom = self[i] * self[j];
      const double cka = denom > 0 ? cross / denom : 0.0;
      cost[i][j] = cost[j][i] = std::max(0.0, 1.0 - cka);
    }
  return cost;
}

torch::Tensor activation_cost(const torch::Tensor& a) {
  const int64_t n = a.size(0);
  if (n == 0) return torch::zeros({0, 0}, torch::kFloat64);
  const torch::Tensor flat = a.to(torch::kFloat64).reshape({n, -1});
  const torch::Tensor norms = flat.pow(2).sum(1);
  const torch::Tensor distances = torch::cdist(flat.unsqueeze(0), flat.unsqueeze(0)).squeeze(0).pow(2);
  torch::Tensor cost = distances / (norms.unsqueeze(0) + norms.unsqueeze(1)).clamp_min(1e-30);
  cost.fill_diagonal_(0.0);
  return cost;
}

torch::Tensor aligned_activation_cost(const torch::Tensor& a, bool rope_planes) {
  const int64_t n = a.size(0);
  if (n == 0) return torch::zeros({0, 0}, torch::kFloat64);
  const torch::Tensor x = a.to(torch::kFloat64);  // [n, N, d_h]
  const torch::Tensor norms = x.pow(2).sum({1, 2});
  // The largest <a_i R, a_j> over the allowed R: the nuclear norm of a_i^T a_j for
  // any orthogonal R; per RoPE plane, the length of the plane's 2-d cross term.
  torch::Tensor best = torch::zeros({n, n}, torch::kFloat64);
  if (rope_planes) {
    const int64_t half = x.size(2) / 2;
    const torch::Tensor u = x.narrow(2, 0, half), v = x.narrow(2, half, half);  // [n, N, half]
    const torch::Tensor dot = torch::einsum("inp,jnp->ijp", {u, u}) + torch::einsum("inp,jnp->ijp", {v, v});
    const torch::Tensor cross = torch::einsum("inp,jnp->ijp", {u, v}) - torch::einsum("inp,jnp->ijp", {v, u});
    best = (dot.pow(2) + cross.pow(2)).sqrt().sum(2);
  } else {
    // One row at a time (the pairs j > i): n^2/2 products a_i^T a_j of d_h x d_h.
    for (int64_t i = 0; i + 1 < n; ++i) {
      const torch::Tensor m = torch::matmul(x[i].t().unsqueeze(0), x.narrow(0, i + 1, n - i - 1));
      const torch::Tensor row = torch::linalg_svdvals(m).sum(1);
      best[i].narrow(0, i + 1, n - i - 1).copy_(row);
      best.select(1, i).narrow(0, i + 1, n - i - 1).copy_(row);
    }
  }
  const torch::Tensor sums = norms.unsqueeze(0) + norms.unsqueeze(1);
  torch::Tensor cost = ((sums - 2 * best) / sums.clamp_min(1e-30)).clamp_min(0.0);
  cost.fill_diagonal_(0.0);
  return cost;
}

FusionCostAccumulator::FusionCostAccumulator(const torch::Tensor& original) {
  const int64_t n = original.size(0);
  norms_ = original.to(torch::kFloat64).reshape({n, -1}).pow(2).sum(1);
  sum_ = torch::zeros({n, n}, torch::kFloat64);
}

void FusionCostAccumulator::add(const torch::Tensor& effective) {
  const torch::Tensor w = effective.detach().to(torch::kCPU, torch::kFloat64).reshape({sum_.size(0), -1});
  const torch::Tensor d = torch::cdist(w.unsqueeze(0), w.unsqueeze(0)).squeeze(0).pow(2);
  sum_ += d / (norms_.unsqueeze(0) + norms_.unsqueeze(1));
  steps_ += 1;
}

torch::Tensor FusionCostAccumulator::cost() const {
  if (steps_ == 0) fail("fusion cost: no step was recorded (search steps must be positive)");
  torch::Tensor cost = sum_ / static_cast<double>(steps_);
  cost.fill_diagonal_(0.0);
  return cost;
}

namespace {

// Average-linkage clusters of one pool.
struct PoolClusters {
  std::vector<std::vector<int64_t>> members;
  std::vector<std::vector<double>> pair_sum;  // sum of member costs between clusters

  explicit PoolClusters(const torch::Tensor& cost) {
    const int64_t n = cost.size(0);
    const torch::Tensor c = cost.to(torch::kFloat64).contiguous();
    const auto acc = c.accessor<double, 2>();
    members.resize(n);
    pair_sum.assign(n, std::vector<double>(n, 0.0));
    for (int64_t i = 0; i < n; ++i) {
      members[i] = {i};
      for (int64_t j = 0; j < n; ++j) pair_sum[i][j] = acc[i][j];
    }
  }
  int64_t size() const { return static_cast<int64_t>(members.size()); }
  double average(size_t a, size_t b) const {
    return pair_sum[a][b] / static_cast<double>(members[a].size() * members[b].size());
  }
  void merge(size_t a, size_t b) {  // a < b
    members[a].insert(members[a].end(), members[b].begin(), members[b].end());
    for (size_t k = 0; k < members.size(); ++k) {
      pair_sum[a][k] += pair_sum[b][k];
      pair_sum[k][a] = pair_sum[a][k];
    }
    members.erase(members.begin() + b);
    pair_sum.erase(pair_sum.begin() + b);
    for (auto& row : pair_sum) row.erase(row.begin() + b);
  }
  // The cheapest allowed merge: {cost, a, b}; cost = +inf when none is allowed.
  std::tuple<double, size_t, size_t> cheapest(int64_t max_size) const {
    double best = std::numeric_limits<double>::infinity();
    size_t best_a = 0, best_b = 0;
    for (size_t a = 0; a < members.size(); ++a)
      for (size_t b = a + 1; b < members.size(); ++b) {
        if (max_size > 0 && static_cast<int64_t>(members[a].size() + members[b].size()) > max_size) continue;
        const double c = average(a, b);
        if (c < best) best = c, best_a = a, best_b = b;
      }
    return {best, best_a, best_b};
  }
  std::vector<std::vector<int64_t>> groups() const {
    std::vector<std::vector<int64_t>> out = members;
    for (auto& g : out) std::sort(g.begin(), g.end());
    std::sort(out.begin(), out.end());
    return out;
  }
};

}  // namespace

Grouping group_heads(const std::vector<torch::Tensor>& costs, const GroupingOptions& options) {
  std::vector<PoolClusters> pools;
  int64_t total = 0, n_pools = 0;  // n_pools: the pools that have heads (not the keys of a sharing layer)
  for (const auto& c : costs) {
    pools.emplace_back(c);
    total += c.size(0);
    n_pools += c.size(0) > 0 ? 1 : 0;
  }
  if (n_pools == 0) fail("head grouping: no pool has any heads");
  if (options.target_total < n_pools)
    fail("a budget of ", options.target_total, " heads is below one head per pool (", n_pools, " pools)");
  if (options.target_total > total)
    fail("a budget of ", options.target_total, " heads is more than the ", total, " heads the model has");

  // Merges the globally cheapest pair among the pools `eligible` admits until the total is reached.
  auto merge_cheapest_until_target = [&](auto eligible, const std::string& too_small) {
    while (total > options.target_total) {
      double best = std::numeric_limits<double>::infinity();
      size_t best_pool = 0, best_a = 0, best_b = 0;
      for (size_t p = 0; p < pools.size(); ++p) {
        if (!eligible(pools[p])) continue;
        const auto [cost, a, b] = pools[p].cheapest(options.max_group_size);
        if (cost < best) best = cost, best_pool = p, best_a = a, best_b = b;
      }
      if (!std::isfinite(best)) fail("--max-group-size ", options.max_group_size, " is too small ", too_small);
      pools[best_pool].merge(best_a, best_b);
      total -= 1;
    }
  };
  if (options.uniform) {
    // As even as the budget allows: every pool keeps per_pool or per_pool + 1 heads,
    // and the pools that give up their extra head are those whose cheapest merge costs least.
    const int64_t per_pool = options.target_total / n_pools;
    for (auto& pool : pools) {
      if (pool.size() == 0) continue;
      if (pool.size() < per_pool) fail("even head counts: a pool has fewer than ", per_pool, " heads (--adaptive allows it)");
      while (pool.size() > per_pool + 1) {
        const auto [cost, a, b] = pool.cheapest(options.max_group_size);
        if (!std::isfinite(cost)) fail("--max-group-size ", options.max_group_size, " is too small for this budget");
        pool.merge(a, b);
        total -= 1;
      }
    }
    merge_cheapest_until_target([&](const PoolClusters& pool) { return pool.size() == per_pool + 1; },
                                "for this budget");
  } else {
    merge_cheapest_until_target([](const PoolClusters&) { return true; },
                                "to reach " + std::to_string(options.target_total) + " heads");
  }
  Grouping grouping;
  for (const auto& pool : pools) grouping.push_back(pool.groups());
  return grouping;
}

int64_t budget_heads(const ModelConfig& c, double budget) {
  if (!(budget > 0.0 && budget <= 1.0)) fail("--budget ", budget, " must be in (0, 1]");
  const int64_t full = 2 * c.n_layers * c.n_heads;
  const int64_t target = std::llround(budget * static_cast<double>(full));
  const int64_t pools = pools_with_heads(c);
  if (target < pools)
    fail("--budget ", budget, " keeps ", target, " of ", full, " heads, below one head per pool (", pools,
         " pools need at least ", static_cast<double>(pools) / full, ")");
  const int64_t have = c.layout.kv_heads();
  if (target > have)
    fail("--budget ", budget, " keeps ", target, " heads but the model has only ", have, " K/V heads (budget ",
         static_cast<double>(have) / full, "); choose a smaller budget");
  return target;
}

}  // namespace dha
