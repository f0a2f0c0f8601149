// ZeRO-sharded data parallelism: every stage against the replicated run and one
// process on the combined batch (Gloo, 3 processes, so that tensors do not
// divide evenly over the ranks; clipping active), sharded checkpoints (bit-exact
// resume after a kill, re-sharding from 2 ranks onto 3, a damaged shard), a
// rank that dies, and every stage at world size 1 bit-identical to ZeRO-0.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "dha/data.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/memory_plan.h"
#include "dha/train.h"
#include "dha/training_state.h"
#include "../src/train/reshard_reader.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::run_tool;
using dha::test::TempDir;
using dha::test::ToolRun;

namespace {

// Random tokens (BOS every 16) in one train shard.
std::string token_data(const TempDir& tmp, int64_t vocab, int64_t n) {
  return dha::test::write_random_token_data(tmp.file("data"), vocab, n);
}

struct StepLine {
  double loss = 0, grad_norm = 0;
};

std::vector<StepLine> step_lines(const std::string& metrics_path) {
  std::vector<StepLine> out;
  std::istringstream in(dha::io::read_file(metrics_path));
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back({j["loss"].get<double>(), j["grad_norm"].get<double>()});
  }
  return out;
}

// Training steps logged so far in a run's metrics.jsonl (0 before it exists).
size_t step_lines_count(const std::string& out) {
  if (!fs::exists(out + "/metrics.jsonl")) return 0;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find("\"loss\"") != std::string::npos;
  return n;
}

// Runs `world` ranks of one command line (each rank's extra arguments appended); returns their results.
std::vector<ToolRun> run_ranks(int world, const std::function<std::string(int rank)>& command) {
  const int port = dha::test::free_port();
  std::vector<ToolRun> runs(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      const std::string env = "WORLD_SIZE=" + std::to_string(world) + " RANK=" + std::to_string(r) +
                              " LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                              " OMP_NUM_THREADS=1 ";
      runs[r] = run_tool(env + command(r), true);
    });
  for (auto& t : threads) t.join();
  return runs;
}

void expect_weights_near(const std::string& a_dir, const std::string& b_dir, double tolerance, const std::string& what) {
  const dha::Checkpoint a = dha::io::load_hf_dir(a_dir), b = dha::io::load_hf_dir(b_dir);
  ASSERT_EQ(a.tensors.size(), b.tensors.size()) << what;
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << what << ": " << name;
    const double diff = (t.to(torch::kFloat64) - b.tensors.at(name).to(torch::kFloat64)).abs().max().item<double>();
    EXPECT_LE(diff, tolerance) << what << ": " << name;
  }
}

void expect_weights_equal(const std::string& a_dir, const std::string& b_dir, const std::string& what) {
  const dha::Checkpoint a = dha::io::load_hf_dir(a_dir), b = dha::io::load_hf_dir(b_dir);
  for (const auto& [name, t] : a.tensors) EXPECT_TRUE(torch::equal(t, b.tensors.at(name))) << what << ": " << name;
}

// The dha-train runs below use stories260K (dim 64: its norms do not split over 3 ranks).
class ZeroCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(dha::test::shared_path("models/stories260K/stories260K.bin")))
      GTEST_SKIP() << "../shared/models/stories260K is absent";
    model_ = dha::test::shared_path("models/stories260K/stories260K.bin");
    data_ = token_data(tmp_, 512, 20000);
  }
  // 4 steps of lr 1e-3 (the tolerances below scale with them), clipping active at 0.05.
  std::string train_args(const std::string& out, int64_t batch, int zero, int64_t steps = 4) const {
    return "dha-train --model " + model_ + " --data " + data_ + " --out " + out + " --steps " + std::to_string(steps) +
           " --seq-len 32 --batch " + std::to_string(batch) + " --grad-accum 2 --lr 1e-3 --warmup 0 --clip 0.05" +
           " --device cpu --eval-docs 0 --zero " + std::to_string(zero);
  }
  TempDir tmp_;
  std::string model_, data_;
};

// Adam normalises each coordinate's update, so a gradient that is ~0 up to
// summation-order noise can move by up to lr per step in either run: 1% of
// the largest possible total update (steps * lr), as the data-parallel test.
constexpr double kAdamTolerance = 0.01 * 4 * 1e-3;

}  // namespace

TEST_F(ZeroCli, EveryStageOnThreeRanksEqualsZeroZeroAndOneProcess) {
  const ToolRun one = run_tool(train_args(tmp_.file("one"), 6, 0), true);
  ASSERT_EQ(one.code, 0) << one.out;
  const auto reference = step_lines(tmp_.file("one/metrics.jsonl"));
  ASSERT_EQ(reference.size(), 4u);
  for (const auto& line : reference) EXPECT_GT(line.grad_norm, 0.05) << "clipping must be active";
  for (int zero = 0; zero <= 3; ++zero) {
    const std::string out = tmp_.file("three-zero" + std::to_string(zero));
    const auto runs = run_ranks(3, [&](int) { return train_args(out, 2, zero); });
    for (int r = 0; r < 3; ++r) ASSERT_EQ(runs[r].code, 0) << "zero " << zero << " rank " << r << ":\n" << runs[r].out;
    const auto lines = step_lines(out + "/metrics.jsonl");
    ASSERT_EQ(lines.size(), reference.size()) << "zero " << zero;
    for (size_t i = 0; i < lines.size(); ++i) {
      EXPECT_NEAR(lines[i].loss, reference[i].loss, 1e-6 * std::abs(reference[i].loss)) << "zero " << zero << " step " << i + 1;
      EXPECT_NEAR(lines[i].grad_norm, reference[i].grad_norm, 1e-4 * reference[i].grad_norm)
          << "zero " << zero << " step " << i + 1;
    }
    expect_weights_near(tmp_.file("one/model"), out + "/model", kAdamTolerance, "zero " + std::to_string(zero));
    if (zero > 0)
      expect_weights_near(tmp_.file("three-zero0/model"), out + "/model", kAdamTolerance,
                          "zero " + std::to_string(zero) + " vs zero 0");
  }
  // The checkpoint of a sharded run: one file per rank, the manifest last.
  const auto ck = dha::load_latest_training_state(tmp_.file("three-zero2/checkpoints"));
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->shard_files.size(), 3u);
  EXPECT_EQ(ck->zero["stage"], 2);
  EXPECT_TRUE(ck->tensors.empty()) << "every trained weight is in the shards";
}

TEST_F(ZeroCli, KilledShardedRunResumesBitExactly) {
  for (const int zero : {2, 3}) {
    const std::string tag = "zero" + std::to_string(zero);
    const auto straight = run_ranks(2, [&](int) { return train_args(tmp_.file("straight-" + tag), 3, zero, 12); });
    for (const auto& r : straight) ASSERT_EQ(r.code, 0) << r.out;

    // Killed (SIGKILL, both ranks) once a checkpoint past step 2 exists, then resumed.
    const std::string out = tmp_.file("killed-" + tag);
    const int port = dha::test::free_port();
    std::vector<pid_t> pids;
    for (int r = 0; r < 2; ++r) {
      const pid_t pid = fork();
      if (pid == 0) {
        const std::string command = "WORLD_SIZE=2 RANK=" + std::to_string(r) +
                                    " LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                                    " OMP_NUM_THREADS=1 exec " + std::string(DHA_TOOLS_DIR) + "/" +
                                    train_args(out, 3, zero, 12) + " --checkpoint-every 1 >/dev/null 2>&1";
        execl("/bin/sh", "sh", "-c", command.c_str(), nullptr);
        _exit(127);
      }
      pids.push_back(pid);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!fs::exists(out + "/checkpoints/step-000000003") && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const pid_t pid : pids) kill(pid, SIGKILL);
    for (const pid_t pid : pids) waitpid(pid, nullptr, 0);
    const auto ck = dha::load_latest_training_state(out + "/checkpoints");
    ASSERT_TRUE(ck.has_value()) << tag;
    ASSERT_LT(ck->step, 12) << tag << ": the run finished before it was killed";
    const auto resumed = run_ranks(2, [&](int) { return train_args(out, 3, zero, 12) + " --checkpoint-every 1 --resume"; });
    for (const auto& r : resumed) ASSERT_EQ(r.code, 0) << r.out;
    expect_weights_equal(tmp_.file("straight-" + tag + "/model"), out + "/model", tag + " killed at step " + std::to_string(ck->step));
    for (const auto& entry : fs::directory_iterator(out + "/checkpoints"))  // what the kill left staging is gone
      EXPECT_EQ(entry.path().filename().string().find(".partial"), std::string::npos) << entry.path();
    const auto a = step_lines(tmp_.file("straight-" + tag + "/metrics.jsonl")), b = step_lines(out + "/metrics.jsonl");
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].loss, b[i].loss) << tag << " step " << i + 1;
  }
}

TEST_F(ZeroCli, ResumingTwoRanksOnThreeMatchesContinuingOnTwo) {
  // Global batch 6 either way: 2 ranks x 3, or 3 ranks x 2.
  const auto two = run_ranks(2, [&](int) { return train_args(tmp_.file("two"), 3, 1); });
  for (const auto& r : two) ASSERT_EQ(r.code, 0) << r.out;
  const auto first = run_ranks(2, [&](int) { return train_args(tmp_.file("moved"), 3, 1) + " --stop-after 2"; });
  for (const auto& r : first) ASSERT_EQ(r.code, 0) << r.out;
  const auto moved = run_ranks(3, [&](int) { return train_args(tmp_.file("moved"), 2, 1) + " --resume"; });
  for (const auto& r : moved) ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(moved[0].out.find("re-sharded from 2 ranks"), std::string::npos) << moved[0].out;
  expect_weights_near(tmp_.file("two/model"), tmp_.file("moved/model"), kAdamTolerance, "2 -> 3 ranks");

  // Another global batch is refused, naming what to keep equal; so is --zero 0 on a sharded checkpoint.
  const auto other = run_ranks(3, [&](int) { return train_args(tmp_.file("moved"), 3, 1) + " --resume"; });
  EXPECT_EQ(other[0].code, 1);
  EXPECT_NE(other[0].out.find("keep ranks x --batch x --grad-accum equal"), std::string::npos) << other[0].out;
  const ToolRun replicated = run_tool(train_args(tmp_.file("moved"), 6, 0) + " --resume", true);
  EXPECT_EQ(replicated.code, 1);
  EXPECT_NE(replicated.out.find("resume it with --zero 1, 2 or 3"), std::string::npos) << replicated.out;
}

TEST_F(ZeroCli, DamagedShardIsRefusedByNameAndThePreviousCheckpointUsed) {
  const std::string out = tmp_.file("damaged");
  const auto first = run_ranks(2, [&](int) { return train_args(out, 3, 2, 6) + " --checkpoint-every 2 --stop-after 4"; });
  for (const auto& r : first) ASSERT_EQ(r.code, 0) << r.out;
  const std::string shard = out + "/checkpoints/step-000000004/rank-00001-of-00002.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) - 3));
    f.put('\x55');
  }
  const auto resumed = run_ranks(2, [&](int) { return train_args(out, 3, 2, 6) + " --checkpoint-every 2 --resume"; });
  for (const auto& r : resumed) ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(resumed[1].out.find("rank-00001-of-00002.safetensors: checksum"), std::string::npos) << resumed[1].out;
  EXPECT_NE(resumed[0].out.find("resumed from " + out + "/checkpoints/step-000000002"), std::string::npos)
      << resumed[0].out;
}

TEST_F(ZeroCli, ADeadRankFailsTheOthersWithAClearErrorWithinTheTimeout) {
  for (const int zero : {2, 3}) {
    const std::string out = tmp_.file("dead" + std::to_string(zero));
    const int port = dha::test::free_port();
    const std::string env = "WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                            " OMP_NUM_THREADS=1 ";
    const std::string args = train_args(out, 3, zero, 100000) + " --dist-timeout 10";
    const pid_t victim = fork();
    if (victim == 0) {
      const std::string command = env + "RANK=1 exec " + std::string(DHA_TOOLS_DIR) + "/" + args + " >/dev/null 2>&1";
      execl("/bin/sh", "sh", "-c", command.c_str(), nullptr);
      _exit(127);
    }
    ToolRun survivor;
    const auto start = std::chrono::steady_clock::now();
    std::thread rank0([&] { survivor = run_tool(env + "RANK=0 " + args, true); });
    // Killed mid-run, once training has written a few steps.
    const auto deadline = start + std::chrono::seconds(120);
    while (step_lines_count(out) < 3 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto killed_at = std::chrono::steady_clock::now();
    kill(victim, SIGKILL);
    waitpid(victim, nullptr, 0);
    rank0.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
    EXPECT_EQ(survivor.code, 1) << survivor.out;
    EXPECT_LT(seconds, 10 + 20) << "zero " << zero << ": the survivor must fail within --dist-timeout";
    EXPECT_NE(survivor.out.find("another rank died or stopped answering"), std::string::npos) << survivor.out;
  }
}

TEST(Zero, AtWorldSizeOneEveryStageIsBitIdenticalToReplicated) {
  // One process: the collectives are copies, so stages 1-3 must compute what
  // ZeRO-0 computes bit for bit (stage 3 also recomputes every layer).
  TempDir tmp;
  const std::string data = token_data(tmp, 61, 4000);
  for (const bool tied : {false, true}) {
    std::vector<dha::TensorMap> finals;
    for (int zero = 0; zero <= 3; ++zero) {
      dha::TrainConfig c;
      c.steps = 5;
      c.micro_batch = 3;
      c.grad_accum = 2;
      c.seq_len = 12;
      c.lr = 3e-3;
      c.warmup = 2;
      c.grad_clip = 0.5;
      c.weight_decay = 0.1;
      c.device = "cpu";
      c.zero = zero;
      dha::LanguageModelTask task(dha::make_random_model(dha::test::tiny_dha_config(tied), 5), std::nullopt, 0, 1);
      const dha::TokenDataset dataset(data, "train");
      dha::SequenceSampler sampler(dataset, c.seq_len, c.seed);
      auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
      dha::TrainRun run;
      run.out_dir = tmp.file("run-" + std::to_string(tied) + "-" + std::to_string(zero));
      run.show_progress = false;
      run.meta = {{"model_config", "tiny"}};
      fs::create_directories(run.out_dir);
      dha::train(task, sampler, c, *dist, run);
      finals.push_back(task.model()->state());
      for (const auto& [name, t] : finals.back()) ASSERT_GT(t.numel(), 0) << name << ": the model is whole after training";
    }
    for (int zero = 1; zero <= 3; ++zero)
      for (const auto& [name, t] : finals[0])
        EXPECT_TRUE(torch::equal(t, finals[zero].at(name))) << "tied " << tied << " zero " << zero << ": " << name;
  }
}

TEST(Zero, ReshardingReadsOnlyTheOldShardsThatCoverARanksSlice) {
  // Units of 10 and 3 elements written by 2 ranks (slices of 5 and 2), read by 3 (slices of 4 and 1).
  const nlohmann::json zero = {{"stage", 2},
                               {"world_size", 2},
                               {"units", {{{"name", "a"}, {"numel", 10}}, {{"name", "b"}, {"numel", 3}}}}};
  EXPECT_EQ(dha::train_detail::shards_to_read(zero, 0, 3), (std::vector<int>{0}));     // a[0, 4), b[0, 1)
  EXPECT_EQ(dha::train_detail::shards_to_read(zero, 1, 3), (std::vector<int>{0, 1}));  // a[4, 8), b[1, 2)
  EXPECT_EQ(dha::train_detail::shards_to_read(zero, 2, 3), (std::vector<int>{1}));     // a[8, 10), b[2, 3)
  EXPECT_EQ(dha::train_detail::shards_to_read(zero, 1, 2), (std::vector<int>{1}));     // the same world: its own
}

TEST(Zero, PlanShardsTheTrainedStateOverTheRanks) {
  dha::MemoryPlanInputs in;
  in.model = dha::test::tiny_config();
  in.micro_batch = 2;
  in.seq_len = 16;
  in.world_size = 8;
  auto category = [](const dha::MemoryPlan& plan, const std::string& name) {
    for (const auto& c : plan.categories)
      if (c.name == name) return c.bytes;
    return int64_t{-1};
  };
  const int64_t n = in.model.parameter_count();
  const dha::MemoryPlan replicated = dha::plan_memory(in);
  EXPECT_EQ(category(replicated, "optimizer state"), 8 * n);
  in.zero = 1;
  const dha::MemoryPlan one = dha::plan_memory(in);
  EXPECT_EQ(category(one, "optimizer state"), (8 * n + 7) / 8);
  EXPECT_GT(category(one, "gradients"), 4 * n);
  in.zero = 2;
  const dha::MemoryPlan two = dha::plan_memory(in);
  EXPECT_LT(category(two, "gradients"), 4 * n);
  EXPECT_EQ(category(two, "weights"), category(replicated, "weights"));
  in.zero = 3;
  const dha::MemoryPlan three = dha::plan_memory(in);
  EXPECT_LT(category(three, "weights"), category(replicated, "weights"));
  EXPECT_LT(three.total(), two.total());
  EXPECT_LT(two.total(), one.total());
  EXPECT_LT(one.total(), replicated.total());
}

TEST(ZeroConvert, SearchAndFusionShardedOnTwoRanksMatchOneProcess) {
  DHA_REQUIRE_SHARED("models/stories260K/tok512.bin");  // the tiny model's tokenizer
  TempDir tmp;
  dha::test::save_tiny_model_with_tokenizer(tmp.file("model"));
  dha::io::write_file_atomic(tmp.file("calib.txt"), dha::test::tiny_calibration_text());
  auto args = [&](const std::string& out, int64_t batch, int zero) {
    return "dha-convert --model " + tmp.file("model") + " --calib " + tmp.file("calib.txt") + " --out " + out +
           " --budget 0.5 --search-steps 4 --search-average 2 --fusion-steps 4 --seq-len 16 --device cpu --batch " +
           std::to_string(batch) + " --zero " + std::to_string(zero) +
           // Alignment's rotations come from a probe batch of --batch sequences, which differs between the
           // runs compared (the function would agree, the weights not): fused as they are.
           " --no-align";
  };
  const ToolRun one = run_tool(args(tmp.file("one"), 4, 0), true);
  ASSERT_EQ(one.code, 0) << one.out;
  const auto a = nlohmann::json::parse(dha::io::read_file(tmp.file("one/report.json")));
  for (const int zero : {2, 3}) {
    const std::string out = tmp.file("two-zero" + std::to_string(zero));
    const auto two = run_ranks(2, [&](int) { return args(out, 2, zero); });
    for (const auto& r : two) ASSERT_EQ(r.code, 0) << r.out;
    // The same grouping, and fused weights within the Adam tolerance of 4 fusion steps.
    const auto b = nlohmann::json::parse(dha::io::read_file(out + "/report.json"));
    EXPECT_EQ(a["layout"], b["layout"]) << "zero " << zero;
    expect_weights_near(tmp.file("one"), out, 0.02 * 4 * 1e-3 * 10, "dha-convert --zero " + std::to_string(zero));
  }
  dha::test::expect_one_error_line(args(tmp.file("four"), 2, 4), "is not 0, 1, 2 or 3");
}
