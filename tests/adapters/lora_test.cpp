// Behaviour of Lora on the CPU: init, forward equivalences, merging, reserves, precision,
// views, training, and every bad argument.

#include <gtest/gtest.h>

#include <type_traits>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

static_assert(Adapter<Lora<float, Cpu>>);
static_assert(Adapter<Lora<double, Cpu>>);
static_assert(Adapter<Lora<Eigen::bfloat16, Cpu>>);
static_assert(std::is_same_v<Lora<Eigen::bfloat16, Cpu>::param_type, float>);

constexpr index_t kN = 9, kIn = 13, kOut = 11, kR = 4;

LoraConfig random_config(float dropout = 0.0f) {
  return {.r = kR, .alpha = 8, .dropout = dropout, .init = LoraInit::none, .seed = 3};
}

/// y − x W0ᵀ computed with the naive product (the adapter's own contribution).
template <class T>
Matrix<double, Cpu> adapter_part(MatrixView<const T, Cpu> y, MatrixView<const T, Cpu> x,
                                 MatrixView<const T, Cpu> w0) {
  auto base = naive_product(x, false, w0, true);
  Matrix<double, Cpu> d(y.rows(), y.cols());
  for (index_t i = 0; i < y.rows(); ++i)
    for (index_t j = 0; j < y.cols(); ++j)
      d.view()(i, j) = convert_value<double>(y(i, j)) - base.view()(i, j);
  return d;
}

TEST(Lora, DefaultInitIsIdentity) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  for (LoraInit init : {LoraInit::kaiming_uniform, LoraInit::gaussian}) {
    Lora<float, Cpu> layer(ctx, w0.view(), {.r = kR, .init = init});
    Matrix<float, Cpu> y(kN, kOut), base(kN, kOut);
    layer.forward(ctx, x.view(), y.view());
    gemm(ctx, Op::N, Op::T, 1.0, x.view(), w0.view(), 0.0, base.view());
    EXPECT_TRUE(bitwise_equal(as_const(y.view()), as_const(base.view())));
    // A is random, B is zero.
    EXPECT_GT(norm(ctx, as_const(layer.parameters()[0].value)), 0.1);
    EXPECT_EQ(norm(ctx, as_const(layer.parameters()[1].value)), 0.0);
  }
}

TEST(Lora, InitialisationFollowsPeft) {
  HostCtx ctx;
  const index_t in = 400, r = 16;
  Matrix<float, Cpu> w0(8, in);
  Lora<float, Cpu> kaiming(ctx, w0.view(), {.r = r});
  auto a = kaiming.parameters()[0].value;
  const double bound = 1.0 / std::sqrt(double(in));
  double max_abs = 0, sum_sq = 0;
  for (index_t i = 0; i < a.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(double(a.data()[i])));
    sum_sq += double(a.data()[i]) * a.data()[i];
  }
  EXPECT_LE(max_abs, bound);
  EXPECT_GT(max_abs, 0.95 * bound);
  EXPECT_NEAR(sum_sq / double(a.size()), bound * bound / 3, 0.1 * bound * bound / 3);

  Lora<float, Cpu> gaussian(ctx, w0.view(), {.r = r, .init = LoraInit::gaussian});
  auto ga = gaussian.parameters()[0].value;
  double var = 0;
  for (index_t i = 0; i < ga.size(); ++i) var += double(ga.data()[i]) * ga.data()[i];
  var /= double(ga.size());
  EXPECT_NEAR(std::sqrt(var), 1.0 / r, 0.05 / r);

  // Same seed and stream: same factors; another stream_id: different factors.
  Lora<float, Cpu> same(ctx, w0.view(), {.r = r});
  Lora<float, Cpu> other(ctx, w0.view(), {.r = r}, {.stream_id = 1});
  EXPECT_TRUE(bitwise_equal(as_const(a), as_const(same.parameters()[0].value)));
  EXPECT_FALSE(bitwise_equal(as_const(a), as_const(other.parameters()[0].value)));
}

TEST(Lora, ScalingFollowsPeft) {
  HostCtx ctx;
  Matrix<float, Cpu> w0(4, 4);
  const Lora<float, Cpu> plain(ctx, w0.view(), {.r = 4, .alpha = 8});
  const Lora<float, Cpu> rslora(ctx, w0.view(), {.r = 4, .alpha = 8, .use_rslora = true});
  const Lora<float, Cpu> rank3(ctx, w0.view(), {.r = 3});
  EXPECT_DOUBLE_EQ(plain.scaling(), 2.0);
  EXPECT_DOUBLE_EQ(rslora.scaling(), 4.0);
  EXPECT_EQ(rank3.num_trainable(), 3 * (4 + 4));
}

TEST(Lora, ForwardMatchesDenseReferenceWithBias) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto bias = random_matrix<double>(1, kOut, 9);
  auto x = random_matrix<double>(kN, kIn, 2);
  Lora<double, Cpu> layer(ctx, w0.view(), random_config(), {},
                          VectorView<const double, Cpu>(bias.data(), kOut));
  Matrix<double, Cpu> y(kN, kOut);
  layer.forward(ctx, x.view(), y.view());
  // Reference: x (W0 + s B A)ᵀ + b.
  auto ba = naive_product(as_const(layer.parameters()[1].value), false,
                          as_const(layer.parameters()[0].value), false);
  Matrix<double, Cpu> w(kOut, kIn);
  for (index_t i = 0; i < w.size(); ++i)
    w.data()[i] = w0.data()[i] + layer.scaling() * ba.data()[i];
  auto ref = naive_product(as_const(x.view()), false, as_const(w.view()), true);
  for (index_t i = 0; i < kN; ++i)
    for (index_t j = 0; j < kOut; ++j) ref.view()(i, j) += bias.data()[j];
  EXPECT_LT(relative_error(as_const(y.view()), as_const(ref.view())), 1e-13);

  Matrix<double, Cpu> delta(kOut, kIn);
  layer.delta_weight(ctx, delta.view());
  for (index_t i = 0; i < delta.size(); ++i)
    EXPECT_NEAR(delta.data()[i], layer.scaling() * ba.data()[i], 1e-13);
}

TEST(Lora, ForwardDeltaPlusBaseEqualsForward) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  auto dy = random_matrix<float>(kN, kOut, 3);
  Lora<float, Cpu> full(ctx, w0.view(), random_config());
  Lora<float, Cpu> delta(ctx, w0.view(), random_config());
  Matrix<float, Cpu> y(kN, kOut), y2(kN, kOut), dx(kN, kIn), dx2(kN, kIn);
  full.forward(ctx, x.view(), y.view());
  full.backward(ctx, x.view(), dy.view(), dx.view());
  gemm(ctx, Op::N, Op::T, 1.0, x.view(), w0.view(), 0.0, y2.view());
  delta.forward_delta(ctx, x.view(), y2.view());
  gemm(ctx, Op::N, Op::N, 1.0, dy.view(), w0.view(), 0.0, dx2.view());
  delta.backward_delta(ctx, x.view(), dy.view(), dx2.view());
  EXPECT_LT(relative_error(as_const(y2.view()), as_const(y.view())), 1e-6);
  EXPECT_LT(relative_error(as_const(dx2.view()), as_const(dx.view())), 1e-6);
  for (int p = 0; p < 2; ++p)
    EXPECT_LT(
        relative_error(as_const(delta.parameters()[p].grad), as_const(full.parameters()[p].grad)),
        1e-6);
}

TEST(Lora, BackwardAccumulatesAndZeroGradClears) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  auto dy = random_matrix<double>(kN, kOut, 3);
  Lora<double, Cpu> layer(ctx, w0.view(), random_config());
  Matrix<double, Cpu> y(kN, kOut);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  auto once = converted<double>(as_const(layer.parameters()[0].grad));
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  for (index_t i = 0; i < once.size(); ++i)
    EXPECT_NEAR(layer.parameters()[0].grad.data()[i], 2 * once.data()[i], 1e-12);
  layer.zero_grad(ctx);
  EXPECT_EQ(norm(ctx, as_const(layer.parameters()[0].grad)), 0.0);
  EXPECT_EQ(norm(ctx, as_const(layer.parameters()[1].grad)), 0.0);
}

TEST(Lora, InterleavedMicroBatchesWithReservesMatchSimpleOrder) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x1 = random_matrix<double>(kN, kIn, 2), x2 = random_matrix<double>(kN + 3, kIn, 3);
  auto g1 = random_matrix<double>(kN, kOut, 4), g2 = random_matrix<double>(kN + 3, kOut, 5);
  const auto cfg = random_config(0.25f);

  Lora<double, Cpu> simple(ctx, w0.view(), cfg);
  Matrix<double, Cpu> y1(kN, kOut), y2(kN + 3, kOut), dx1(kN, kIn), dx2(kN + 3, kIn);
  simple.forward(ctx, x1.view(), y1.view());
  simple.backward(ctx, x1.view(), g1.view(), dx1.view());
  simple.forward(ctx, x2.view(), y2.view());
  simple.backward(ctx, x2.view(), g2.view(), dx2.view());

  Lora<double, Cpu> piped(ctx, w0.view(), cfg);
  Vector<std::byte, Cpu> r1(piped.reserve_bytes(kN)), r2(piped.reserve_bytes(kN + 3));
  Matrix<double, Cpu> py1(kN, kOut), py2(kN + 3, kOut), pdx1(kN, kIn), pdx2(kN + 3, kIn);
  piped.forward(ctx, x1.view(), py1.view(), r1.view());
  piped.forward(ctx, x2.view(), py2.view(), r2.view());
  piped.backward(ctx, x2.view(), g2.view(), pdx2.view(), r2.view());
  piped.backward(ctx, x1.view(), g1.view(), pdx1.view(), r1.view());

  EXPECT_TRUE(bitwise_equal(as_const(py1.view()), as_const(y1.view())));
  EXPECT_TRUE(bitwise_equal(as_const(py2.view()), as_const(y2.view())));
  EXPECT_LT(relative_error(as_const(pdx1.view()), as_const(dx1.view())), 1e-14);
  EXPECT_LT(relative_error(as_const(pdx2.view()), as_const(dx2.view())), 1e-14);
  for (int p = 0; p < 2; ++p)
    EXPECT_LT(
        relative_error(as_const(piped.parameters()[p].grad), as_const(simple.parameters()[p].grad)),
        1e-14);
}

TEST(Lora, MisalignedReserveThrows) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2), dy = random_matrix<double>(kN, kOut, 3);
  Lora<double, Cpu> layer(ctx, w0.view(), random_config(0.25f));
  Vector<std::byte, Cpu> storage(layer.reserve_bytes(kN) + 64);
  VectorView<std::byte, Cpu> shifted(storage.data() + 8, layer.reserve_bytes(kN));
  Matrix<double, Cpu> y(kN, kOut), dx(kN, kIn);
  expect_error([&] { layer.forward(ctx, x.view(), y.view(), shifted); },
               ErrorKind::invalid_argument, {"Lora::forward", "reserve", "64-byte aligned"});
  expect_error([&] { layer.backward(ctx, x.view(), dy.view(), dx.view(), shifted); },
               ErrorKind::invalid_argument, {"Lora::backward", "64-byte aligned"});
  VectorView<std::byte, Cpu> aligned(storage.data() + 64, layer.reserve_bytes(kN));
  layer.forward(ctx, x.view(), y.view(), aligned);
  layer.backward(ctx, x.view(), dy.view(), dx.view(), aligned);
}

TEST(Lora, DropoutOnlyInTraining) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  Lora<float, Cpu> with(ctx, w0.view(), random_config(0.5f));
  Lora<float, Cpu> without(ctx, w0.view(), random_config(0.0f));
  Matrix<float, Cpu> y1(kN, kOut), y2(kN, kOut), y3(kN, kOut);
  with.forward(ctx, x.view(), y1.view());
  without.forward(ctx, x.view(), y2.view());
  EXPECT_GT(relative_error(as_const(y1.view()), as_const(y2.view())), 1e-4);
  with.set_training(false);
  with.forward(ctx, x.view(), y3.view());
  EXPECT_TRUE(bitwise_equal(as_const(y3.view()), as_const(y2.view())));
  // A new call draws a new mask.
  with.set_training(true);
  Matrix<float, Cpu> y4(kN, kOut);
  with.forward(ctx, x.view(), y4.view());
  EXPECT_FALSE(bitwise_equal(as_const(y4.view()), as_const(y1.view())));
}

template <class T>
void check_merge(bool fan_in_fan_out, double tolerance) {
  HostCtx ctx;
  auto w0 = fan_in_fan_out ? random_matrix<T>(kIn, kOut, 1) : random_matrix<T>(kOut, kIn, 1);
  auto original = converted<T>(as_const(w0.view()));
  auto x = random_matrix<T>(kN, kIn, 2);
  auto cfg = random_config();
  cfg.fan_in_fan_out = fan_in_fan_out;
  Lora<T, Cpu> layer(ctx, w0.view(), cfg);
  Matrix<T, Cpu> unmerged(kN, kOut), merged(kN, kOut), dense(kN, kOut);
  layer.forward(ctx, x.view(), unmerged.view());
  EXPECT_TRUE(layer.merge(ctx, w0.view()));
  EXPECT_TRUE(layer.merged());
  EXPECT_FALSE(layer.merge(ctx, w0.view()));  // twice: nothing to do
  layer.forward(ctx, x.view(), merged.view());
  EXPECT_LT(relative_error(as_const(merged.view()), as_const(unmerged.view())), tolerance);
  // The merged weight is W0 + ΔW.
  gemm(ctx, Op::N, fan_in_fan_out ? Op::N : Op::T, 1.0, x.view(), w0.view(), 0.0, dense.view());
  EXPECT_TRUE(bitwise_equal(as_const(dense.view()), as_const(merged.view())));
  EXPECT_TRUE(layer.unmerge(ctx, w0.view()));
  EXPECT_FALSE(layer.unmerge(ctx, w0.view()));
  EXPECT_LT(relative_error(as_const(w0.view()), as_const(original.view())), tolerance);
}

TEST(Lora, MergeEquivalence) {
  check_merge<float>(false, 1e-5);
  check_merge<float>(true, 1e-5);
  check_merge<double>(false, 1e-13);
  check_merge<double>(true, 1e-13);
}

TEST(Lora, MergedLayerRefusesTrainingCalls) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  Lora<float, Cpu> layer(ctx, w0.view(), random_config());
  Matrix<float, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.merge(ctx, w0.view());
  expect_error([&] { layer.backward(ctx, x.view(), y.view(), dx.view()); }, ErrorKind::state,
               {"Lora::backward", "merged"});
  expect_error([&] { layer.forward_delta(ctx, x.view(), y.view()); }, ErrorKind::state,
               {"Lora::forward_delta", "merged"});
}

TEST(Lora, SafeMergeRefusesNonFiniteAndLeavesWeightUntouched) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto original = converted<float>(as_const(w0.view()));
  Lora<float, Cpu> layer(ctx, w0.view(), random_config());
  layer.parameters()[0].value(0, 0) = std::numeric_limits<float>::infinity();
  expect_error([&] { layer.safe_merge(ctx, w0.view()); }, ErrorKind::numeric,
               {"safe_merge", "non-finite"});
  EXPECT_TRUE(bitwise_equal(as_const(w0.view()), as_const(original.view())));
  EXPECT_FALSE(layer.merged());
  // A finite adapter merges as merge() does.
  layer.parameters()[0].value(0, 0) = 0.5f;
  auto copy_w0 = converted<float>(as_const(w0.view()));
  Lora<float, Cpu> twin(ctx, copy_w0.view(), random_config());
  twin.parameters()[0].value(0, 0) = 0.5f;
  EXPECT_TRUE(layer.safe_merge(ctx, w0.view()));
  twin.merge(ctx, copy_w0.view());
  EXPECT_TRUE(bitwise_equal(as_const(w0.view()), as_const(copy_w0.view())));
}

TEST(Lora, TransposedAndStridedViewsGiveTheSameResult) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  auto dy = random_matrix<double>(kN, kOut, 3);
  // W0ᵀ as a [in, out] fan_in_fan_out weight.
  Matrix<double, Cpu> w0t(kIn, kOut);
  for (index_t i = 0; i < kOut; ++i)
    for (index_t j = 0; j < kIn; ++j) w0t.view()(j, i) = w0.view()(i, j);
  // W0, x, y, dy, dx inside larger buffers (stride > cols).
  Matrix<double, Cpu> big_w(kOut + 2, kIn + 5), big_x(kN, kIn + 3), big_y(kN, kOut + 4),
      big_dy(kN, kOut + 1), big_dx(kN + 1, kIn + 2);
  auto sw = big_w.view().block(1, 2, kOut, kIn);
  auto sx = big_x.view().block(0, 3, kN, kIn);
  auto sy = big_y.view().block(0, 1, kN, kOut);
  auto sdy = big_dy.view().block(0, 0, kN, kOut);
  auto sdx = big_dx.view().block(1, 1, kN, kIn);
  copy(ctx, as_const(w0.view()), sw);
  copy(ctx, as_const(x.view()), sx);
  copy(ctx, as_const(dy.view()), sdy);

  auto cfg = random_config(0.2f);
  Lora<double, Cpu> plain(ctx, w0.view(), cfg);
  Lora<double, Cpu> strided(ctx, as_const(sw), cfg);
  cfg.fan_in_fan_out = true;
  Lora<double, Cpu> transposed(ctx, w0t.view(), cfg);

  Matrix<double, Cpu> y(kN, kOut), dx(kN, kIn), ty(kN, kOut), tdx(kN, kIn);
  plain.forward(ctx, x.view(), y.view());
  plain.backward(ctx, x.view(), dy.view(), dx.view());
  strided.forward(ctx, as_const(sx), sy);
  strided.backward(ctx, as_const(sx), as_const(sdy), sdx);
  transposed.forward(ctx, x.view(), ty.view());
  transposed.backward(ctx, x.view(), dy.view(), tdx.view());

  EXPECT_LT(relative_error(as_const(sy), as_const(y.view())), 1e-14);
  EXPECT_LT(relative_error(as_const(sdx), as_const(dx.view())), 1e-14);
  EXPECT_LT(relative_error(as_const(ty.view()), as_const(y.view())), 1e-14);
  EXPECT_LT(relative_error(as_const(tdx.view()), as_const(dx.view())), 1e-14);
  for (int p = 0; p < 2; ++p) {
    EXPECT_LT(relative_error(as_const(strided.parameters()[p].grad),
                             as_const(plain.parameters()[p].grad)),
              1e-14);
    EXPECT_LT(relative_error(as_const(transposed.parameters()[p].grad),
                             as_const(plain.parameters()[p].grad)),
              1e-14);
  }
  // Elements outside the strided views are untouched.
  EXPECT_EQ(big_y.view()(0, 0), 0.0);
  EXPECT_EQ(big_dx.view()(0, 0), 0.0);
}

/// The same layer in T and in double: the adapter's contribution, dA, dB and dx agree within T's
/// precision.
template <class T>
void check_precision(double tolerance) {
  HostCtx ctx;
  const index_t n = 24, in = 48, out = 40, r = 8;
  auto w0d = random_matrix<double>(out, in, 1);
  auto xd = random_matrix<double>(n, in, 2);
  auto dyd = random_matrix<double>(n, out, 3);
  auto w0 = converted<T>(as_const(w0d.view()));
  auto x = converted<T>(as_const(xd.view()));
  auto dy = converted<T>(as_const(dyd.view()));
  // Reference on the values T can represent.
  auto w0r = converted<double>(as_const(w0.view()));
  auto xr = converted<double>(as_const(x.view()));
  auto dyr = converted<double>(as_const(dy.view()));
  const LoraConfig cfg{.r = r, .alpha = 16, .init = LoraInit::none, .seed = 5};
  Lora<double, Cpu> ref(ctx, w0r.view(), cfg);
  Lora<T, Cpu> layer(ctx, w0.view(), cfg);

  Matrix<double, Cpu> yr(n, out), dxr(n, in);
  Matrix<T, Cpu> y(n, out), dx(n, in);
  ref.forward(ctx, xr.view(), yr.view());
  ref.backward(ctx, xr.view(), dyr.view(), dxr.view());
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());

  auto part = adapter_part<T>(y.view(), x.view(), w0.view());
  auto part_ref = adapter_part<double>(yr.view(), xr.view(), w0r.view());
  EXPECT_LT(relative_error(as_const(part.view()), as_const(part_ref.view())), tolerance);
  EXPECT_LT(relative_error(as_const(dx.view()), as_const(dxr.view())), tolerance);
  for (int p = 0; p < 2; ++p)
    EXPECT_LT(
        relative_error(as_const(layer.parameters()[p].grad), as_const(ref.parameters()[p].grad)),
        tolerance);
}

TEST(Lora, FloatAgreesWithDouble) {
  check_precision<float>(1e-5);
}
TEST(Lora, Bfloat16AgreesWithDouble) {
  check_precision<Eigen::bfloat16>(2e-2);
}

TEST(Lora, Bfloat16ParametersAreFloatAndReadDirectly) {
  // The adapter path computes in fp32 from the fp32 factors (no 16-bit copies to refresh).
  static_assert(std::is_same_v<Lora<Eigen::bfloat16, Cpu>::param_type, float>);
  HostCtx ctx;
  auto w0 = random_matrix<Eigen::bfloat16>(kOut, kIn, 1);
  auto x = random_matrix<Eigen::bfloat16>(kN, kIn, 2);
  Lora<Eigen::bfloat16, Cpu> layer(ctx, w0.view(), random_config());
  Matrix<Eigen::bfloat16, Cpu> y1(kN, kOut), y2(kN, kOut);
  layer.forward(ctx, x.view(), y1.view());
  auto b = layer.parameters()[1].value;
  scale(ctx, 3.0, b);
  layer.forward(ctx, x.view(), y2.view());
  EXPECT_FALSE(bitwise_equal(as_const(y1.view()), as_const(y2.view())));
}

TEST(Lora, Bfloat16GradientsAreFp32Accurate) {
  // PEFT casts the bf16 input to the fp32 adapter's dtype: dA and dB are fp32-accurate against a
  // float64 reference on the same bf16-rounded inputs (a 16-bit path gave ~2e-3).
  using Bf16 = Eigen::bfloat16;
  HostCtx ctx;
  const index_t n = 33, in = 48, out = 40, r = 4;
  auto w0 = random_matrix<Bf16>(out, in, 1);
  auto x = random_matrix<Bf16>(n, in, 2);
  auto dy = random_matrix<Bf16>(n, out, 3);
  auto w0r = converted<double>(as_const(w0.view()));
  auto xr = converted<double>(as_const(x.view()));
  auto dyr = converted<double>(as_const(dy.view()));
  const LoraConfig cfg{.r = r, .alpha = 16, .init = LoraInit::none, .seed = 5};
  Lora<Bf16, Cpu> layer(ctx, w0.view(), cfg);
  Lora<double, Cpu> ref(ctx, w0r.view(), cfg);
  // The same factors in both (the double layer's drawn values rounded to fp32).
  for (int p = 0; p < 2; ++p) {
    auto src = ref.parameters()[p].value;
    auto dst = layer.parameters()[p].value;
    for (index_t i = 0; i < src.rows(); ++i)
      for (index_t j = 0; j < src.cols(); ++j) {
        dst(i, j) = static_cast<float>(src(i, j));
        src(i, j) = dst(i, j);
      }
  }
  Matrix<Bf16, Cpu> y(n, out), dx(n, in);
  Matrix<double, Cpu> yr(n, out), dxr(n, in);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  ref.forward(ctx, xr.view(), yr.view());
  ref.backward(ctx, xr.view(), dyr.view(), dxr.view());
  for (int p = 0; p < 2; ++p)
    EXPECT_LT(
        relative_error(as_const(layer.parameters()[p].grad), as_const(ref.parameters()[p].grad)),
        1e-5)
        << layer.parameters()[p].name;
}

TEST(Lora, NoAllocationAfterPreallocate) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  auto dy = random_matrix<float>(kN, kOut, 3);
  Lora<float, Cpu> layer(ctx, w0.view(), random_config(0.1f));
  layer.preallocate(ctx, kN);
  const auto before = ctx.workspace().allocations();
  Matrix<float, Cpu> y(kN, kOut), dx(kN, kIn);
  for (int step = 0; step < 3; ++step) {
    layer.forward(ctx, x.view(), y.view());
    layer.backward(ctx, x.view(), dy.view(), dx.view());
    layer.forward_delta(ctx, x.view(), y.view());
    layer.backward_delta(ctx, x.view(), dy.view(), dx.view());
  }
  EXPECT_EQ(ctx.workspace().allocations(), before);
}

TEST(Lora, BadConfigThrows) {
  HostCtx ctx;
  Matrix<float, Cpu> w0(kOut, kIn);
  expect_error([&] { Lora<float, Cpu>(ctx, w0.view(), {.r = 0}); }, ErrorKind::invalid_argument,
               {"r is 0", ">= 1"});
  expect_error([&] { Lora<float, Cpu>(ctx, w0.view(), {.dropout = 1.0f}); },
               ErrorKind::invalid_argument, {"dropout is 1", "[0, 1)"});
  expect_error([&] { Lora<float, Cpu>(ctx, w0.view(), {.dropout = -0.1f}); },
               ErrorKind::invalid_argument, {"dropout is -0.1"});
  expect_error([&] { Lora<float, Cpu>(ctx, w0.view(), {.alpha = std::nan("")}); },
               ErrorKind::invalid_argument, {"alpha is nan", "finite"});
  expect_error(
      [&] { Lora<float, Cpu>(ctx, w0.view(), {.alpha = std::numeric_limits<double>::infinity()}); },
      ErrorKind::invalid_argument, {"alpha is inf"});
  expect_error([&] { Lora<float, Cpu>(ctx, MatrixView<const float, Cpu>(), {}); }, ErrorKind::shape,
               {"frozen weight is 0 x 0"});
  Matrix<float, Cpu> bias(1, kOut + 1);
  expect_error(
      [&] {
        Lora<float, Cpu>(ctx, w0.view(), {}, {},
                         VectorView<const float, Cpu>(bias.data(), kOut + 1));
      },
      ErrorKind::shape, {"bias has 12 elements", "11 (out_features)"});
}

TEST(Lora, BadShapesThrow) {
  HostCtx ctx;
  Matrix<float, Cpu> w0(kOut, kIn), other_w(kOut, kIn);
  Lora<float, Cpu> layer(ctx, w0.view(), random_config());
  Matrix<float, Cpu> x(kN, kIn), y(kN, kOut), dx(kN, kIn), dy(kN, kOut);
  Matrix<float, Cpu> bad_x(kN, kIn + 1), bad_y(kN, kOut - 1), short_y(kN - 1, kOut),
      bad_dx(kN, kIn - 2), bad_dy(kN + 1, kOut);
  expect_error([&] { layer.forward(ctx, bad_x.view(), y.view()); }, ErrorKind::shape,
               {"Lora::forward", "x has 14 columns", "13 (in_features)"});
  expect_error([&] { layer.forward(ctx, x.view(), bad_y.view()); }, ErrorKind::shape,
               {"y has 10 columns", "11 (out_features)"});
  expect_error([&] { layer.forward(ctx, x.view(), short_y.view()); }, ErrorKind::shape,
               {"y has 8 rows", "x has 9"});
  expect_error([&] { layer.forward_delta(ctx, bad_x.view(), y.view()); }, ErrorKind::shape,
               {"Lora::forward_delta", "x has 14 columns"});
  layer.forward(ctx, x.view(), y.view());
  expect_error([&] { layer.backward(ctx, x.view(), bad_dy.view(), dx.view()); }, ErrorKind::shape,
               {"Lora::backward", "dy has 10 rows", "x has 9"});
  expect_error([&] { layer.backward(ctx, x.view(), dy.view(), bad_dx.view()); }, ErrorKind::shape,
               {"dx is 9 x 11", "expected 9 x 13"});
  expect_error([&] { layer.backward_delta(ctx, x.view(), dy.view(), bad_dx.view()); },
               ErrorKind::shape, {"Lora::backward_delta", "dx is 9 x 11"});
  Vector<std::byte, Cpu> small(layer.reserve_bytes(kN) - 1);
  expect_error([&] { layer.forward(ctx, x.view(), y.view(), small.view()); }, ErrorKind::shape,
               {"reserve has", "needed for 9 rows"});
  expect_error([&] { layer.backward(ctx, x.view(), dy.view(), dx.view(), small.view()); },
               ErrorKind::shape, {"reserve has"});
  expect_error([&] { layer.merge(ctx, other_w.view()); }, ErrorKind::invalid_argument,
               {"Lora::merge", "frozen weight"});
  Matrix<float, Cpu> bad_delta(kIn, kOut);
  expect_error([&] { layer.delta_weight(ctx, bad_delta.view()); }, ErrorKind::shape,
               {"delta_weight", "out is 13 x 11"});
}

TEST(Lora, TrainingChangesOnlyTheAdapter) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto bias = random_matrix<float>(1, kOut, 7);
  auto w0_before = converted<float>(as_const(w0.view()));
  auto bias_before = converted<float>(as_const(bias.view()));
  auto x = random_matrix<float>(kN, kIn, 2);
  auto target = random_matrix<float>(kN, kOut, 3);
  Lora<float, Cpu> layer(ctx, w0.view(), {.r = kR, .alpha = 8, .dropout = 0.1f}, {},
                         VectorView<const float, Cpu>(bias.data(), kOut));
  auto a_before = converted<float>(as_const(layer.parameters()[0].value));
  AdamW<float, Cpu> opt({.lr = 1e-2});
  opt.add(layer);
  Matrix<float, Cpu> y(kN, kOut), dy(kN, kOut);
  auto loss = [&] {
    double l = 0;
    for (index_t i = 0; i < y.size(); ++i) l += 0.5 * std::pow(y.data()[i] - target.data()[i], 2);
    return l;
  };
  layer.set_training(false);
  layer.forward(ctx, x.view(), y.view());
  const double initial = loss();
  layer.set_training(true);
  for (int step = 0; step < 30; ++step) {
    layer.zero_grad(ctx);
    layer.forward(ctx, x.view(), y.view());
    for (index_t i = 0; i < y.size(); ++i) dy.data()[i] = y.data()[i] - target.data()[i];
    layer.backward(ctx, x.view(), dy.view(), MatrixView<float, Cpu>());
    opt.step(ctx);
  }
  layer.set_training(false);
  layer.forward(ctx, x.view(), y.view());
  EXPECT_LT(loss(), 0.9 * initial);
  EXPECT_TRUE(bitwise_equal(as_const(w0.view()), as_const(w0_before.view())));
  EXPECT_TRUE(bitwise_equal(as_const(bias.view()), as_const(bias_before.view())));
  EXPECT_FALSE(bitwise_equal(as_const(layer.parameters()[0].value), as_const(a_before.view())));
  EXPECT_GT(norm(ctx, as_const(layer.parameters()[1].value)), 0.0);
}

}  // namespace
}  // namespace peft::test
