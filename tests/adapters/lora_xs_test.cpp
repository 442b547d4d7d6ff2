// LoRA-XS on the CPU: the frozen factors are the truncated SVD of W0 (in both orientations and
// for 16-bit weights), ΔW = s U_r R Σ_r V_rᵀ, the init of R, factors given by the caller (a
// reload) are bit-identical and give bit-identical outputs, pulling back twice adds nothing,
// training inside the span of the factors converges, and every bad argument. The conformance
// suite (tests/conformance) runs the Adapter contract and the finite differences on top.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

static_assert(Adapter<LoraXs<float, Cpu>>);
static_assert(Adapter<LoraXs<double, Cpu>>);
static_assert(Adapter<LoraXs<Eigen::bfloat16, Cpu>>);
static_assert(std::is_same_v<LoraXs<Eigen::bfloat16, Cpu>::param_type, float>);

using Dense = Eigen::MatrixXd;

template <class T>
Dense to_dense(MatrixView<T, Cpu> v) {
  Dense d(v.rows(), v.cols());
  for (index_t i = 0; i < v.rows(); ++i)
    for (index_t j = 0; j < v.cols(); ++j) d(i, j) = convert_value<double>(v(i, j));
  return d;
}

template <class T>
Matrix<T, Cpu> to_matrix(const Dense& d) {
  Matrix<T, Cpu> m(d.rows(), d.cols());
  for (index_t i = 0; i < d.rows(); ++i)
    for (index_t j = 0; j < d.cols(); ++j) m.view()(i, j) = convert_value<T>(d(i, j));
  return m;
}

/// [out, in] with singular values 0.85^i and random singular vectors.
Dense spectrum_weight(index_t out, index_t in, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  const index_t k = std::min(out, in);
  auto orthonormal = [&](index_t rows) {
    Dense g(rows, k);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < k; ++j) g(i, j) = normal(gen);
    Eigen::HouseholderQR<Dense> qr(g);
    return Dense(qr.householderQ() * Dense::Identity(rows, k));
  };
  const Dense u = orthonormal(out), v = orthonormal(in);
  Eigen::VectorXd s(k);
  for (index_t i = 0; i < k; ++i) s(i) = std::pow(0.85, double(i));
  return u * s.asDiagonal() * v.transpose();
}

Dense transposed(const Dense& d) {
  return d.transpose();
}

template <class Layer>
Dense r_of(Layer& layer) {
  return to_dense(as_const(layer.parameters()[0].value));
}

template <class P>
Matrix<P, Cpu> copy_of(MatrixView<const P, Cpu> v) {
  Matrix<P, Cpu> m(v.rows(), v.cols());
  for (index_t i = 0; i < v.rows(); ++i)
    for (index_t j = 0; j < v.cols(); ++j) m.view()(i, j) = v(i, j);
  return m;
}

class LoraXsTest : public ::testing::Test {
 protected:
  /// R uniform in [-1, 1), so that the adapter's contribution is far from zero.
  template <class Layer>
  void randomise_r(Layer& layer, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> dist(-1, 1);
    auto r = layer.parameters()[0].value;
    for (index_t i = 0; i < r.rows(); ++i)
      for (index_t j = 0; j < r.cols(); ++j)
        r(i, j) = static_cast<typename Layer::param_type>(dist(gen));
    layer.parameters_updated(ctx);
  }

  HostCtx ctx;
};

// B = U_r has orthonormal columns, A = Σ_r V_rᵀ has orthogonal rows of norms σ_i, and B A is the
// best rank-r approximation of W0 (Eckart-Young), as Eigen's exact SVD gives it.
TEST_F(LoraXsTest, FrozenFactorsAreTheTruncatedSvdOfW0) {
  constexpr index_t out = 48, in = 36, r = 6;
  const Dense w = spectrum_weight(out, in, 3);
  auto w0 = to_matrix<double>(w);
  LoraXs<double, Cpu> layer(ctx, w0.view(), {.r = r});
  const Dense a = to_dense(layer.frozen_a()), b = to_dense(layer.frozen_b());
  ASSERT_EQ(a.rows(), r);
  ASSERT_EQ(a.cols(), in);
  ASSERT_EQ(b.rows(), out);
  ASSERT_EQ(b.cols(), r);
  EXPECT_LT((b.transpose() * b - Dense::Identity(r, r)).cwiseAbs().maxCoeff(), 1e-12);
  const Dense gram = a * a.transpose();
  for (index_t i = 0; i < r; ++i)
    for (index_t j = 0; j < r; ++j)
      EXPECT_NEAR(gram(i, j), i == j ? std::pow(0.85, 2.0 * double(i)) : 0.0, 1e-12);

  Eigen::JacobiSVD<Dense> exact(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Dense best = exact.matrixU().leftCols(r) * exact.singularValues().head(r).asDiagonal() *
                     exact.matrixV().leftCols(r).transpose();
  EXPECT_LT((b * a - best).norm(), 1e-10 * best.norm());

  // The same as the primitive with the config's options.
  Matrix<double, Cpu> u(out, r), vt(r, in);
  Vector<double, Cpu> s(r);
  cpu::truncated_svd(ctx, as_const(w0.view()), r, layer.config().svd, u.view(), s.view(),
                     vt.view());
  EXPECT_TRUE(bitwise_equal(as_const(u.view()), layer.frozen_b()));
}

// W0 given [in, out] (fan_in_fan_out) factorises the same logical weight.
TEST_F(LoraXsTest, FanInFanOutGivesTheSameFactors) {
  constexpr index_t out = 30, in = 40, r = 5;
  const Dense w = spectrum_weight(out, in, 4);
  auto w0 = to_matrix<double>(w);
  auto w0_t = to_matrix<double>(transposed(w));
  LoraXs<double, Cpu> plain(ctx, w0.view(), {.r = r});
  LoraXs<double, Cpu> fan(ctx, w0_t.view(), {.r = r, .fan_in_fan_out = true});
  EXPECT_LT(relative_error(fan.frozen_a(), plain.frozen_a()), 1e-12);
  EXPECT_LT(relative_error(fan.frozen_b(), plain.frozen_b()), 1e-12);
}

// A bf16 layer factorises in fp32: bit for bit the factors of a float layer over the same values.
TEST_F(LoraXsTest, SixteenBitWeightsFactoriseInFloat) {
  const Dense w = spectrum_weight(20, 24, 5);
  auto wb = to_matrix<Eigen::bfloat16>(w);
  auto wf = to_matrix<float>(to_dense(as_const(wb.view())));
  LoraXs<Eigen::bfloat16, Cpu> b16(ctx, wb.view(), {.r = 4});
  LoraXs<float, Cpu> f32(ctx, wf.view(), {.r = 4});
  EXPECT_TRUE(bitwise_equal(b16.frozen_a(), f32.frozen_a()));
  EXPECT_TRUE(bitwise_equal(b16.frozen_b(), f32.frozen_b()));
}

// ΔW = s U_r R Σ_r V_rᵀ, in both orientations.
TEST_F(LoraXsTest, DeltaWeightIsScaledUrRSigmaVt) {
  constexpr index_t out = 12, in = 10, r = 4;
  for (bool fan : {false, true}) {
    const Dense w = spectrum_weight(out, in, 6);
    auto w0 = to_matrix<double>(fan ? transposed(w) : w);
    LoraXs<double, Cpu> layer(ctx, w0.view(), {.r = r, .alpha = 3, .fan_in_fan_out = fan});
    auto rm = layer.parameters()[0].value;
    std::mt19937 gen(1);
    std::uniform_real_distribution<double> dist(-1, 1);
    for (index_t i = 0; i < r; ++i)
      for (index_t j = 0; j < r; ++j) rm(i, j) = dist(gen);
    layer.parameters_updated(ctx);
    Matrix<double, Cpu> delta(w0.rows(), w0.cols());
    layer.delta_weight(ctx, delta.view());
    Dense expected =
        3.0 / r * to_dense(layer.frozen_b()) * r_of(layer) * to_dense(layer.frozen_a());
    if (fan) expected.transposeInPlace();
    EXPECT_LT((to_dense(as_const(delta.view())) - expected).norm(), 1e-13 * expected.norm())
        << "fan_in_fan_out " << fan;
  }
}

// R ~ N(0, init_std²) from the layer's seed and stream, or exactly zero (the layer is the base).
TEST_F(LoraXsTest, InitOfR) {
  const Dense w = spectrum_weight(40, 40, 7);
  auto w0 = to_matrix<float>(w);
  LoraXs<float, Cpu> layer(ctx, w0.view(), {.r = 32, .seed = 3}, {.stream_id = 2});
  EXPECT_EQ(layer.num_trainable(), 32 * 32);
  ASSERT_EQ(layer.parameters().size(), 1u);
  EXPECT_EQ(layer.parameters()[0].name, "lora_xs_R");
  const Dense r = r_of(layer);
  const double std_dev = std::sqrt(r.squaredNorm() / double(r.size()));
  EXPECT_NEAR(std_dev, 1e-5, 1e-6);
  EXPECT_NEAR(r.mean(), 0.0, 1e-6);

  LoraXs<float, Cpu> same(ctx, w0.view(), {.r = 32, .seed = 3}, {.stream_id = 2});
  LoraXs<float, Cpu> other_stream(ctx, w0.view(), {.r = 32, .seed = 3}, {.stream_id = 5});
  LoraXs<float, Cpu> wider(ctx, w0.view(), {.r = 32, .init_std = 2e-5, .seed = 3},
                           {.stream_id = 2});
  EXPECT_EQ(r_of(same), r);
  EXPECT_NE(r_of(other_stream), r);
  EXPECT_LT((r_of(wider) - 2 * r).norm(), 1e-6 * r.norm());
  EXPECT_TRUE(bitwise_equal(other_stream.frozen_a(), layer.frozen_a()))
      << "the factors depend on W0 and the SVD options only";

  LoraXs<float, Cpu> zero(ctx, w0.view(), {.r = 8, .init = LoraXsInit::zeros});
  EXPECT_EQ(r_of(zero).norm(), 0.0);
  const auto x = random_matrix<float>(5, 40, 1);
  Matrix<float, Cpu> y(5, 40), y_base(5, 40);
  zero.forward(ctx, x.view(), y.view());
  gemm(ctx, Op::N, Op::T, 1.0, as_const(x.view()), as_const(w0.view()), 0.0, y_base.view());
  EXPECT_TRUE(bitwise_equal(as_const(y.view()), as_const(y_base.view())));
}

// A layer built from another's frozen factors (a reload) has bit-identical factors and, with the
// same R, gives bit-identical outputs and gradients; rebuilding by SVD from the same W0 too.
TEST_F(LoraXsTest, ReloadGivesBitIdenticalFactorsAndOutputs) {
  constexpr index_t out = 24, in = 20, r = 5, n = 7;
  auto w0 = to_matrix<float>(spectrum_weight(out, in, 8));
  const LoraXsConfig config{.r = r, .dropout = 0.2, .seed = 4};
  LoraXs<float, Cpu> original(ctx, w0.view(), config, {.stream_id = 1});
  randomise_r(original, 9);

  // The factors as a checkpoint would hold them.
  const Matrix<float, Cpu> a = copy_of(original.frozen_a()), b = copy_of(original.frozen_b());
  LoraXs<float, Cpu> reloaded(ctx, w0.view(), config,
                              LoraXsFrozenFactors<float, Cpu>(a.view(), b.view()),
                              {.stream_id = 1});
  LoraXs<float, Cpu> recomputed(ctx, w0.view(), config, {.stream_id = 1});
  for (auto* layer : {&reloaded, &recomputed}) {
    EXPECT_TRUE(bitwise_equal(layer->frozen_a(), original.frozen_a()));
    EXPECT_TRUE(bitwise_equal(layer->frozen_b(), original.frozen_b()));
    copy(ctx, as_const(original.parameters()[0].value), layer->parameters()[0].value);
    layer->parameters_updated(ctx);
  }
  const auto x = random_matrix<float>(n, in, 2);
  const auto dy = random_matrix<float>(n, out, 3);
  auto run = [&](LoraXs<float, Cpu>& layer) {
    Matrix<float, Cpu> y(n, out), dx(n, in);
    layer.forward(ctx, x.view(), y.view());
    layer.backward(ctx, x.view(), dy.view(), dx.view());
    layer.prepare_gradients(ctx);
    return std::pair{std::move(y), std::move(dx)};
  };
  const auto [y0, dx0] = run(original);
  for (auto* layer : {&reloaded, &recomputed}) {
    const auto [y, dx] = run(*layer);
    EXPECT_TRUE(bitwise_equal(y.view(), y0.view()));
    EXPECT_TRUE(bitwise_equal(dx.view(), dx0.view()));
    EXPECT_TRUE(bitwise_equal(as_const(layer->parameters()[0].grad),
                              as_const(original.parameters()[0].grad)));
  }
}

// LoraXsFrozen::later: no SVD, zero factors (the layer is the base) until set_frozen_factors,
// which a merged layer refuses.
TEST_F(LoraXsTest, FrozenLaterThenSetFrozenFactors) {
  constexpr index_t out = 8, in = 6, r = 2, n = 3;
  auto w0 = to_matrix<double>(spectrum_weight(out, in, 12));
  LoraXs<double, Cpu> svd(ctx, w0.view(), {.r = r, .seed = 1});
  LoraXs<double, Cpu> later(ctx, w0.view(), {.r = r, .seed = 1, .frozen = LoraXsFrozen::later});
  EXPECT_TRUE(svd.frozen_from_svd());
  EXPECT_FALSE(later.frozen_from_svd());
  EXPECT_EQ(to_dense(later.frozen_a()).norm(), 0.0);
  EXPECT_EQ(to_dense(later.frozen_b()).norm(), 0.0);
  const auto x = random_matrix<double>(n, in, 4);
  Matrix<double, Cpu> y(n, out), y_base(n, out);
  later.forward(ctx, x.view(), y.view());
  gemm(ctx, Op::N, Op::T, 1.0, as_const(x.view()), as_const(w0.view()), 0.0, y_base.view());
  EXPECT_TRUE(bitwise_equal(as_const(y.view()), as_const(y_base.view())));

  later.set_frozen_factors(ctx, {svd.frozen_a(), svd.frozen_b()});
  EXPECT_FALSE(later.frozen_from_svd());
  Matrix<double, Cpu> y_svd(n, out);
  svd.forward(ctx, x.view(), y_svd.view());
  later.forward(ctx, x.view(), y.view());
  EXPECT_TRUE(bitwise_equal(as_const(y.view()), as_const(y_svd.view())));
  EXPECT_TRUE(bitwise_equal(later.effective_a(), svd.effective_a()));
  EXPECT_TRUE(bitwise_equal(later.effective_b(), svd.frozen_b()));

  ASSERT_TRUE(later.merge(ctx, w0.view()));
  expect_error(
      [&] {
        later.set_frozen_factors(ctx, {svd.frozen_a(), svd.frozen_b()});
      },
      ErrorKind::state, {"LoraXs::set_frozen_factors", "merged"});
}

// dR = dA_eff (Σ_r V_rᵀ)ᵀ; a second prepare_gradients adds nothing; zero_grad clears.
TEST_F(LoraXsTest, PullBackIsTheChainRuleAndIdempotent) {
  constexpr index_t out = 10, in = 9, r = 3, n = 4;
  auto w0 = to_matrix<double>(spectrum_weight(out, in, 10));
  LoraXs<double, Cpu> layer(ctx, w0.view(), {.r = r, .alpha = 2});
  randomise_r(layer, 1);
  const auto x = random_matrix<double>(n, in, 2);
  const auto dy = random_matrix<double>(n, out, 3);
  Matrix<double, Cpu> y(n, out);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  layer.prepare_gradients(ctx);
  const Dense first = to_dense(as_const(layer.parameters()[0].grad));
  layer.prepare_gradients(ctx);
  EXPECT_EQ(to_dense(as_const(layer.parameters()[0].grad)), first);

  // dA_eff = s (dy U_r)ᵀ x, so dR = s U_rᵀ dyᵀ x (Σ_r V_rᵀ)ᵀ.
  const Dense expected = 2.0 / r * to_dense(layer.frozen_b()).transpose() *
                         to_dense(as_const(dy.view())).transpose() * to_dense(as_const(x.view())) *
                         to_dense(layer.frozen_a()).transpose();
  EXPECT_LT((first - expected).norm(), 1e-13 * expected.norm());
  layer.zero_grad(ctx);
  EXPECT_EQ(to_dense(as_const(layer.parameters()[0].grad)).norm(), 0.0);
  layer.prepare_gradients(ctx);
  EXPECT_EQ(to_dense(as_const(layer.parameters()[0].grad)).norm(), 0.0);
}

// A target inside the span of the frozen factors, y = x (W0 + U_r R* Σ_r V_rᵀ)ᵀ, is learnt by
// AdamW from R = 0: the loss falls by orders of magnitude, only r² numbers train.
TEST_F(LoraXsTest, TrainsTowardsATargetInItsSpan) {
  constexpr index_t out = 16, in = 12, r = 4, n = 64;
  auto w0 = to_matrix<float>(spectrum_weight(out, in, 11));
  LoraXs<float, Cpu> layer(ctx, w0.view(), {.r = r, .alpha = 4, .init = LoraXsInit::zeros});
  Dense r_true(r, r);
  std::mt19937 gen(2);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t i = 0; i < r; ++i)
    for (index_t j = 0; j < r; ++j) r_true(i, j) = dist(gen);
  const Dense w_target = to_dense(as_const(w0.view())) +
                         to_dense(layer.frozen_b()) * r_true * to_dense(layer.frozen_a());
  const auto x = random_matrix<float>(n, in, 3);
  const auto y_target = to_matrix<float>(to_dense(as_const(x.view())) * w_target.transpose());

  AdamW<float, Cpu> optimizer({.lr = 0.05, .weight_decay = 0});
  optimizer.add(layer);
  Matrix<float, Cpu> y(n, out), dy(n, out);
  double first_loss = 0, loss = 0;
  for (int step = 0; step < 300; ++step) {
    layer.forward(ctx, x.view(), y.view());
    loss = 0;
    for (index_t i = 0; i < y.size(); ++i) {
      const double d = double(y.data()[i]) - double(y_target.data()[i]);
      dy.data()[i] = static_cast<float>(2 * d / double(n));
      loss += d * d / double(n);
    }
    if (step == 0) first_loss = loss;
    layer.backward(ctx, x.view(), dy.view(), MatrixView<float, Cpu>());
    optimizer.step(ctx);
    layer.zero_grad(ctx);
  }
  EXPECT_GT(first_loss, 0.1);
  EXPECT_LT(loss, 1e-3 * first_loss);
}

TEST_F(LoraXsTest, BadArgumentsThrow) {
  auto w0 = random_matrix<float>(6, 4, 1);
  auto make = [&](const LoraXsConfig& config) { LoraXs<float, Cpu>(ctx, w0.view(), config); };
  expect_error([&] { make({.r = 0}); }, ErrorKind::invalid_argument, {"LoraXs", "r is 0"});
  expect_error([&] { make({.r = 5}); }, ErrorKind::invalid_argument,
               {"LoraXs", "r is 5", "min(in_features, out_features) = 4"});
  expect_error([&] { make({.r = 2, .dropout = 1.0}); }, ErrorKind::invalid_argument,
               {"dropout is 1"});
  expect_error([&] { make({.r = 2, .alpha = std::nan("")}); }, ErrorKind::invalid_argument,
               {"alpha is nan"});
  expect_error([&] { make({.r = 2, .init_std = -1}); }, ErrorKind::invalid_argument,
               {"init_std is -1"});
  expect_error([&] { make({.r = 2, .svd = {.oversampling = -3}}); }, ErrorKind::invalid_argument,
               {"svd.oversampling is -3"});
  expect_error([&] { make({.r = 2, .svd = {.power_iterations = -1}}); },
               ErrorKind::invalid_argument, {"svd.power_iterations is -1"});

  Matrix<float, Cpu> a(2, 4), b(6, 2), bad_a(2, 5), bad_b(5, 2);
  auto with = [&](const Matrix<float, Cpu>& fa, const Matrix<float, Cpu>& fb) {
    LoraXs<float, Cpu>(ctx, w0.view(), {.r = 2},
                       LoraXsFrozenFactors<float, Cpu>(fa.view(), fb.view()));
  };
  expect_error([&] { with(bad_a, b); }, ErrorKind::shape,
               {"frozen A", "is 2 x 5", "expected 2 x 4"});
  expect_error([&] { with(a, bad_b); }, ErrorKind::shape,
               {"frozen B", "is 5 x 2", "expected 6 x 2"});
  b.data()[3] = std::numeric_limits<float>::infinity();
  expect_error([&] { with(a, b); }, ErrorKind::invalid_argument, {"non-finite"});
  // The transposed weight: in = 6, out = 4.
  expect_error(
      [&] {
        LoraXs<float, Cpu>(ctx, w0.view(), {.r = 2, .fan_in_fan_out = true},
                           LoraXsFrozenFactors<float, Cpu>(a.view(), bad_b.view()));
      },
      ErrorKind::shape, {"frozen A", "is 2 x 4", "expected 2 x 6"});
}

}  // namespace
}  // namespace peft::test
