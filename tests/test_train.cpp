// The training loop: exact resume, NaN guard, checkpoint integrity under
// SIGKILL, a 2-process Gloo run against one process with the combined batch,
// dha-tokenize, and dha-train's bad-input errors; the loop's metrics log and
// MFU table on their own.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "dha/data.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/safetensors.h"
#include "dha/train.h"
#include "dha/training_state.h"
#include "../src/train/metrics_log.h"
#include "../src/train/mfu.h"
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

std::vector<double> losses(const std::string& metrics_path) { return dha::test::metrics_losses(metrics_path); }

dha::TrainConfig small_config(int64_t steps) { return dha::test::small_train_config(steps, 12); }

dha::TrainResult run_library(const std::string& out, const std::string& data_dir, const dha::TrainConfig& config,
                             bool resume) {
  dha::LanguageModelTask task(dha::make_random_model(dha::test::tiny_dha_config(), 5), std::nullopt, 0, 1);
  const dha::TokenDataset data(data_dir, "train");
  dha::SequenceSampler sampler(data, config.seq_len, config.seed);
  auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
  dha::TrainRun run;
  run.out_dir = out;
  run.resume = resume;
  run.show_progress = false;
  run.meta = {{"model_config", "tiny"}};
  fs::create_directories(out);
  dha::TrainResult r = dha::train(task, sampler, config, *dist, run);
  return r;
}

dha::TensorMap final_tensors(const std::string& out) {
  const auto ck = dha::load_latest_training_state(out + "/checkpoints");
  return ck ? ck->tensors : dha::TensorMap{};
}

class NanAtStep : public dha::LanguageModelTask {
 public:
  NanAtStep(int64_t bad_step)
      : LanguageModelTask(dha::make_random_model(dha::test::tiny_config(), 1), std::nullopt, 0, 1), bad_step_(bad_step) {}
  torch::Tensor loss(const torch::Tensor& batch, dha::StepScalars& m) override {
    torch::Tensor l = LanguageModelTask::loss(batch, m);
    return ++calls_ > 2 * (bad_step_ - 1) ? l * std::nan("") : l;  // 2 micro-steps per step
  }

 private:
  int64_t bad_step_, calls_ = 0;
};

}  // namespace

TEST(Train, ResumeIsBitExact) {
  TempDir tmp;
  const std::string data = token_data(tmp, 61, 4000);
  const dha::TrainResult whole = run_library(tmp.file("whole"), data, small_config(20), false);
  EXPECT_EQ(whole.steps, 20);

  dha::TrainConfig first = small_config(20);
  first.stop_after = 10;
  const dha::TrainResult half = run_library(tmp.file("split"), data, first, false);
  EXPECT_TRUE(half.stopped_early);
  EXPECT_EQ(half.steps, 10);
  const dha::TrainResult rest = run_library(tmp.file("split"), data, small_config(20), true);
  EXPECT_EQ(rest.steps, 20);

  const auto a = losses(tmp.file("whole/metrics.jsonl")), b = losses(tmp.file("split/metrics.jsonl"));
  ASSERT_EQ(a.size(), 20u);
  EXPECT_EQ(a, b);  // identical, not close
  const auto wa = final_tensors(tmp.file("whole")), wb = final_tensors(tmp.file("split"));
  ASSERT_FALSE(wa.empty());
  for (const auto& [name, t] : wa) EXPECT_TRUE(torch::equal(t, wb.at(name))) << name;
}

TEST(Train, PriorTokensContinueTheScheduleTheyBegan) {
  TempDir tmp;
  const std::string data = token_data(tmp, 61, 4000);
  dha::TrainConfig config = small_config(8);
  const int64_t tokens_per_step = config.micro_batch * config.grad_accum * config.seq_len;
  config.prior_tokens = 6 * tokens_per_step;  // as if a conversion had trained 6 steps of the schedule
  run_library(tmp.file("rest"), data, config, false);
  std::vector<double> lrs;
  std::istringstream in(dha::io::read_file(tmp.file("rest/metrics.jsonl")));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("lr")) lrs.push_back(j["lr"].get<double>());
  }
  ASSERT_EQ(lrs.size(), 8u);
  dha::LrSchedule whole;  // the one schedule over prior and this run's 8 steps, warmup 3
  whole.warmup_steps = 3;
  whole.total_steps = 14;
  for (int64_t s = 0; s < 8; ++s) {
    const double ramp = s < 3 ? (s + 1) / 3.0 : 1.0;  // this run's fresh optimizer still warms up
    EXPECT_NEAR(lrs[s], config.lr * ramp * whole.factor(s + 6), 1e-12) << s;
  }
  EXPECT_LT(lrs[3], 0.9 * config.lr);  // after its warmup it is well below the peak a restart would reach
}

TEST(Train, ResumeWithDifferentOptionsIsRefused) {
  TempDir tmp;
  const std::string data = token_data(tmp, 61, 2000);
  dha::TrainConfig first = small_config(8);
  first.stop_after = 4;
  run_library(tmp.file("run"), data, first, false);
  dha::TrainConfig changed = small_config(8);
  changed.lr = 1e-2;
  dha::test::expect_one_line_error([&] { run_library(tmp.file("run"), data, changed, true); },
                                   {"the training options differ from the checkpoint's", "\"lr\":0.01",
                                    "resume with the same options"});
}

TEST(Train, NanLossStopsWithAClearErrorAndKeepsTheLastCheckpoint) {
  TempDir tmp;
  const std::string data = token_data(tmp, 61, 2000);
  NanAtStep task(6);
  const dha::TokenDataset dataset(data, "train");
  dha::TrainConfig config = small_config(10);
  config.checkpoint_every = 2;
  dha::SequenceSampler sampler(dataset, config.seq_len, config.seed);
  auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
  dha::TrainRun run;
  run.out_dir = tmp.file("out");
  run.show_progress = false;
  fs::create_directories(run.out_dir);
  try {
    dha::train(task, sampler, config, *dist, run);
    FAIL() << "expected a non-finite loss error";
  } catch (const dha::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("non-finite loss at step 6"), std::string::npos) << message;
    EXPECT_NE(message.find("step-000000004"), std::string::npos) << message;
  }
  const auto ck = dha::load_latest_training_state(run.out_dir + "/checkpoints");
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, 4);
  for (const auto& [name, t] : ck->tensors) EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
}

TEST(TrainingState, DamagedNewestIsSkippedForTheLastGoodOne) {
  TempDir tmp;
  dha::TrainingState ck;
  ck.tensors["w"] = torch::ones({4});
  ck.optimizer["exp_avg.w"] = torch::zeros({4});
  ck.meta = {{"x", 1}};
  ck.step = 1;
  dha::save_training_state(tmp.path(), ck, 3);
  ck.step = 2;
  const std::string second = dha::save_training_state(tmp.path(), ck, 3);
  std::string bytes = dha::io::read_file(second + "/tensors.safetensors");
  bytes[bytes.size() - 1] ^= 0x40;
  dha::io::write_file_atomic(second + "/tensors.safetensors", bytes);
  const auto latest = dha::load_latest_training_state(tmp.path());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 1);
  // keep = 3: older ones are pruned.
  for (int step = 3; step <= 6; ++step) ck.step = step, dha::save_training_state(tmp.path(), ck, 3);
  int dirs = 0;
  for (const auto& e : fs::directory_iterator(tmp.path())) dirs += e.is_directory();
  EXPECT_EQ(dirs, 3);
}

TEST(TrainMetricsLog, AResumedRunDropsTheLinesAfterItsCheckpoint) {
  TempDir tmp;
  const std::string path = tmp.file("metrics.jsonl");
  {
    dha::train_detail::MetricsLog log(path, true, std::nullopt);
    for (int64_t step = 1; step <= 4; ++step) {
      dha::train_detail::StepRecord record;
      record.step = step;
      record.loss = 1.0 / step;
      record.task_metrics["lm_loss"] = 2.0;
      log.write_step(record);
    }
    log.write_eval({4, 0, 1.5, 10});
  }
  std::ofstream(path, std::ios::app) << "{\"step\": 5, \"lo";  // a torn line of a killed run
  dha::train_detail::MetricsLog resumed(path, true, int64_t{2});
  resumed.write_eval({2, 0, 1.25, 10});
  std::vector<nlohmann::json> lines;
  std::istringstream in(dha::io::read_file(path));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1]["step"], 2);
  EXPECT_EQ(lines[1]["lm_loss"], 2.0);
  EXPECT_FALSE(lines[1].contains("mfu")) << "no MFU without a known peak";
  EXPECT_EQ(lines[2]["event"], "eval");
  EXPECT_EQ(lines[2]["eval_nll"], 1.25);
  // Another rank writes nothing, not even the file.
  dha::train_detail::MetricsLog other(tmp.file("other.jsonl"), false, std::nullopt);
  other.write_eval({1, 0, 1.0, 1});
  EXPECT_FALSE(fs::exists(tmp.file("other.jsonl")));
}

TEST(TrainMfu, KnownGpusByNameAndNoneOnACpu) {
  EXPECT_EQ(dha::train_detail::peak_flops_of("NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(dha::train_detail::peak_flops_of("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(dha::train_detail::peak_flops_of("Some Future GPU"), 0.0);
  const dha::ModelConfig config = dha::test::tiny_config();
  const double weights = static_cast<double>(config.parameter_count() - config.vocab_size * config.dim);
  EXPECT_DOUBLE_EQ(dha::train_detail::training_flops_per_token(config, 16),
                   6 * weights + 6.0 * config.n_layers * config.n_heads * config.head_dim * 16);
  const dha::train_detail::MfuMeter cpu(torch::kCPU, config, 16, 1);
  EXPECT_FALSE(cpu.mfu(1000.0).has_value());
}

// The CLI-level tests below use stories260K and its tokenizer.
class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(dha::test::shared_path("models/stories260K/stories260K.bin")))
      GTEST_SKIP() << "../shared/models/stories260K is absent";
    model_ = dha::test::shared_path("models/stories260K/stories260K.bin");
    tokenizer_ = dha::test::shared_path("models/stories260K/tok512.bin");
    std::string text;
    for (int i = 0; i < 60; ++i)
      text += "Once upon a time, there was a little dog named Max number " + std::to_string(i) +
              ". Max liked to run in the park with his friend.\n\n";
    dha::io::write_file_atomic(tmp_.file("text.txt"), text);
    const ToolRun r = run_tool("dha-tokenize --tokenizer " + tokenizer_ + " --out " + tmp_.file("data") + " " +
                                   tmp_.file("text.txt"),
                               true);
    ASSERT_EQ(r.code, 0) << r.out;
  }
  std::string train_args(const std::string& out, int64_t batch, int64_t steps = 4, int64_t seq_len = 32) const {
    return "dha-train --model " + model_ + " --data " + tmp_.file("data") + " --out " + out + " --steps " +
           std::to_string(steps) + " --seq-len " + std::to_string(seq_len) + " --batch " + std::to_string(batch) +
           " --lr 1e-3 --device cpu --eval-docs 0";
  }
  TempDir tmp_;
  std::string model_, tokenizer_;
};

TEST_F(TrainCli, TokenizeWritesShardsAndMetadata) {
  const auto meta = nlohmann::json::parse(dha::io::read_file(tmp_.file("data/data.json")));
  EXPECT_EQ(meta["vocab_size"], 512);
  EXPECT_EQ(meta["train"]["docs"], 60);
  const dha::TokenDataset data(tmp_.file("data"), "train");
  EXPECT_EQ(data.size(), meta["train"]["tokens"].get<int64_t>());
  EXPECT_EQ(data.documents(1, 0).size(), 60u);
  // With a held-out split: the last 10% of the documents.
  const ToolRun r = run_tool("dha-tokenize --tokenizer " + tokenizer_ + " --heldout 0.1 --out " + tmp_.file("d2") +
                                 " " + tmp_.file("text.txt"),
                             true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(dha::TokenDataset(tmp_.file("d2"), "heldout").documents(1, 0).size(), 6u);
}

TEST_F(TrainCli, TokenizeCanTrainASentencepieceVocab) {
  const ToolRun r = run_tool("dha-tokenize --train-vocab 300 --out " + tmp_.file("sp") + " " + tmp_.file("text.txt"), true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(tmp_.file("sp/tokenizer.model")));
  EXPECT_EQ(dha::TokenDataset(tmp_.file("sp"), "train").vocab_size(), 300);
}

TEST_F(TrainCli, TwoProcessGlooEqualsOneProcessWithTheCombinedBatch) {
  const ToolRun one = run_tool(train_args(tmp_.file("one"), 4), true);
  ASSERT_EQ(one.code, 0) << one.out;
  const int port = dha::test::free_port();
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " LOCAL_RANK=0 ";
  ToolRun rank1;
  std::thread second([&] { rank1 = run_tool(env + "RANK=1 " + train_args(tmp_.file("two"), 2), true); });
  const ToolRun rank0 = run_tool(env + "RANK=0 " + train_args(tmp_.file("two"), 2), true);
  second.join();
  ASSERT_EQ(rank0.code, 0) << rank0.out;
  ASSERT_EQ(rank1.code, 0) << rank1.out;

  const auto a = losses(tmp_.file("one/metrics.jsonl")), b = losses(tmp_.file("two/metrics.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * std::abs(a[i])) << "step " << i + 1;
  const dha::Checkpoint wa = dha::io::load_hf_dir(tmp_.file("one/model"));
  const dha::Checkpoint wb = dha::io::load_hf_dir(tmp_.file("two/model"));
  // Adam normalises each coordinate's update, so a gradient that is ~0 up to
  // summation-order noise can move by up to lr per step in either run: the
  // tolerance is 1% of the largest possible total update (steps * lr).
  const double tolerance = 0.01 * 4 * 1e-3;
  for (const auto& [name, t] : wa.tensors)
    EXPECT_TRUE(torch::allclose(t, wb.tensors.at(name), 0.0, tolerance))
        << name << " max abs diff " << (t - wb.tensors.at(name)).abs().max().item<double>();

  // A checkpoint of 2 processes does not resume in 1.
  const ToolRun resume = run_tool(train_args(tmp_.file("two"), 2) + " --resume", true);
  EXPECT_EQ(resume.code, 1);
  EXPECT_NE(resume.out.find("written by a run of 2 processes"), std::string::npos) << resume.out;
}

TEST_F(TrainCli, KillingDuringCheckpointWritesNeverCorruptsTheLastCheckpoint) {
  const std::string out = tmp_.file("killed");
  const std::string command =
      std::string(DHA_TOOLS_DIR) + "/" + train_args(out, 2, 100000) + " --checkpoint-every 1 --keep 2";
  for (int round = 0; round < 4; ++round) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string resume = round > 0 ? " --resume" : "";
      execl("/bin/sh", "sh", "-c", ("exec " + command + resume + " >/dev/null 2>&1").c_str(), nullptr);
      _exit(127);
    }
    // Let it write a few checkpoints, then kill it at an arbitrary moment.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500 + 370 * round));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    const auto ck = dha::load_latest_training_state(out + "/checkpoints");
    ASSERT_TRUE(ck.has_value()) << "round " << round;
    EXPECT_GT(ck->step, 0);
    EXPECT_EQ(ck->tensors.count("model.norm.weight"), 1u);
  }
}

TEST_F(TrainCli, SigtermSavesACheckpointAndResumeFinishes) {
  const std::string out = tmp_.file("term");
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string command = std::string(DHA_TOOLS_DIR) + "/" + train_args(out, 2, 100000);
    execl("/bin/sh", "sh", "-c", ("exec " + command + " >/dev/null 2>&1").c_str(), nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  const auto ck = dha::load_latest_training_state(out + "/checkpoints");
  ASSERT_TRUE(ck.has_value());
  EXPECT_GT(ck->step, 0);
}

TEST_F(TrainCli, BadInputEachGivesOneClearError) {
  const auto expect_error = dha::test::expect_one_error_line;
  // Empty data directory.
  fs::create_directories(tmp_.file("empty"));
  expect_error("dha-train --model " + model_ + " --data " + tmp_.file("empty") + " --out " + tmp_.file("o1") + " --steps 1",
               "no train-*.tok shards");
  // Vocab larger than the model's.
  if (fs::exists(dha::test::shared_path("models/llama2-tokenizer/tokenizer.model"))) {
    ASSERT_EQ(run_tool("dha-tokenize --tokenizer " + dha::test::shared_path("models/llama2-tokenizer/tokenizer.model") +
                           " --out " + tmp_.file("big") + " " + tmp_.file("text.txt"),
                       true).code, 0);
    expect_error("dha-train --model " + model_ + " --data " + tmp_.file("big") + " --out " + tmp_.file("o2") + " --steps 1",
                 "is larger than the model's (512)");
  }
  // Unknown recipe key.
  dha::io::write_file_atomic(tmp_.file("recipe.json"), R"({"lr": 1e-4, "learning_rate": 3})");
  expect_error("dha-train --model " + model_ + " --data " + tmp_.file("data") + " --out " + tmp_.file("o3") +
                   " --config " + tmp_.file("recipe.json"),
               "unknown key \"learning_rate\"");
  // Data shorter than one sequence.
  dha::io::write_file_atomic(tmp_.file("short.txt"), "A short story.\n");
  ASSERT_EQ(run_tool("dha-tokenize --tokenizer " + tokenizer_ + " --out " + tmp_.file("short") + " " + tmp_.file("short.txt"),
                     true).code, 0);
  std::string short_data = train_args(tmp_.file("o4"), 2);
  short_data.replace(short_data.find(tmp_.file("data")), tmp_.file("data").size(), tmp_.file("short"));
  expect_error(short_data, "shorter than one sequence of 32");
  // A checkpoint of a different model.
  ASSERT_EQ(run_tool(train_args(tmp_.file("o5"), 2), true).code, 0);
  dha::ModelConfig other_config = dha::test::tiny_config();
  other_config.vocab_size = 512;
  other_config.max_seq_len = 64;
  dha::io::save_hf_dir(tmp_.file("other"), dha::test::random_checkpoint(other_config, 1), dha::io::DirSaveOptions{});
  std::string resume_other = train_args(tmp_.file("o5"), 2) + " --resume";
  resume_other.replace(resume_other.find(model_), model_.size(), tmp_.file("other") + " --tokenizer " + tokenizer_);
  expect_error(resume_other, "the checkpoint is of a different model");
  // An existing output directory without --resume/--force.
  expect_error(train_args(tmp_.file("o5"), 2), "already exists");
}

TEST_F(TrainCli, FromScratchPretrainsANewModelOfAnyLayout) {
  // A small model with a decoupled layout; the vocab comes from the data.
  dha::io::write_file_atomic(tmp_.file("scratch.json"), R"({
    "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_seq_len": 64, "tied_embeddings": true,
    "dha": {"k_map": [[0, 0, 1, 1], [0, 1, 2, 0]], "v_map": [[0, 1, 0, 1], [0, 0, 0, 0]]}})");
  const ToolRun r = run_tool("dha-train --from-scratch " + tmp_.file("scratch.json") + " --data " + tmp_.file("data") +
                                 " --out " + tmp_.file("scratch") + " --steps 6 --seq-len 32 --batch 4 --lr 3e-3 --device cpu",
                             true);
  ASSERT_EQ(r.code, 0) << r.out;
  const dha::Checkpoint ck = dha::io::load_hf_dir(tmp_.file("scratch/model"));
  EXPECT_EQ(ck.config.vocab_size, 512);
  EXPECT_EQ(ck.config.layout.n_k_heads(1), 3);
  EXPECT_EQ(ck.config.layout.n_v_heads(1), 1);
  EXPECT_TRUE(fs::exists(tmp_.file("scratch/model/tokenizer.bin")));  // the data's tokenizer
  const auto l = losses(tmp_.file("scratch/metrics.jsonl"));
  ASSERT_EQ(l.size(), 6u);
  EXPECT_NEAR(l.front(), std::log(512.0), 0.3);  // a fresh model starts near uniform
  EXPECT_LT(l.back(), l.front());
}

TEST_F(TrainCli, TeacherAddsAKlTermThatIsZeroForAnIdenticalStudent) {
  const ToolRun r = run_tool(train_args(tmp_.file("distil"), 2, 1) + " --teacher " + model_, true);
  ASSERT_EQ(r.code, 0) << r.out;
  std::istringstream in(dha::io::read_file(tmp_.file("distil/metrics.jsonl")));
  std::string line;
  bool seen = false;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("kl")) continue;
    seen = true;
    EXPECT_NEAR(j["kl"].get<double>(), 0.0, 1e-6);  // step 1: student == teacher
    EXPECT_NEAR(j["loss"].get<double>(), j["lm_loss"].get<double>(), 1e-5);
  }
  EXPECT_TRUE(seen);
}
