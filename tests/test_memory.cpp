// Memory: activation checkpointing (same loss and gradients), models over a
// checkpoint's tensors (frozen weights shared in their dtype, trained ones
// copied), the counting allocator, and the memory plan against measured
// allocations on small models.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dha/checkpoint.h"
#include "dha/fusion.h"
#include "dha/search.h"
#include "dha/loss.h"
#include "dha/memory.h"
#include "dha/memory_plan.h"
#include "dha/model.h"
#include "dha/optim.h"
#include "dha/shared_attention.h"
#include "dha/train.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

// The loss of one batch and the gradient of every parameter.
std::pair<double, std::map<std::string, torch::Tensor>> loss_and_gradients(dha::Llama& model,
                                                                           const torch::Tensor& batch) {
  model->train();
  for (auto& p : model->parameters())
    if (p.grad().defined()) p.mutable_grad().zero_();
  const int64_t t = batch.size(1) - 1;
  const torch::Tensor loss = dha::lm_loss(model->forward(batch.narrow(1, 0, t)), batch.narrow(1, 1, t));
  loss.backward();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& item : model->named_parameters())
    if (item.value().grad().defined()) grads[item.key()] = item.value().grad().clone();
  return {loss.item<double>(), grads};
}

// A model wide enough that activations and projections dominate the plan's
// rounding: d 64, 4 layers of 4 heads of 16, hidden 160, context 96.
dha::ModelConfig wide_config() {
  dha::ModelConfig c = dha::test::tiny_config();
  c.dim = 64;
  c.hidden_dim = 160;
  c.n_layers = 4;
  c.head_dim = 16;
  c.max_seq_len = 96;
  c.layout = dha::HeadLayout::mha(4, 4);
  return c;
}

// The bytes a plan gives one category (0 when it has none).
int64_t planned_bytes(const dha::MemoryPlan& plan, const std::string& name) {
  for (const auto& category : plan.categories)
    if (category.name == name) return category.bytes;
  return 0;
}

dha::ModelConfig shared_config() {
  dha::ModelConfig c = dha::test::tiny_config();
  c.n_layers = 4;
  c.layout = dha::with_shared_spans(dha::HeadLayout::mha(4, c.n_heads), {{2, 3}});
  return c;
}

}  // namespace

// Bit-exact on CPU in float32: the recomputation runs the same operations on
// the same inputs, and every gradient is accumulated in the same order.
TEST(ActivationCheckpointing, LossAndEveryGradientEqualTheRunWithout) {
  struct Case {
    const char* name;
    dha::ModelConfig config;
  };
  const std::vector<Case> cases = {{"mha", dha::test::tiny_config()},
                                   {"decoupled", dha::test::tiny_dha_config()},
                                   {"biased, tied", dha::test::tiny_config(true, true)},
                                   {"shared attention", shared_config()}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const dha::Checkpoint ck = dha::test::random_checkpoint(c.config, 5);
    const torch::Tensor batch = dha::test::random_tokens(2, 12, c.config.vocab_size, 6);
    dha::Llama plain = dha::make_model(ck, "plain");
    dha::Llama checkpointed = dha::make_model(ck, "checkpointed");
    checkpointed->activation_checkpointing = true;
    const auto [loss_a, grads_a] = loss_and_gradients(plain, batch);
    const auto [loss_b, grads_b] = loss_and_gradients(checkpointed, batch);
    EXPECT_EQ(loss_a, loss_b);
    ASSERT_EQ(grads_a.size(), grads_b.size());
    for (const auto& [name, g] : grads_a) EXPECT_TRUE(torch::equal(g, grads_b.at(name))) << name;
    // A second step accumulates like the first (the recomputation leaves no state behind).
    const auto [loss_c, grads_c] = loss_and_gradients(checkpointed, batch);
    EXPECT_EQ(loss_c, loss_a);
  }
}

TEST(ActivationCheckpointing, KeepsOnlyLayerInputsForBackward) {
  dha::MemoryMeter::install();
  ASSERT_TRUE(dha::MemoryMeter::installed());
  dha::ModelConfig c = dha::test::tiny_config();
  c.n_layers = 6;
  c.max_seq_len = 128;
  c.layout = dha::HeadLayout::mha(6, c.n_heads);
  const dha::Checkpoint ck = dha::test::random_checkpoint(c, 7);
  const torch::Tensor batch = dha::test::random_tokens(4, 129, c.vocab_size, 8);
  auto activation_peak = [&](bool checkpointing) {
    dha::Llama model = dha::make_model(ck, "m");
    model->activation_checkpointing = checkpointing;
    const int64_t before = dha::MemoryMeter::current_bytes();
    dha::MemoryMeter::reset_peak();
    const torch::Tensor loss = dha::lm_loss(model->forward(batch.narrow(1, 0, 128)), batch.narrow(1, 1, 128));
    const int64_t after_forward = dha::MemoryMeter::current_bytes() - before;
    loss.backward();
    return after_forward;
  };
  const int64_t kept_plain = activation_peak(false), kept_checkpointed = activation_peak(true);
  EXPECT_LT(kept_checkpointed * 3, kept_plain) << kept_checkpointed << " vs " << kept_plain;
}

TEST(ModelSharing, FrozenWeightsShareTheCheckpointAndTrainedOnesAreCopies) {
  dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 9);
  for (auto& [name, t] : ck.tensors) t = t.to(torch::kBFloat16);
  ck.storage_dtype = torch::kBFloat16;
  auto is_kv = [](const std::string& name) {
    return name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
  };
  dha::Llama model = dha::make_model_over(ck, "bf16", is_kv);
  for (const auto& item : model->named_parameters()) {
    const torch::Tensor& source = ck.tensors.at(item.key());
    if (is_kv(item.key())) {
      EXPECT_EQ(item.value().scalar_type(), torch::kFloat32) << item.key();
      EXPECT_TRUE(item.value().requires_grad()) << item.key();
      EXPECT_NE(item.value().data_ptr(), source.data_ptr()) << item.key();
    } else {
      EXPECT_EQ(item.value().scalar_type(), torch::kBFloat16) << item.key();
      EXPECT_FALSE(item.value().requires_grad()) << item.key();
      EXPECT_EQ(item.value().data_ptr(), source.data_ptr()) << item.key();
    }
  }
}

// A bf16 model computed in float32 one matrix at a time gives exactly what a
// float32 copy of the same weights gives, and so do the trained weights' gradients.
TEST(ModelSharing, LowPrecisionFrozenWeightsComputeLikeTheirFloat32Copy) {
  dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_dha_config(/*tied=*/true, /*biased=*/true), 10);
  for (auto& [name, t] : ck.tensors) t = t.to(torch::kBFloat16);
  ck.storage_dtype = torch::kBFloat16;
  auto trains = [](const std::string& name) { return name.find("v_proj") != std::string::npos; };
  dha::Llama shared = dha::make_model_over(ck, "bf16", trains);
  dha::Llama copied = dha::make_model(ck, "fp32");
  for (auto& item : copied->named_parameters()) item.value().set_requires_grad(trains(item.key()));
  const torch::Tensor batch = dha::test::random_tokens(2, 10, 61, 11);
  const auto [loss_a, grads_a] = loss_and_gradients(shared, batch);
  const auto [loss_b, grads_b] = loss_and_gradients(copied, batch);
  EXPECT_EQ(loss_a, loss_b);
  ASSERT_EQ(grads_a.size(), 4u);  // v_proj weight and bias in two layers
  for (const auto& [name, g] : grads_a) EXPECT_TRUE(torch::allclose(g, grads_b.at(name), 1e-6, 1e-7)) << name;
}

TEST(MemoryMeter, CountsLiveTensorBytesAndTheirPeak) {
  dha::MemoryMeter::install();
  ASSERT_TRUE(dha::MemoryMeter::installed());
  const int64_t base = dha::MemoryMeter::current_bytes();
  dha::MemoryMeter::reset_peak();
  {
    const torch::Tensor a = torch::empty({1000, 1000});  // 4,000,000 bytes
    EXPECT_EQ(dha::MemoryMeter::current_bytes() - base, 4'000'000);
    const torch::Tensor b = torch::empty({500}, torch::kFloat64);
    EXPECT_EQ(dha::MemoryMeter::current_bytes() - base, 4'004'000);
  }
  EXPECT_EQ(dha::MemoryMeter::current_bytes(), base);
  EXPECT_EQ(dha::MemoryMeter::peak_bytes() - base, 4'004'000);
  EXPECT_GT(dha::peak_rss_bytes(), 0);
  EXPECT_GT(dha::current_rss_bytes(), 0);
}

// The plan's categories against what the counting allocator measures for a
// training step: weights, gradients and AdamW state exactly; activations and
// logits (where the formula approximates autograd's saved tensors) within 25%.
TEST(MemoryPlan, MatchesMeasuredAllocationsOfATrainingStep) {
  dha::MemoryMeter::install();
  struct Case {
    const char* name;
    dha::ModelConfig config;
    bool checkpointing;
  };
  const dha::ModelConfig wide = wide_config();
  dha::ModelConfig decoupled = wide;
  decoupled.layout.k_map = {{0, 0, 1, 1}, {0, 0, 0, 0}, {0, 1, 2, 3}, {1, 0, 0, 1}};
  decoupled.layout.v_map = {{0, 1, 2, 3}, {0, 0, 1, 1}, {0, 0, 0, 0}, {0, 1, 1, 0}};
  const std::vector<Case> cases = {{"mha", wide, false}, {"decoupled", decoupled, false}, {"checkpointed", wide, true}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t batch = 3, seq = 96;
    dha::MemoryPlanInputs in;
    in.model = c.config;
    in.micro_batch = batch;
    in.seq_len = seq;
    in.activation_checkpointing = c.checkpointing;
    const dha::MemoryPlan plan = dha::plan_memory(in);
    auto planned = [&](const std::string& name) { return planned_bytes(plan, name); };

    const int64_t base = dha::MemoryMeter::current_bytes();
    const dha::Checkpoint ck = dha::test::random_checkpoint(c.config, 12);
    const torch::Tensor tokens = dha::test::random_tokens(batch, seq + 1, c.config.vocab_size, 13);
    const int64_t fixtures = dha::MemoryMeter::current_bytes() - base;
    dha::Llama model = dha::make_model(ck, "m");
    model->activation_checkpointing = c.checkpointing;
    model->train();
    const int64_t weights = dha::MemoryMeter::current_bytes() - base - fixtures;
    EXPECT_EQ(weights, planned("weights"));

    // The activations: what the forward pass leaves allocated until backward.
    const int64_t before_forward = dha::MemoryMeter::current_bytes();
    torch::Tensor logits = model->forward(tokens.narrow(1, 0, seq));
    torch::Tensor loss = dha::lm_loss(logits, tokens.narrow(1, 1, seq));
    const int64_t kept = dha::MemoryMeter::current_bytes() - before_forward;
    // Before the gradient: two of the three logit-sized buffers; with
    // checkpointing, the one recomputed layer comes only in backward.
    int64_t recomputed = 0;
    for (int64_t l = 0; c.checkpointing && l < c.config.n_layers; ++l)
      recomputed = std::max(recomputed, batch * seq * dha::activation_bytes_per_token_per_layer(c.config, l, false));
    const int64_t want_kept = planned("activations") - recomputed + planned("logits and loss") * 2 / 3;
    EXPECT_NEAR(static_cast<double>(kept), static_cast<double>(want_kept), 0.25 * want_kept)
        << "measured " << kept << ", planned " << want_kept;
    loss.backward();
    logits = loss = torch::Tensor();
    EXPECT_EQ(dha::MemoryMeter::current_bytes() - before_forward, planned("gradients"));
    const int64_t before_optimizer = dha::MemoryMeter::current_bytes();
    std::vector<dha::ParamGroup> groups(1);
    groups[0].name = "model";
    groups[0].lr = 1e-3;
    for (const auto& item : model->named_parameters()) groups[0].params.emplace_back(item.key(), item.value());
    dha::AdamW optimizer(groups, 0.9, 0.95, 1e-8);
    optimizer.step(1.0);
    EXPECT_EQ(dha::MemoryMeter::current_bytes() - before_optimizer, planned("optimizer state"));
  }
}

TEST(MemoryPlan, CountsOnlyWhatTrainsAndHoldsFrozenWeightsInTheirDtype) {
  dha::MemoryPlanInputs in;
  in.model = dha::test::tiny_config();
  in.storage_dtype = torch::kBFloat16;
  in.train_weights = dha::TrainWeights::kNone;
  const dha::MemoryPlan none = dha::plan_memory(in);
  const int64_t params = in.model.parameter_count();
  const int64_t tables = 2 * 24 * 8 * 4 + 2 * 2 * 4 * 8;  // RoPE cos/sin of 24 positions, the head maps
  EXPECT_EQ(none.categories.front().bytes, 2 * params + tables);  // weights, bf16
  in.train_weights = dha::TrainWeights::kAttention;
  const int64_t kv = dha::trainable_parameters(in.model, dha::TrainWeights::kAttention);
  EXPECT_EQ(kv, 2 * 2 * 4 * 8 * 32);  // 2 layers, K and V, 4 heads of 8 rows, d 32
  const dha::MemoryPlan attention = dha::plan_memory(in);
  EXPECT_EQ(attention.categories.front().bytes, 4 * kv + 2 * (params - kv) + tables);
  in.train_weights = dha::TrainWeights::kAll;
  const dha::MemoryPlan all = dha::plan_memory(in);
  EXPECT_GT(all.total(), attention.total());
  EXPECT_GT(attention.total(), none.total());
  EXPECT_NE(all.table().find("optimizer state"), std::string::npos);
  dha::test::expect_one_line_error([] { dha::parse_train_weights("some"); }, "all, attention, none");
}

// A fusion step keeps, beyond the model's own activations and logits, the
// fused K/V projections the plan counts (fp32, three views of each for
// backward); measured with every pool fused as one group.
TEST(MemoryPlan, FusedProjectionsMatchWhatAFusionStepKeeps) {
  dha::MemoryMeter::install();
  const dha::ModelConfig c = wide_config();
  const int64_t batch = 3, seq = 96;
  dha::MemoryPlanInputs in;
  in.model = c;
  in.micro_batch = batch;
  in.seq_len = seq;
  in.fused_projection_elements = c.n_layers * 2 * c.n_heads * c.head_dim * c.dim;
  const dha::MemoryPlan plan = dha::plan_memory(in);
  auto planned = [&](const std::string& name) { return planned_bytes(plan, name); };
  EXPECT_EQ(planned("fused projections"), 3 * 4 * in.fused_projection_elements);

  const dha::Checkpoint ck = dha::test::random_checkpoint(c, 21);
  const torch::Tensor tokens = dha::test::random_tokens(batch, seq + 1, c.vocab_size, 22);
  dha::FusionTask task(dha::make_model(ck, "fusion"), dha::contiguous_grouping(c, 1), 10, {}, std::nullopt);
  task.model()->train();
  dha::StepScalars scalars;
  const int64_t before = dha::MemoryMeter::current_bytes();
  torch::Tensor loss = task.loss(tokens, scalars);
  const int64_t kept = dha::MemoryMeter::current_bytes() - before;
  const int64_t want = planned("activations") + planned("logits and loss") * 2 / 3 + planned("fused projections");
  EXPECT_NEAR(static_cast<double>(kept), static_cast<double>(want), 0.25 * want)
      << "measured " << kept << ", planned " << want << " (fused projections " << planned("fused projections") << ")";
}

// The fusion stage hands each layer K/V projections computed outside it (from
// the operators Omega): through a checkpointed layer their gradients must
// reach Omega and the weights exactly as without checkpointing, and a
// second step must find nothing of the first one's graph.
TEST(ActivationCheckpointing, FusionOperatorsGetTheSameGradientsThroughTheRecomputation) {
  for (const bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "biased" : "no biases");
    const dha::ModelConfig c = dha::test::tiny_config(false, biased);
    const dha::Checkpoint ck = dha::test::random_checkpoint(c, 7);
    dha::Grouping grouping;  // every pool: {0, 2}, {1, 3}
    for (int64_t p = 0; p < 2 * c.n_layers; ++p) grouping.push_back({{0, 2}, {1, 3}});
    const torch::Tensor batch = dha::test::random_tokens(2, 13, c.vocab_size, 8);
    std::vector<std::map<std::string, torch::Tensor>> grads(2);
    std::vector<double> losses;
    for (const bool checkpointing : {false, true}) {
      dha::FusionTask task(dha::make_model(ck, "fusion"), grouping, 10, {}, std::nullopt);
      task.model()->activation_checkpointing = checkpointing;
      task.model()->train();
      for (int step = 0; step < 2; ++step) {
        dha::StepScalars scalars;
        const torch::Tensor loss = task.loss(batch, scalars);
        loss.backward();
        if (step == 0) losses.push_back(loss.item<double>());
      }
      for (const auto& group : task.param_groups(dha::TrainConfig{}))
        for (const auto& [name, p] : group.params) {
          ASSERT_TRUE(p.grad().defined()) << name;
          grads[checkpointing][name] = p.grad().clone();
        }
    }
    EXPECT_EQ(losses[0], losses[1]);
    for (const auto& [name, g] : grads[0])
      EXPECT_TRUE(torch::allclose(g, grads[1].at(name), 1e-6, 1e-7))
          << name << " max abs diff " << (g - grads[1].at(name)).abs().max().item<double>();
  }
}
