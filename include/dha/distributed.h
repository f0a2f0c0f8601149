// Data parallelism on PyTorch's c10d: a process group for the rank
// environment torchrun and Slurm set (dha/rank_environment.h), Gloo on CPU and NCCL on CUDA, and the few
// collectives training needs (bucketed gradient all-reduce, scalars, broadcast).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/rank_environment.h"

namespace dha {

class Distributed {
 public:
  // World size 1: no process group, collectives are no-ops. Otherwise joins
  // the group; a peer that does not answer within `timeout` (or dies) makes
  // every collective throw dha::Error instead of hanging.
  static std::unique_ptr<Distributed> join(const RankEnvironment& env, torch::Device device,
                                           std::chrono::seconds timeout);
  ~Distributed();

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int local_rank() const { return local_rank_; }
  bool is_main() const { return rank_ == 0; }
  std::string backend() const;

  // Averages the gradients over ranks in place, flattened into buckets of at
  // most `bucket_bytes` per all-reduce.
  void average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes);
  // ZeRO's two collectives on flat buffers whose size is a multiple of the
  // world size. reduce_scatter_mean: `shard` = this rank's slice of the mean
  // of every rank's `full` (Gloo has no AVG: summed, then scaled).
  void reduce_scatter_mean(torch::Tensor& shard, torch::Tensor& full);
  // all_gather: every rank's `shard` concatenated into `full`, rank order.
  // The asynchronous form returns a handle; wait() before reading `full`.
  class Pending {
   public:
    Pending();
    Pending(Pending&&) noexcept;
    Pending& operator=(Pending&&) noexcept;
    ~Pending();
    bool active() const;
    void wait();

   private:
    friend class Distributed;
    struct State;
    std::unique_ptr<State> state_;
  };
  Pending all_gather_async(torch::Tensor& full, torch::Tensor& shard);
  void all_gather(torch::Tensor& full, torch::Tensor& shard) { all_gather_async(full, shard).wait(); }

  // Sums (max for max_*) one or several doubles over ranks.
  std::vector<double> sum(std::vector<double> values);
  double max(double value);
  // Rank 0's values to every rank, in place.
  void broadcast(const std::vector<torch::Tensor>& tensors);
  void barrier();

 private:
  struct Impl;
  Distributed(int rank, int world, int local_rank, std::unique_ptr<Impl> impl);
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dha
