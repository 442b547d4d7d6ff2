// AdamW: PyTorch's update rule on hand-computed steps, parameter groups, the layer callback,
// and bad options.

#include <gtest/gtest.h>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

TEST(AdamW, MatchesHandComputedPyTorchSteps) {
  // Values computed by hand from torch.optim.AdamW's update (decoupled decay, bias correction):
  // lr 0.1, weight_decay 0.01, betas (0.9, 0.999), eps 1e-8.
  HostCtx ctx;
  Matrix<double, Cpu> p(1, 2), g(1, 2);
  p.data()[0] = 1.0;
  p.data()[1] = -2.0;
  AdamW<double, Cpu> opt({.lr = 0.1, .weight_decay = 0.01});
  opt.add({{"p", p.view(), g.view()}});
  g.data()[0] = 0.5;
  g.data()[1] = 0.1;
  opt.step(ctx);
  EXPECT_NEAR(p.data()[0], 0.899000002, 1e-12);
  EXPECT_NEAR(p.data()[1], -2.097999990000001, 1e-12);
  g.data()[0] = -0.3;
  g.data()[1] = 0.2;
  opt.step(ctx);
  EXPECT_NEAR(p.data()[0], 0.8789511989397751, 1e-12);
  EXPECT_NEAR(p.data()[1], -2.1924201864887465, 1e-12);
  EXPECT_EQ(opt.steps(), 2);
}

TEST(AdamW, GroupsHaveTheirOwnLearningRateAndDecay) {
  HostCtx ctx;
  Matrix<float, Cpu> a(1, 1), ga(1, 1), b(1, 1), gb(1, 1);
  a.data()[0] = b.data()[0] = 1.0f;
  ga.data()[0] = gb.data()[0] = 1.0f;
  AdamW<float, Cpu> opt({.lr = 0.1, .weight_decay = 0.0});
  opt.add({{"a", a.view(), ga.view()}});
  opt.add({{"b", b.view(), gb.view()}}, {.lr = 0.01, .weight_decay = 0.5});
  opt.step(ctx);
  // First step of Adam moves by lr · sign(g) (up to eps), after decay by (1 − lr·wd).
  EXPECT_NEAR(a.data()[0], 1.0f - 0.1f, 1e-6);
  EXPECT_NEAR(b.data()[0], 1.0f * (1 - 0.01f * 0.5f) - 0.01f, 1e-6);
  EXPECT_EQ(opt.num_groups(), 2u);
  opt.set_lr(1, 0.0);
  const float before = b.data()[0];
  opt.step(ctx);
  EXPECT_EQ(b.data()[0], before);
}

TEST(AdamW, AddLayerSelectsByNameAndCallsParametersUpdated) {
  HostCtx ctx;
  auto w0 = random_matrix<Eigen::bfloat16>(6, 5, 1);
  auto x = random_matrix<Eigen::bfloat16>(3, 5, 2);
  Lora<Eigen::bfloat16, Cpu> layer(ctx, w0.view(), {.r = 2, .init = LoraInit::none, .seed = 1});
  AdamW<float, Cpu> opt({.lr = 0.05});
  opt.add(layer, {.names = {"lora_B"}});
  opt.add(layer, {.lr = 0.0, .names = {"lora_A"}});
  auto a_before = converted<float>(as_const(layer.parameters()[0].value));
  Matrix<Eigen::bfloat16, Cpu> y1(3, 6), y2(3, 6);
  layer.forward(ctx, x.view(), y1.view());
  fill(ctx, layer.parameters()[0].grad, 1.0);
  fill(ctx, layer.parameters()[1].grad, 1.0);
  opt.step(ctx);
  // A had lr 0 (weight decay still scales by 1 − 0 = 1): unchanged; B moved.
  EXPECT_TRUE(bitwise_equal(as_const(layer.parameters()[0].value), as_const(a_before.view())));
  // The bf16 GEMM copies were refreshed by the step: the output changed.
  layer.forward(ctx, x.view(), y2.view());
  EXPECT_FALSE(bitwise_equal(as_const(y1.view()), as_const(y2.view())));
  expect_error([&] { opt.add(layer, {.names = {"lora_Q"}}); }, ErrorKind::invalid_argument,
               {"AdamW::add", "no parameter"});
}

TEST(AdamW, ResetStateRestartsAGroupLikeANewParameter) {
  // After reset_state, a group's next step is the first step of a fresh parameter: with
  // bias correction its size is lr · sign(g), whatever the earlier steps did.
  HostCtx ctx;
  Matrix<double, Cpu> p(1, 1), g(1, 1), q(1, 1), gq(1, 1);
  AdamW<double, Cpu> opt({.lr = 0.1, .weight_decay = 0.0});
  const auto first = opt.add({{"p", p.view(), g.view()}});
  opt.add({{"q", q.view(), gq.view()}});
  g.data()[0] = 5.0;
  gq.data()[0] = 5.0;
  for (int i = 0; i < 3; ++i) opt.step(ctx);
  opt.reset_state(ctx, first);
  const double p_before = p.data()[0], q_before = q.data()[0];
  g.data()[0] = -0.001;
  gq.data()[0] = -0.001;
  opt.step(ctx);
  EXPECT_NEAR(p.data()[0] - p_before, 0.1, 1e-6);  // fresh: a full lr step against g
  EXPECT_LT(q.data()[0] - q_before, 0.0);          // q's momentum still points the old way
  expect_error([&] { opt.reset_state(ctx, 5); }, ErrorKind::invalid_argument, {"group 5"});
}

TEST(AdamW, BadOptionsThrow) {
  expect_error([] { AdamW<float, Cpu>({.lr = -1}); }, ErrorKind::invalid_argument, {"lr is -1"});
  expect_error([] { AdamW<float, Cpu>({.beta1 = 1.0}); }, ErrorKind::invalid_argument,
               {"beta1 is 1", "[0, 1)"});
  expect_error([] { AdamW<float, Cpu>({.beta2 = -0.1}); }, ErrorKind::invalid_argument,
               {"beta2 is -0.1"});
  expect_error([] { AdamW<float, Cpu>({.eps = 0}); }, ErrorKind::invalid_argument, {"eps is 0"});
  expect_error([] { AdamW<float, Cpu>({.weight_decay = -1}); }, ErrorKind::invalid_argument,
               {"weight_decay is -1"});
  AdamW<float, Cpu> opt;
  Matrix<float, Cpu> p(2, 2), g(2, 3);
  expect_error(
      [&] {
        opt.add({{"p", p.view(), g.view()}});
      },
      ErrorKind::shape, {"parameter p is 2 x 2", "gradient is 2 x 3"});
  expect_error([&] { opt.set_lr(3, 0.1); }, ErrorKind::invalid_argument, {"group 3"});
}

TEST(AdamW, StepPullsBackTheGradientsOfGeneratedFactorsFirst) {
  // AdaLoRA's E starts at zero, so only the pull-back of dA_eff gives it a gradient: without
  // prepare_gradients before the update, E (and with it the whole adapter) never moves.
  HostCtx ctx;
  auto w0 = random_matrix<double>(6, 5, 1);
  auto x = random_matrix<double>(4, 5, 2), dy = random_matrix<double>(4, 6, 3);
  AdaLora<double, Cpu> layer(ctx, w0.view(), {.init_r = 3, .alpha = 4});
  AdamW<double, Cpu> opt({.lr = 0.1, .weight_decay = 0.0});
  opt.add(layer);
  Matrix<double, Cpu> y(4, 6), dx(4, 5);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  ASSERT_EQ(norm(ctx, as_const(layer.parameters()[1].value)), 0.0);
  opt.step(ctx);
  EXPECT_GT(norm(ctx, as_const(layer.parameters()[1].value)), 0.1);  // lr · sign per entry
}

}  // namespace
}  // namespace peft::test
