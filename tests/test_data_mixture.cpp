// Weighted data mixtures (dha/data.h SequenceSampler over MixtureSource;
// dha-train --data DIR=WEIGHT): each source's exact share of every period,
// evenly interleaved, each source in its own seeded order; one source is the
// one-source sampler; a resumed mixture run is bit-exact; the mixture is in
// metrics.jsonl and each source's cursor in the checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "dha/data.h"
#include "dha/distributed.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/rank_environment.h"
#include "dha/train.h"
#include "dha/train_job.h"
#include "dha/training_state.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::TempDir;

namespace {

// A shard whose every token names its source: ids in [base, base + 10).
std::string source_data(const TempDir& tmp, const std::string& name, int32_t base, int64_t n) {
  const std::string dir = tmp.file(name);
  fs::create_directories(dir);
  std::vector<int32_t> tokens;
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < n; ++i) {
    if (i % 16 == 0) starts.push_back(i);
    tokens.push_back(i % 16 == 0 ? 1 : base + static_cast<int32_t>(i % 10));
  }
  dha::write_token_shard(dir + "/train-00000.tok", tokens, 61, starts, {dha::FirstToken::kBos, 1});
  return dir;
}

int source_of(const torch::Tensor& sequence) {
  const int64_t token = sequence[1].item<int64_t>() == 1 ? sequence[2].item<int64_t>() : sequence[1].item<int64_t>();
  return static_cast<int>((token - 3) / 20);  // bases 3, 23, 43
}

}  // namespace

TEST(DataMixture, OneSourceIsTheOneSourceSampler) {
  TempDir tmp;
  const dha::TokenDataset data(source_data(tmp, "a", 3, 5000), "train");
  dha::SequenceSampler plain(data, 16, 7), mixed(std::vector<dha::MixtureSource>{{&data, 2.5}}, 16, 7);
  EXPECT_EQ(plain.sequences_per_epoch(), mixed.sequences_per_epoch());
  for (int64_t offset : {0, 5, 300, 311})  // 311: across an epoch
    EXPECT_TRUE(torch::equal(plain.batch({0, 0}, offset, 7), mixed.batch({0, 0}, offset, 7))) << offset;
}

TEST(DataMixture, EverySourceGetsItsShareEvenlyInItsOwnOrder) {
  TempDir tmp;
  const dha::TokenDataset a(source_data(tmp, "a", 3, 20000), "train"), b(source_data(tmp, "b", 23, 3000), "train"),
      c(source_data(tmp, "c", 43, 9000), "train");
  dha::SequenceSampler sampler({{&a, 6.0}, {&b, 3.0}, {&c, 1.0}}, 8, 11);
  EXPECT_EQ(sampler.sequences_per_epoch(), dha::kMixturePeriod);
  EXPECT_EQ(sampler.source_share(0), 6000);
  EXPECT_EQ(sampler.source_share(1), 3000);
  EXPECT_EQ(sampler.source_share(2), 1000);
  const torch::Tensor batch = sampler.batch({0, 0}, 0, 2 * dha::kMixturePeriod);
  std::vector<int64_t> counts(3, 0);
  std::vector<int64_t> last(3, -1), widest_gap(3, 0);
  for (int64_t i = 0; i < batch.size(0); ++i) {
    const int s = source_of(batch[i]);
    ASSERT_GE(s, 0);
    ASSERT_LT(s, 3);
    counts[s] += 1;
    if (last[s] >= 0) widest_gap[s] = std::max(widest_gap[s], i - last[s]);
    last[s] = i;
  }
  EXPECT_EQ(counts, (std::vector<int64_t>{12000, 6000, 2000}));
  // Evenly spread: source c (one in ten) never waits much more than ten draws.
  EXPECT_LE(widest_gap[2], 11);
  EXPECT_LE(widest_gap[0], 2);
  // Source b's first n_b draws are each of its sequences once (its own epoch): the
  // same multiset of rows as the source read in order.
  const int64_t n_b = (b.size() - 1) / 8;
  const auto row_of = [](const torch::Tensor& t) {
    const torch::Tensor row = t.contiguous();
    return std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
  };
  std::multiset<std::vector<int64_t>> drawn, expected;
  for (int64_t i = 0; i < batch.size(0) && static_cast<int64_t>(drawn.size()) < n_b; ++i)
    if (source_of(batch[i]) == 1) drawn.insert(row_of(batch[i]));
  std::vector<int64_t> row(9);
  for (int64_t k = 0; k < n_b; ++k) {
    b.read(k * 8, 9, row.data());
    expected.insert(row);
  }
  EXPECT_EQ(drawn, expected);
  // Each source's position at a cursor is what was drawn from it before.
  const torch::Tensor more = sampler.batch({0, 0}, 2 * dha::kMixturePeriod, 3);
  for (int64_t i = 0; i < 3; ++i) counts[source_of(more[i])] += 1;
  const auto positions = sampler.positions(sampler.advance({0, 0}, 2 * dha::kMixturePeriod + 3));
  for (int s = 0; s < 3; ++s) EXPECT_EQ(positions[s].sequences, counts[s]) << s;
  EXPECT_EQ(positions[1].epoch, counts[1] / n_b);
  EXPECT_EQ(positions[1].index, counts[1] % n_b);
}

TEST(DataMixture, BadWeightsAreOneLineErrors) {
  TempDir tmp;
  const dha::TokenDataset a(source_data(tmp, "a", 3, 2000), "train"), b(source_data(tmp, "b", 23, 2000), "train");
  dha::test::expect_one_line_error([&] { dha::SequenceSampler s({{&a, 1.0}, {&b, 0.0}}, 8, 1); },
                                   {"b", "weight 0", "positive"});
  dha::test::expect_one_line_error([&] { dha::SequenceSampler s({{&a, 1.0}, {&b, 1e-6}}, 8, 1); },
                                   {"b", "below one sequence in 10000"});
  EXPECT_EQ(dha::parse_data_source("dir/x=3").dir, "dir/x");
  EXPECT_DOUBLE_EQ(dha::parse_data_source("dir/x=0.25").weight, 0.25);
  EXPECT_EQ(dha::parse_data_source("dir/a=b").dir, "dir/a=b");  // not a number: all of it is the directory
  EXPECT_DOUBLE_EQ(dha::parse_data_source("plain").weight, 1.0);
  dha::test::expect_one_line_error([] { dha::parse_data_source("d=-1"); }, {"--data d=-1", "positive"});
}

namespace {

dha::TrainConfig mixture_config(int64_t steps) { return dha::test::small_train_config(steps, 16); }

void run_mixture(const std::string& out, const std::vector<dha::MixtureSource>& sources,
                 const dha::TrainConfig& config, bool resume) {
  dha::LanguageModelTask task(dha::make_random_model(dha::test::tiny_config(), 5), std::nullopt, 0, 1);
  dha::SequenceSampler sampler(sources, config.seq_len, config.seed);
  auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
  dha::TrainRun run;
  run.out_dir = out;
  run.resume = resume;
  run.show_progress = false;
  run.meta = {{"model_config", "tiny"}};
  fs::create_directories(out);
  dha::train(task, sampler, config, *dist, run);
}

}  // namespace

TEST(DataMixture, ResumedMixtureRunIsBitExactAndRecordsEachSourcesCursor) {
  TempDir tmp;
  const dha::TokenDataset a(source_data(tmp, "a", 3, 3000), "train"), b(source_data(tmp, "b", 23, 2000), "train");
  const std::vector<dha::MixtureSource> sources = {{&a, 2.0}, {&b, 1.0}};
  run_mixture(tmp.file("whole"), sources, mixture_config(12), false);
  dha::TrainConfig first = mixture_config(12);
  first.stop_after = 5;
  run_mixture(tmp.file("split"), sources, first, false);
  run_mixture(tmp.file("split"), sources, mixture_config(12), true);
  const auto la = dha::test::metrics_losses(tmp.file("whole/metrics.jsonl")),
             lb = dha::test::metrics_losses(tmp.file("split/metrics.jsonl"));
  ASSERT_EQ(la.size(), 12u);
  EXPECT_EQ(la, lb);
  const auto wa = dha::load_latest_training_state(tmp.file("whole/checkpoints"));
  const auto wb = dha::load_latest_training_state(tmp.file("split/checkpoints"));
  ASSERT_TRUE(wa && wb);
  for (const auto& [name, t] : wa->tensors) EXPECT_TRUE(torch::equal(t, wb->tensors.at(name))) << name;
  // 12 steps x 6 sequences = 72 draws, 2:1 to within one (the period's first 72 positions).
  const auto& positions = wa->meta.at("data_sources");
  ASSERT_EQ(positions.size(), 2u);
  const int64_t from_a = positions[0]["sequences"], from_b = positions[1]["sequences"];
  EXPECT_EQ(from_a + from_b, 72);
  EXPECT_NEAR(static_cast<double>(from_b), 24.0, 1.0);
  EXPECT_EQ(positions[1]["sequences_per_period"], 3333);
}

TEST(DataMixture, TrainRecordsTheMixtureAndRefusesToResumeWithOtherWeights) {
  TempDir tmp;
  dha::io::save_hf_dir(tmp.file("model"), dha::test::random_checkpoint(dha::test::tiny_config(), 1), {});
  const std::string a = source_data(tmp, "a", 3, 3000), b = source_data(tmp, "b", 23, 3000);
  const std::string base = "dha-train --model " + tmp.file("model") + " --out " + tmp.file("run") +
                           " --steps 4 --seq-len 8 --batch 2 --device cpu --eval-docs 0 --checkpoint-every 2 ";
  const auto r = dha::test::run_tool(base + "--data " + a + "=3 --data " + b + "=1 --stop-after 2", true);
  ASSERT_EQ(r.code, 0) << r.out;
  bool found = false;
  std::istringstream in(dha::io::read_file(tmp.file("run/metrics.jsonl")));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") != "data_mixture") continue;
    found = true;
    ASSERT_EQ(j["sources"].size(), 2u);
    EXPECT_EQ(j["sources"][0]["dir"], a);
    EXPECT_DOUBLE_EQ(j["sources"][0]["share"].get<double>(), 0.75);
    EXPECT_DOUBLE_EQ(j["sources"][1]["weight"].get<double>(), 1.0);
  }
  EXPECT_TRUE(found) << "metrics.jsonl has no data_mixture line";
  const auto config = nlohmann::json::parse(dha::io::read_file(tmp.file("run/train_config.json")));
  EXPECT_TRUE(config["_resolved"]["data"].is_array()) << config.dump();
  dha::test::expect_one_error_line(base + "--data " + a + "=1 --data " + b + "=1 --resume",
                                   "resume with the same --data sources and weights");
  const auto resumed = dha::test::run_tool(base + "--data " + a + "=3 --data " + b + "=1 --resume", true);
  EXPECT_EQ(resumed.code, 0) << resumed.out;
}
