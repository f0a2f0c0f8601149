// AdamW (against torch::optim::AdamW, ascent with a negative rate, state round
// trip, global-norm clipping) and the warmup + cosine learning-rate schedule.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dha/error.h"
#include "dha/optim.h"
#include "test_util.h"

TEST(AdamW, MatchesTorchOptimAdamW) {
  torch::manual_seed(3);
  const torch::Tensor init = torch::randn({5, 4});
  const torch::Tensor target = torch::randn({5, 4});
  torch::Tensor a = init.clone().set_requires_grad(true), b = init.clone().set_requires_grad(true);
  dha::ParamGroup group;
  group.name = "w";
  group.lr = 0.01;
  group.weight_decay = 0.1;
  group.params = {{"w", a}};
  dha::AdamW ours({group}, 0.9, 0.95, 1e-8);
  torch::optim::AdamW theirs({b}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 25; ++step) {
    ours.zero_grad();
    theirs.zero_grad();
    (a - target).pow(3).abs().sum().backward();
    (b - target).pow(3).abs().sum().backward();
    ours.step(1.0);
    theirs.step();
  }
  EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7)) << (a - b).abs().max().item<double>();
  ours.zero_grad();
  EXPECT_FALSE(a.grad().defined()) << "zero_grad releases the gradient";
}

TEST(AdamW, NegativeLearningRateAscends) {
  torch::Tensor x = torch::zeros({1}).set_requires_grad(true);
  dha::ParamGroup group;
  group.lr = -0.1;
  group.params = {{"x", x}};
  dha::AdamW opt({group}, 0.9, 0.95, 1e-8);
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    (x * 2.0).sum().backward();  // d/dx = 2 > 0: ascent increases x
    opt.step(1.0);
  }
  EXPECT_GT(x.item<double>(), 0.4);
}

TEST(AdamW, StateRoundTripsAndClipsTheGlobalNorm) {
  torch::Tensor x = torch::ones({3}).set_requires_grad(true);
  dha::ParamGroup group;
  group.params = {{"x", x}};
  dha::AdamW opt({group}, 0.9, 0.95, 1e-8);
  (x * torch::tensor({3.0, 4.0, 0.0})).sum().backward();
  EXPECT_NEAR(opt.clip_grad_norm(1.0), 5.0, 1e-9);
  EXPECT_NEAR(x.grad().norm().item<double>(), 1.0, 1e-5);
  opt.step(1.0);
  dha::AdamW copy({group}, 0.9, 0.95, 1e-8);
  copy.load_state(opt.state(), opt.steps(), "test");
  for (const auto& [name, t] : opt.state()) EXPECT_TRUE(torch::equal(t, copy.state().at(name))) << name;
  EXPECT_EQ(copy.steps(), 1);
}

TEST(LrSchedule, WarmupThenCosineToTheFloor) {
  dha::LrSchedule s;
  s.warmup_steps = 4;
  s.total_steps = 14;
  s.floor_ratio = 0.1;
  EXPECT_DOUBLE_EQ(s.factor(0), 0.25);
  EXPECT_DOUBLE_EQ(s.factor(3), 1.0);
  EXPECT_DOUBLE_EQ(s.factor(4), 1.0);
  EXPECT_NEAR(s.factor(9), 0.55, 1e-12);
  EXPECT_NEAR(s.factor(14), 0.1, 1e-12);
}

TEST(LrSchedule, AnOffsetContinuesTheCosineThatEarlierStepsBegan) {
  dha::LrSchedule whole;  // one run of 14 steps
  whole.warmup_steps = 4;
  whole.total_steps = 14;
  dha::LrSchedule rest = whole;  // its first 6 steps trained elsewhere (a conversion), the other 8 here
  rest.offset_steps = 6;
  rest.total_steps = 8;
  // The fresh optimizer ramps up over its own first 4 steps, towards the continued cosine...
  for (int64_t step = 0; step < 4; ++step)
    EXPECT_NEAR(rest.factor(step), (step + 1) / 4.0 * whole.factor(step + 6), 1e-12) << step;
  // ...and then follows it to the same floor at the same end.
  for (int64_t step = 4; step <= 8; ++step) EXPECT_NEAR(rest.factor(step), whole.factor(step + 6), 1e-12) << step;
  EXPECT_NEAR(rest.factor(8), 0.1, 1e-12);
  EXPECT_LT(rest.factor(4), 0.99);  // past the peak: not a restart
}
