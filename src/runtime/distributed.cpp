// c10d process groups (Gloo / NCCL) behind the small Distributed interface.
#include "dha/distributed.h"

#include <cstdlib>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "dha/error.h"

namespace dha {

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Backend> group;
  torch::Device device{torch::kCPU};
  std::chrono::seconds timeout{300};
  int rank = 0, world = 1;
  int tag = 0;  // of the ring's point-to-point messages (collectives use their own)

  // Gloo's reduce-scatter is an all-reduce of a copy followed by a slice (the
  // traffic of an all-reduce and a whole-size temporary), and its all-gather
  // goes through a temporary too. On Gloo both run here instead, as rings of
  // point-to-point messages in place: N - 1 steps, each moving one shard.
  bool ring() const { return !device.is_cuda(); }

  // One ring step: sends `out` to the next rank while receiving `in` from the previous one.
  void exchange(torch::Tensor out, torch::Tensor in, const char* what) {
    tag = (tag + 1) % (1 << 30);
    std::vector<torch::Tensor> send_list{std::move(out)}, recv_list{std::move(in)};
    auto receiving = group->recv(recv_list, (rank + world - 1) % world, tag);
    auto sending = group->send(send_list, (rank + 1) % world, tag);
    wait(sending, what);
    wait(receiving, what);
  }

  // full (consumed as the accumulator) -> shard: the sum of every rank's full, this rank's slice.
  void ring_reduce_scatter(torch::Tensor& shard, torch::Tensor& full) {
    const std::vector<torch::Tensor> chunks = full.chunk(world);
    const int64_t n = shard.numel();
    // Received in pieces of at most 64 MiB of fp32: the only temporary.
    constexpr int64_t kPiece = int64_t{1} << 24;
    torch::Tensor incoming = torch::empty({std::min(n, kPiece)}, shard.options());
    for (int k = 0; k + 1 < world; ++k) {
      // Sends the chunk it summed last step, receives the previous rank's partial sum of the next.
      const int send = (rank - k - 1 + 2 * world) % world, receive = (rank - k - 2 + 2 * world) % world;
      for (int64_t offset = 0; offset < n; offset += kPiece) {
        const int64_t length = std::min(kPiece, n - offset);
        torch::Tensor piece = incoming.narrow(0, 0, length);
        exchange(chunks[send].narrow(0, offset, length), piece, "gradient reduce-scatter");
        chunks[receive].narrow(0, offset, length).add_(piece);
      }
    }
    shard.copy_(chunks[rank]);
  }

  void ring_all_gather(torch::Tensor& full, const torch::Tensor& shard) {
    const std::vector<torch::Tensor> chunks = full.chunk(world);
    if (shard.data_ptr() != chunks[rank].data_ptr()) chunks[rank].copy_(shard);
    for (int k = 0; k + 1 < world; ++k) {
      const int send = (rank - k + world) % world, receive = (rank - k - 1 + world) % world;
      exchange(chunks[send], chunks[receive], "weight all-gather");
    }
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
    } catch (const std::exception& e) {
      std::string message = e.what();
      message = message.substr(0, message.find('\n'));
      fail("distributed ", what, " failed: ", message,
           " (another rank died or stopped answering; see its log)");
    }
  }
};

Distributed::Distributed(int rank, int world, int local_rank, std::unique_ptr<Impl> impl)
    : rank_(rank), world_(world), local_rank_(local_rank), impl_(std::move(impl)) {}

Distributed::~Distributed() = default;

std::unique_ptr<Distributed> Distributed::join(const RankEnvironment& env, torch::Device device,
                                               std::chrono::seconds timeout) {
  const int world = env.world_size, rank = env.rank, local_rank = env.local_rank;
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->timeout = timeout;
  impl->rank = rank;
  impl->world = world;
  if (world == 1) return std::unique_ptr<Distributed>(new Distributed(0, 1, 0, std::move(impl)));

  const std::string& addr = env.master_addr;
  const int port = env.master_port;
  if (addr.empty() || port <= 0)
    fail("WORLD_SIZE=", world, " needs MASTER_ADDR and MASTER_PORT (set by torchrun; for Slurm export them)");
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(port);
  options.numWorkers = world;
  options.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  // torchrun's agent already serves the store on MASTER_PORT; then every rank
  // is a client and keys live under the restart attempt's prefix.
  const bool agent_store = env.agent_store;
  options.isServer = !agent_store && rank == 0;
  options.waitWorkers = false;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(addr, options);
    if (agent_store)
      store = c10::make_intrusive<c10d::PrefixStore>(
          "/worker/attempt_" + env.restart_count, store);
  } catch (const std::exception& e) {
    std::string message = e.what();
    fail("cannot reach the rendezvous store at ", addr, ":", port, ": ", message.substr(0, message.find('\n')));
  }

  try {
    if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
      impl->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nccl_options);
#else
      fail("this LibTorch has no NCCL; train on CPU or use a CUDA build of torch");
#endif
    } else {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create();
      gloo_options->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo_options);
    }
  } catch (const dha::Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string message = e.what();
    fail("cannot create the process group (rank ", rank, " of ", world, "): ", message.substr(0, message.find('\n')));
  }
  return std::unique_ptr<Distributed>(new Distributed(rank, world, local_rank, std::move(impl)));
}

std::string Distributed::backend() const {
  if (world_ == 1) return "none";
  return impl_->device.is_cuda() ? "nccl" : "gloo";
}

void Distributed::average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  if (world_ == 1) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> bucket;  // gradients of the current bucket
  int64_t bytes = 0;
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<torch::Tensor> flat{torch::cat([&] {
      std::vector<torch::Tensor> pieces;
      for (const auto& g : bucket) pieces.push_back(g.reshape({-1}));
      return pieces;
    }())};
    impl_->wait(impl_->group->allreduce(flat), "gradient all-reduce");
    flat[0].div_(world_);
    int64_t offset = 0;
    for (auto& g : bucket) {
      g.copy_(flat[0].narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    bucket.push_back(p.grad());
    bytes += p.grad().numel() * p.grad().element_size();
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

void Distributed::reduce_scatter_mean(torch::Tensor& shard, torch::Tensor& full) {
  if (full.numel() != shard.numel() * world_)
    fail("reduce-scatter: ", full.numel(), " elements do not split into ", world_, " shards of ", shard.numel());
  torch::NoGradGuard no_grad;
  if (world_ == 1) {
    shard.copy_(full);
    return;
  }
  if (impl_->ring()) impl_->ring_reduce_scatter(shard, full);
  else impl_->wait(impl_->group->_reduce_scatter_base(shard, full), "gradient reduce-scatter");
  shard.div_(world_);
}

struct Distributed::Pending::State {
  c10::intrusive_ptr<c10d::Work> work;
  Impl* impl = nullptr;
};
Distributed::Pending::Pending() = default;
Distributed::Pending::Pending(Pending&&) noexcept = default;
Distributed::Pending& Distributed::Pending::operator=(Pending&&) noexcept = default;
Distributed::Pending::~Pending() {
  // A gather still in flight when its owner goes (an exception unwinding):
  // wait for it so the buffers it writes outlive it, without throwing again.
  if (!active()) return;
  try {
    wait();
  } catch (const std::exception&) {
  }
}
bool Distributed::Pending::active() const { return state_ && state_->work; }
void Distributed::Pending::wait() {
  if (!active()) return;
  auto work = std::move(state_->work);
  state_->work.reset();
  state_->impl->wait(work, "weight all-gather");
}

Distributed::Pending Distributed::all_gather_async(torch::Tensor& full, torch::Tensor& shard) {
  if (full.numel() != shard.numel() * world_)
    fail("all-gather: ", full.numel(), " elements do not split into ", world_, " shards of ", shard.numel());
  torch::NoGradGuard no_grad;
  Pending pending;
  if (world_ == 1) {
    if (full.data_ptr() != shard.data_ptr()) full.copy_(shard);
    return pending;
  }
  if (impl_->ring()) {  // synchronous: Gloo's CPU ranks have no stream to overlap on
    impl_->ring_all_gather(full, shard);
    return pending;
  }
  pending.state_ = std::make_unique<Pending::State>();
  pending.state_->impl = impl_.get();
  pending.state_->work = impl_->group->_allgather_base(full, shard);
  return pending;
}

std::vector<double> Distributed::sum(std::vector<double> values) {
  if (world_ == 1 || values.empty()) return values;
  std::vector<torch::Tensor> t{torch::tensor(values, torch::kFloat64).to(impl_->device)};
  impl_->wait(impl_->group->allreduce(t), "all-reduce");
  const torch::Tensor cpu = t[0].cpu();
  for (size_t i = 0; i < values.size(); ++i) values[i] = cpu[i].item<double>();
  return values;
}

double Distributed::max(double value) {
  if (world_ == 1) return value;
  std::vector<torch::Tensor> t{torch::tensor({value}, torch::kFloat64).to(impl_->device)};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MAX;
  impl_->wait(impl_->group->allreduce(t, options), "all-reduce");
  return t[0].cpu().item<double>();
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors) {
  if (world_ == 1) return;
  torch::NoGradGuard no_grad;
  for (const auto& tensor : tensors) {
    std::vector<torch::Tensor> t{tensor};
    impl_->wait(impl_->group->broadcast(t), "broadcast");
  }
}

void Distributed::barrier() {
  if (world_ == 1) return;
  impl_->wait(impl_->group->barrier(), "barrier");
}

}  // namespace dha
