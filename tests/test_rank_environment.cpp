// The rank environment is parsed once, and every tool's device follows its local rank.
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "dha/convert.h"
#include "dha/error.h"
#include "dha/rank_environment.h"
#include "dha/train_job.h"

namespace {

dha::RankEnvironment parse(const std::map<std::string, std::string>& vars) {
  return dha::RankEnvironment::from([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

const dha::DeviceInventory kEightGpus{true, 8};
const dha::DeviceInventory kNoGpu{false, 0};

}  // namespace

TEST(RankEnvironment, UnsetMeansOneProcess) {
  const dha::RankEnvironment env = parse({});
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_TRUE(env.is_main());
  EXPECT_TRUE(env.master_addr.empty());
  EXPECT_EQ(env.master_port, -1);
  EXPECT_FALSE(env.agent_store);
}

TEST(RankEnvironment, ReadsTorchrunsVariables) {
  const dha::RankEnvironment env = parse({{"RANK", "11"}, {"LOCAL_RANK", "3"}, {"WORLD_SIZE", "16"},
                                          {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"},
                                          {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_EQ(env.rank, 11);
  EXPECT_EQ(env.local_rank, 3);
  EXPECT_EQ(env.world_size, 16);
  EXPECT_FALSE(env.is_main());
  EXPECT_EQ(env.master_addr, "node0");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_TRUE(env.agent_store);
  EXPECT_EQ(env.restart_count, "2");
}

TEST(RankEnvironment, BadValuesNameTheVariable) {
  auto message = [](const std::map<std::string, std::string>& vars) {
    try {
      parse(vars);
    } catch (const dha::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE=\"two\" is not an integer"), std::string::npos);
  EXPECT_NE(message({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).find("need 0 <= RANK < WORLD_SIZE"), std::string::npos);
  EXPECT_NE(message({{"LOCAL_RANK", "-1"}}).find("LOCAL_RANK"), std::string::npos);
  EXPECT_NE(message({{"MASTER_PORT", "29500x"}}).find("MASTER_PORT"), std::string::npos);
}

TEST(RankEnvironment, CudaDevicesFollowTheLocalRank) {
  const dha::RankEnvironment env = parse({{"RANK", "11"}, {"LOCAL_RANK", "3"}, {"WORLD_SIZE", "16"}});
  EXPECT_EQ(dha::resolve_device("cuda", env, kEightGpus), torch::Device(torch::kCUDA, 3));
  EXPECT_EQ(dha::resolve_device("auto", env, kEightGpus), torch::Device(torch::kCUDA, 3));
  EXPECT_EQ(dha::resolve_device("cpu", env, kEightGpus), torch::Device(torch::kCPU));
  EXPECT_EQ(dha::resolve_device("auto", env, kNoGpu), torch::Device(torch::kCPU));
  // One process per node that sees fewer GPUs than local ranks wraps around.
  EXPECT_EQ(dha::resolve_device("cuda", env, dha::DeviceInventory{true, 2}), torch::Device(torch::kCUDA, 1));
  EXPECT_THROW(dha::resolve_device("cuda", env, kNoGpu), dha::Error);
  EXPECT_THROW(dha::resolve_device("gpu", env, kEightGpus), dha::Error);
}

// Every rank of a multi-GPU conversion or training run uses its own GPU, not cuda:0.
TEST(RankEnvironment, ConversionAndTrainingPickTheLocalRanksGpu) {
  for (int local_rank : {0, 1, 5, 7}) {
    const dha::RankEnvironment env =
        parse({{"RANK", std::to_string(8 + local_rank)}, {"LOCAL_RANK", std::to_string(local_rank)}, {"WORLD_SIZE", "16"}});
    dha::ConvertOptions convert;
    convert.device = "cuda";
    EXPECT_EQ(dha::conversion_device(convert, env, kEightGpus), torch::Device(torch::kCUDA, local_rank));
    dha::TrainConfig train;
    train.device = "cuda";
    EXPECT_EQ(dha::training_device(train, env, kEightGpus), torch::Device(torch::kCUDA, local_rank));
  }
}
