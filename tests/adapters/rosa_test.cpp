// Rosa on the CPU: gradient checks of A, B, S and dx in both forward modes, the dense reference
// W0 + S + s B A, merging, the phases, the mask builder, and bad input.

#include <gtest/gtest.h>

#include <random>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

static_assert(Adapter<Rosa<float, Cpu>>);
static_assert(Adapter<Rosa<double, Cpu>>);
static_assert(Adapter<Rosa<Eigen::bfloat16, Cpu>>);

constexpr index_t kN = 5, kIn = 7, kOut = 6, kR = 2;

/// A layer with a mask and random, non-zero S values and init = none factors.
template <class T>
Rosa<T, Cpu> make_rosa(HostCtx& ctx, MatrixView<const T, Cpu> w0, RosaForward mode,
                       float dropout = 0.0f, bool fan_in_fan_out = false) {
  RosaConfig cfg{.lora = {.r = kR,
                          .alpha = 3,
                          .dropout = dropout,
                          .fan_in_fan_out = fan_in_fan_out,
                          .init = LoraInit::none,
                          .seed = 9},
                 .density = 0.25,
                 .forward = mode};
  Rosa<T, Cpu> layer(ctx, w0, cfg, {.stream_id = 2});
  layer.set_mask(ctx, random_mask_pattern(kOut, kIn, layer.sparse_capacity(), 1));
  auto s = layer.parameters()[2].value;
  std::mt19937 gen(3);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t e = 0; e < layer.sparse().nnz(); ++e) s.data()[e] = convert_value<T>(dist(gen));
  layer.parameters_updated(ctx);
  return layer;
}

/// W0 + S + s B A as a dense [out, in] double matrix.
template <class T>
Matrix<double, Cpu> dense_effective_weight(Rosa<T, Cpu>& layer,
                                           MatrixView<const T, Cpu> w0_out_in) {
  auto params = layer.parameters();
  auto ba = naive_product(as_const(params[1].value), false, as_const(params[0].value), false);
  Matrix<double, Cpu> w(kOut, kIn);
  const auto s = std::as_const(layer.sparse()).view();
  for (index_t i = 0; i < kOut; ++i)
    for (index_t j = 0; j < kIn; ++j)
      w.view()(i, j) = convert_value<double>(w0_out_in(i, j)) + layer.scaling() * ba.view()(i, j);
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e)
      w.view()(r, s.col_indices[e]) += convert_value<double>(s.values[e]);
  return w;
}

struct RosaGradCase {
  RosaForward mode;
  float dropout;
  bool fan_in_fan_out;
};

class RosaGradient : public ::testing::TestWithParam<RosaGradCase> {};

TEST_P(RosaGradient, MatchesCentralDifferences) {
  HostCtx ctx;
  const auto [mode, dropout, fan] = GetParam();
  auto w0 = fan ? random_matrix<double>(kIn, kOut, 1) : random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  auto g = random_matrix<double>(kN, kOut, 3);
  auto base = naive_product(as_const(x.view()), false, as_const(w0.view()), !fan);

  auto reference = make_rosa<double>(ctx, w0.view(), mode, dropout, fan);
  std::vector<Matrix<double, Cpu>> values;
  for (auto& p : reference.parameters()) values.push_back(converted<double>(as_const(p.value)));

  // <G, y − x W0ᵀ> for a fresh layer holding `values` (first forward: same dropout mask).
  auto loss = [&] {
    auto layer = make_rosa<double>(ctx, w0.view(), mode, dropout, fan);
    auto params = layer.parameters();
    for (std::size_t p = 0; p < params.size(); ++p)
      copy(ctx, as_const(values[p].view()), params[p].value);
    layer.parameters_updated(ctx);
    Matrix<double, Cpu> y(kN, kOut);
    layer.forward(ctx, x.view(), y.view());
    double l = 0;
    for (index_t i = 0; i < y.size(); ++i) l += g.data()[i] * (y.data()[i] - base.data()[i]);
    return l;
  };
  auto numeric = [&](Matrix<double, Cpu>& target, index_t count) {
    Matrix<double, Cpu> grad(target.rows(), target.cols());
    for (index_t i = 0; i < count; ++i) {
      const double saved = target.data()[i], h = 1e-6;
      target.data()[i] = saved + h;
      const double plus = loss();
      target.data()[i] = saved - h;
      const double minus = loss();
      target.data()[i] = saved;
      grad.data()[i] = (plus - minus) / (2 * h);
    }
    return grad;
  };

  auto layer = make_rosa<double>(ctx, w0.view(), mode, dropout, fan);
  Matrix<double, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), g.view(), dx.view());
  auto params = layer.parameters();
  const index_t nnz = layer.sparse().nnz();
  for (std::size_t p = 0; p < params.size(); ++p) {
    auto num = numeric(values[p], p == 2 ? nnz : values[p].size());
    EXPECT_LT(relative_error(as_const(params[p].grad), as_const(num.view())), 1e-7)
        << params[p].name;
  }
  EXPECT_GT(norm(ctx, as_const(params[2].grad)), 1e-3);
  // dx's adapter part (dx − G W0) against the same part of the central differences in x (the
  // loss subtracts a fixed x W0ᵀ, so its x-derivative still holds G W0).
  auto num_x = numeric(x, x.size());
  auto base_dx = naive_product(as_const(g.view()), false, as_const(w0.view()), fan);
  for (index_t i = 0; i < dx.size(); ++i) dx.data()[i] -= base_dx.data()[i];
  for (index_t i = 0; i < dx.size(); ++i) num_x.data()[i] -= base_dx.data()[i];
  EXPECT_LT(relative_error(as_const(dx.view()), as_const(num_x.view())), 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Rosa, RosaGradient,
                         ::testing::Values(RosaGradCase{RosaForward::dense_add, 0.0f, false},
                                           RosaGradCase{RosaForward::spmm, 0.0f, false},
                                           RosaGradCase{RosaForward::dense_add, 0.3f, false},
                                           RosaGradCase{RosaForward::spmm, 0.3f, true},
                                           RosaGradCase{RosaForward::dense_add, 0.0f, true}),
                         [](const auto& info) {
                           return std::string(info.param.mode == RosaForward::spmm ? "Spmm"
                                                                                   : "DenseAdd") +
                                  (info.param.dropout > 0 ? "Dropout" : "") +
                                  (info.param.fan_in_fan_out ? "FanInFanOut" : "");
                         });

TEST(Rosa, BothModesEqualTheDenseReference) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  for (RosaForward mode : {RosaForward::dense_add, RosaForward::spmm}) {
    auto layer = make_rosa<double>(ctx, w0.view(), mode);
    Matrix<double, Cpu> y(kN, kOut);
    layer.forward(ctx, x.view(), y.view());
    auto w = dense_effective_weight(layer, as_const(w0.view()));
    auto ref = naive_product(as_const(x.view()), false, as_const(w.view()), true);
    EXPECT_LT(relative_error(as_const(y.view()), as_const(ref.view())), 1e-14);
    // delta_weight = s B A + S; merge gives the same forward.
    Matrix<double, Cpu> delta(kOut, kIn);
    layer.delta_weight(ctx, delta.view());
    for (index_t i = 0; i < delta.size(); ++i)
      EXPECT_NEAR(delta.data()[i], w.data()[i] - w0.data()[i], 1e-14);
    auto w0_copy = converted<double>(as_const(w0.view()));
    auto merged_layer = make_rosa<double>(ctx, w0_copy.view(), mode);
    EXPECT_TRUE(merged_layer.merge(ctx, w0_copy.view()));
    Matrix<double, Cpu> ym(kN, kOut);
    merged_layer.forward(ctx, x.view(), ym.view());
    EXPECT_LT(relative_error(as_const(ym.view()), as_const(y.view())), 1e-14);
    EXPECT_TRUE(merged_layer.unmerge(ctx, w0_copy.view()));
    EXPECT_LT(relative_error(as_const(w0_copy.view()), as_const(w0.view())), 1e-15);
  }
}

TEST(Rosa, EveryModeReadsSAsWrittenWithoutParametersUpdated) {
  // S's values are the one source of truth: written through parameters() and used at once by
  // both forward modes in both orientations (the fan_in_fan_out dense_add mode used to read a
  // transposed copy that only parameters_updated refreshed).
  HostCtx ctx;
  auto x = random_matrix<double>(kN, kIn, 2);
  for (bool fan : {false, true})
    for (RosaForward mode : {RosaForward::dense_add, RosaForward::spmm}) {
      auto w0_out_in = random_matrix<double>(kOut, kIn, 1);
      Matrix<double, Cpu> w0 =
          fan ? Matrix<double, Cpu>(kIn, kOut) : random_matrix<double>(kOut, kIn, 1);
      if (fan)
        for (index_t i = 0; i < kOut; ++i)
          for (index_t j = 0; j < kIn; ++j) w0.view()(j, i) = w0_out_in.view()(i, j);
      auto layer = make_rosa<double>(ctx, w0.view(), mode, 0.0, fan);
      Matrix<double, Cpu> y(kN, kOut);
      layer.forward(ctx, x.view(), y.view());  // the copies are now in step
      auto s = layer.parameters()[2].value;
      for (index_t e = 0; e < layer.sparse().nnz(); ++e) s.data()[e] *= -3.0;  // no update call
      layer.forward(ctx, x.view(), y.view());
      auto w = dense_effective_weight(layer, as_const(w0_out_in.view()));
      auto ref = naive_product(as_const(x.view()), false, as_const(w.view()), true);
      EXPECT_LT(relative_error(as_const(y.view()), as_const(ref.view())), 1e-14)
          << (fan ? "fan_in_fan_out " : "") << (mode == RosaForward::spmm ? "spmm" : "dense_add");
    }
}

TEST(Rosa, ForwardDeltaPlusBaseEqualsForward) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  auto dy = random_matrix<double>(kN, kOut, 3);
  auto full = make_rosa<double>(ctx, w0.view(), RosaForward::dense_add);
  auto delta = make_rosa<double>(ctx, w0.view(), RosaForward::dense_add);
  Matrix<double, Cpu> y(kN, kOut), y2(kN, kOut), dx(kN, kIn), dx2(kN, kIn);
  full.forward(ctx, x.view(), y.view());
  full.backward(ctx, x.view(), dy.view(), dx.view());
  gemm(ctx, Op::N, Op::T, 1.0, x.view(), w0.view(), 0.0, y2.view());
  delta.forward_delta(ctx, x.view(), y2.view());
  gemm(ctx, Op::N, Op::N, 1.0, dy.view(), w0.view(), 0.0, dx2.view());
  delta.backward_delta(ctx, x.view(), dy.view(), dx2.view());
  EXPECT_LT(relative_error(as_const(y2.view()), as_const(y.view())), 1e-14);
  EXPECT_LT(relative_error(as_const(dx2.view()), as_const(dx.view())), 1e-14);
  for (int p = 0; p < 3; ++p)
    EXPECT_LT(
        relative_error(as_const(delta.parameters()[p].grad), as_const(full.parameters()[p].grad)),
        1e-14);
}

TEST(Rosa, WithoutMaskItIsLora) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  auto dy = random_matrix<float>(kN, kOut, 3);
  const LoraConfig lcfg{.r = kR, .init = LoraInit::none, .seed = 4};
  Rosa<float, Cpu> rosa(ctx, w0.view(), {.lora = lcfg, .density = 0.2});
  Lora<float, Cpu> lora(ctx, w0.view(), lcfg);
  EXPECT_FALSE(rosa.has_mask());
  EXPECT_EQ(rosa.sparse_capacity(), static_cast<index_t>(0.2 * kOut * kIn));
  EXPECT_EQ(rosa.num_trainable(), lora.num_trainable() + rosa.sparse_capacity());
  Matrix<float, Cpu> y1(kN, kOut), y2(kN, kOut), dx1(kN, kIn), dx2(kN, kIn);
  rosa.forward(ctx, x.view(), y1.view());
  rosa.backward(ctx, x.view(), dy.view(), dx1.view());
  lora.forward(ctx, x.view(), y2.view());
  lora.backward(ctx, x.view(), dy.view(), dx2.view());
  EXPECT_TRUE(bitwise_equal(as_const(y1.view()), as_const(y2.view())));
  EXPECT_TRUE(bitwise_equal(as_const(dx1.view()), as_const(dx2.view())));
  EXPECT_EQ(norm(ctx, as_const(rosa.parameters()[2].grad)), 0.0);
  // The optimizer's view of S stays the same storage when the mask arrives.
  auto s_view = rosa.parameters()[2].value;
  rosa.set_mask(ctx, random_mask_pattern(kOut, kIn, rosa.sparse_capacity(), 5));
  EXPECT_EQ(rosa.parameters()[2].value.data(), s_view.data());
  EXPECT_TRUE(rosa.has_mask());
}

TEST(Rosa, AutomaticModeFollowsTheFixedRule) {
  HostCtx ctx;
  Matrix<float, Cpu> wf(kOut, kIn);
  Matrix<Eigen::bfloat16, Cpu> wb(kOut, kIn);
  const Rosa<float, Cpu> f(ctx, wf.view(), {});
  const Rosa<Eigen::bfloat16, Cpu> b(ctx, wb.view(), {});
  const Rosa<float, Cpu> forced(ctx, wf.view(), {.forward = RosaForward::spmm});
  EXPECT_EQ(f.forward_mode(), RosaForward::dense_add);
  EXPECT_EQ(b.forward_mode(), RosaForward::spmm);
  EXPECT_EQ(forced.forward_mode(), RosaForward::spmm);
}

TEST(Rosa, Bfloat16SpmmAgreesWithDouble) {
  HostCtx ctx;
  auto w0d = random_matrix<double>(kOut, kIn, 1);
  auto w0 = converted<Eigen::bfloat16>(as_const(w0d.view()));
  auto w0r = converted<double>(as_const(w0.view()));
  auto xd = random_matrix<double>(kN, kIn, 2);
  auto x = converted<Eigen::bfloat16>(as_const(xd.view()));
  auto xr = converted<double>(as_const(x.view()));
  auto low = make_rosa<Eigen::bfloat16>(ctx, w0.view(), RosaForward::automatic);
  auto ref = make_rosa<double>(ctx, w0r.view(), RosaForward::spmm);
  // Same S values (the bf16 layer's are float).
  copy(ctx, as_const(low.parameters()[2].value), ref.parameters()[2].value);
  ref.parameters_updated(ctx);
  Matrix<Eigen::bfloat16, Cpu> y(kN, kOut);
  Matrix<double, Cpu> yr(kN, kOut);
  low.forward(ctx, x.view(), y.view());
  ref.forward(ctx, xr.view(), yr.view());
  EXPECT_LT(relative_error(as_const(y.view()), as_const(yr.view())), 1e-2);
}

TEST(RosaMaskBuilder, PicksTheTopKOfTheAccumulatedGradient) {
  // With x = I (n = in), G = dyᵀ x = dyᵀ, so the expected mask is the top-k of
  // mean(dy_iᵀ²) or |mean(dy_iᵀ)| over the micro-batches.
  for (auto mode : {RosaGradAccumulation::mean_squared, RosaGradAccumulation::mean})
    for (bool on_host : {false, true}) {
      HostCtx ctx;
      auto w0 = random_matrix<double>(kOut, kIn, 1);
      Matrix<double, Cpu> eye(kIn, kIn);
      for (index_t i = 0; i < kIn; ++i) eye.view()(i, i) = 1;
      auto dy1 = random_matrix<double>(kIn, kOut, 2), dy2 = random_matrix<double>(kIn, kOut, 3);
      Rosa<double, Cpu> layer(ctx, w0.view(), {.lora = {.r = kR}, .density = 0.3});
      RosaMaskBuilder<double, Cpu> builder({.accumulation = mode, .accumulate_on_host = on_host});
      builder.add(layer);
      builder.start(ctx);
      Matrix<double, Cpu> y(kIn, kOut), dx(kIn, kIn);
      for (auto* dy : {&dy1, &dy2}) {
        layer.forward(ctx, eye.view(), y.view());
        layer.backward(ctx, eye.view(), dy->view(), dx.view());
      }
      builder.finish(ctx);
      ASSERT_TRUE(layer.has_mask());
      // Expected: brute force over the [out, in] scores.
      Matrix<double, Cpu> score(kOut, kIn);
      for (index_t o = 0; o < kOut; ++o)
        for (index_t i = 0; i < kIn; ++i) {
          const double a = dy1.view()(i, o), b = dy2.view()(i, o);
          score.view()(o, i) =
              mode == RosaGradAccumulation::mean ? std::abs(a + b) / 2 : (a * a + b * b) / 2;
        }
      std::vector<index_t> order(static_cast<std::size_t>(kOut * kIn));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](index_t p, index_t q) { return score.data()[p] > score.data()[q]; });
      const index_t k = layer.sparse_capacity();
      std::vector<index_t> expected(order.begin(), order.begin() + k);
      std::sort(expected.begin(), expected.end());
      const auto s = std::as_const(layer.sparse()).view();
      std::vector<index_t> got;
      for (index_t r = 0; r < s.rows; ++r)
        for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e)
          got.push_back(r * kIn + s.col_indices[e]);
      EXPECT_EQ(got, expected);
      // The mask is in place and S starts at zero; the builder stopped observing.
      EXPECT_EQ(norm(ctx, as_const(layer.parameters()[2].value)), 0.0);
      EXPECT_FALSE(builder.collecting());
    }
}

TEST(RosaMaskBuilder, FinishOnAMergedLayerThrowsAndChangesNothing) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto original = random_matrix<double>(kOut, kIn, 1);
  Rosa<double, Cpu> layer = make_rosa<double>(ctx, as_const(w0.view()), RosaForward::dense_add);
  RosaMaskBuilder<double, Cpu> builder;
  builder.add(layer);
  builder.start(ctx);
  auto x = random_matrix<double>(kN, kIn, 4), dy = random_matrix<double>(kN, kOut, 5);
  Matrix<double, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  const auto s = std::as_const(layer.sparse()).view();
  const std::vector<std::int32_t> cols_before(s.col_indices, s.col_indices + s.nnz);
  ASSERT_TRUE(layer.merge(ctx, w0.view()));
  expect_error([&] { builder.finish(ctx); }, ErrorKind::state, {"merged", "unmerge"});
  const auto after = std::as_const(layer.sparse()).view();
  EXPECT_EQ(std::vector<std::int32_t>(after.col_indices, after.col_indices + after.nnz),
            cols_before);
  ASSERT_TRUE(layer.unmerge(ctx, w0.view()));
  EXPECT_LT(relative_error(as_const(w0.view()), as_const(original.view())), 1e-12);
}

TEST(Rosa, BadInputThrows) {
  HostCtx ctx;
  Matrix<float, Cpu> w0(kOut, kIn);
  expect_error([&] { Rosa<float, Cpu>(ctx, w0.view(), {.density = 1.5}); },
               ErrorKind::invalid_argument, {"density is 1.5", "[0, 1]"});
  expect_error([&] { Rosa<float, Cpu>(ctx, w0.view(), {.lora = {.r = 0}}); },
               ErrorKind::invalid_argument, {"r is 0"});
  Rosa<float, Cpu> layer(ctx, w0.view(), {.density = 0.1});
  expect_error([&] { layer.set_mask(ctx, random_mask_pattern(kOut, kIn, 10, 1)); },
               ErrorKind::shape, {"pattern has 10 entries", "room for 4"});
  expect_error([&] { layer.set_mask(ctx, random_mask_pattern(kIn, kOut, 2, 1)); }, ErrorKind::shape,
               {"pattern is 7 x 6"});
  Matrix<float, Cpu> x(kN, kIn + 1), y(kN, kOut);
  expect_error([&] { layer.forward(ctx, x.view(), y.view()); }, ErrorKind::shape,
               {"Rosa::forward", "x has 8 columns"});
  RosaMaskBuilder<float, Cpu> builder;
  expect_error([&] { builder.add(layer, 0.5); }, ErrorKind::invalid_argument,
               {"density 0.5", "room for 4"});
  expect_error([&] { builder.start(ctx); }, ErrorKind::state, {"no layer"});
  builder.add(layer);
  builder.start(ctx);
  expect_error([&] { builder.finish(ctx); }, ErrorKind::state, {"saw no backward"});
}

}  // namespace
}  // namespace peft::test
