// Lora<T, Cuda> against Lora<double, Cpu> built from the same config and seed. The factors are
// drawn on the host, so both layers start with identical parameters; dropout masks come from the
// same Philox streams, so they agree too. Compared: the adapter's own contribution
// (y − x W0ᵀ − b and dx − dy W0, with the base computed in double on the host), dA and dB, for
// forward/backward, forward_delta/backward_delta, caller-owned reserves used out of order,
// merge/unmerge and delta_weight, with dropout, fan_in_fan_out, bias, rsLoRA and strided views.
// Relative error bounds: 1e-5 for float, 1e-12 for double, 1e-2 for __half and __nv_bfloat16.

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <ostream>
#include <string>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

struct LoraCase {
  DType dtype;
  index_t n, in, out, r;
  float dropout = 0.0f;
  bool fan_in_fan_out = false;
  bool bias = false;
  bool strided = false;  // x, y, dy, dx and W0 as blocks of larger device matrices
  bool rslora = false;
};

std::string label(const LoraCase& c) {
  return peft::detail::concat(name(c.dtype), "_n", c.n, "_in", c.in, "_out", c.out, "_r", c.r,
                              c.dropout > 0 ? "_dropout" : "", c.fan_in_fan_out ? "_fanin" : "",
                              c.bias ? "_bias" : "", c.strided ? "_strided" : "",
                              c.rslora ? "_rslora" : "");
}

void PrintTo(const LoraCase& c, std::ostream* os) {
  *os << label(c);
}

double tolerance(DType t) {
  switch (t) {
    case DType::f32:
      return 1e-5;
    case DType::f64:
      return 1e-12;
    default:
      return 1e-2;
  }
}

double frobenius(HostView m) {
  double s = 0;
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) s += m(i, j) * m(i, j);
  return std::sqrt(s);
}

/// Both layers over one problem. The frozen weight is small (|W0| <= 0.1) so that the base does
/// not dwarf the adapter's contribution in the 16-bit outputs.
struct Pair {
  LoraCase c;
  LoraConfig cfg;
  LayerOptions opts{.stream_id = 5};
  HostMatrix w0, bias;
  HostCtx ctx;
  std::unique_ptr<Lora<double, Cpu>> cpu;
  std::unique_ptr<GpuLora> gpu;
  std::uint32_t seed = 100;

  explicit Pair(const LoraCase& lc) : c(lc) {
    cfg = LoraConfig{.r = c.r,
                     .alpha = 2.0 * double(c.r),
                     .dropout = c.dropout,
                     .use_rslora = c.rslora,
                     .fan_in_fan_out = c.fan_in_fan_out,
                     .init = LoraInit::none,
                     .seed = 11};
    w0 = c.fan_in_fan_out ? random_matrix(c.dtype, c.in, c.out, 1, 0.1)
                          : random_matrix(c.dtype, c.out, c.in, 1, 0.1);
    if (c.bias) bias = random_matrix(c.dtype, 1, c.out, 2, 0.1);
    const VectorView<const double, Cpu> b = c.bias
                                                ? VectorView<const double, Cpu>(bias.data(), c.out)
                                                : VectorView<const double, Cpu>();
    cpu = std::make_unique<Lora<double, Cpu>>(ctx, w0.view(), cfg, opts, b);
    gpu = make_lora(c.dtype, w0.view(), cfg, opts, bias.view(), c.strided);
  }

  HostMatrix random(index_t rows, index_t cols, double scale = 1.0) {
    return random_matrix(c.dtype, rows, cols, ++seed, scale);
  }
  DeviceMatrix device(HostView m) const { return DeviceMatrix(c.dtype, m, c.strided); }
  /// An output on the device: NaN everywhere, so anything left unwritten shows.
  DeviceMatrix output(index_t rows, index_t cols) const {
    return DeviceMatrix(c.dtype, rows, cols, c.strided);
  }

  /// x W0ᵀ + b in double.
  HostMatrix base_y(HostView x) {
    HostMatrix y(x.rows(), c.out);
    cpu::gemm(ctx, Op::N, c.fan_in_fan_out ? Op::N : Op::T, 1.0, x, w0.view(), 0.0, y.view());
    if (c.bias)
      for (index_t i = 0; i < y.rows(); ++i)
        for (index_t j = 0; j < y.cols(); ++j) y.view()(i, j) += bias.view()(0, j);
    return y;
  }
  /// dy W0 in double (the base's part of dx).
  HostMatrix base_dx(HostView dy) {
    HostMatrix dx(dy.rows(), c.in);
    cpu::gemm(ctx, Op::N, c.fan_in_fan_out ? Op::T : Op::N, 1.0, dy, w0.view(), 0.0, dx.view());
    return dx;
  }

  /// got − base against expected − base.
  void expect_part(const char* what, HostView got, HostView expected, HostView base) {
    const HostMatrix g = difference(got, base), e = difference(expected, base);
    EXPECT_GT(frobenius(e.view()), 1e-3 * frobenius(base) + 1e-12)
        << what << ": the adapter contributes nothing, the comparison would be vacuous";
    EXPECT_LT(relative_error(g.view(), e.view()), tolerance(c.dtype)) << what;
  }

  void expect_gradients_match() {
    auto params = cpu->parameters();
    for (std::size_t p = 0; p < params.size(); ++p) {
      const HostMatrix expected = copy_of(as_const(params[p].grad));
      EXPECT_GT(frobenius(expected.view()), 0.0) << params[p].name;
      EXPECT_LT(relative_error(gpu->gradient(p).view(), expected.view()), tolerance(c.dtype))
          << "gradient of " << params[p].name;
    }
  }
};

class CudaLora : public CudaTest, public ::testing::WithParamInterface<LoraCase> {};

TEST_P(CudaLora, SameParametersAsCpu) {
  Pair s(GetParam());
  auto params = s.cpu->parameters();
  const auto names = s.gpu->parameter_names();
  ASSERT_EQ(names.size(), params.size());
  for (std::size_t p = 0; p < params.size(); ++p) {
    EXPECT_EQ(names[p], params[p].name);
    EXPECT_TRUE(bitwise_equal(s.gpu->parameter(p).view(), as_const(params[p].value)))
        << params[p].name;
    EXPECT_EQ(frobenius(s.gpu->gradient(p).view()), 0.0);
  }
  EXPECT_EQ(s.gpu->reserve_bytes(7) > 0, true);
}

TEST_P(CudaLora, ForwardBackwardMatchCpu) {
  Pair s(GetParam());
  const LoraCase& c = s.c;
  // The second round accumulates into the gradients and draws a new dropout mask.
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(peft::detail::concat("round ", round));
    const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
    DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
    DeviceMatrix y_d = s.output(c.n, c.out), dx_d = s.output(c.n, c.in);
    s.gpu->forward(x_d, y_d);
    s.gpu->backward(x_d, dy_d, dx_d);

    HostMatrix y(c.n, c.out), dx(c.n, c.in);
    s.cpu->forward(s.ctx, x.view(), y.view());
    s.cpu->backward(s.ctx, x.view(), dy.view(), dx.view());

    s.expect_part("y", y_d.download().view(), y.view(), s.base_y(x.view()).view());
    s.expect_part("dx", dx_d.download().view(), dx.view(), s.base_dx(dy.view()).view());
    s.expect_gradients_match();
    EXPECT_TRUE(y_d.gaps_untouched());
    EXPECT_TRUE(dx_d.gaps_untouched());
    EXPECT_TRUE(x_d.gaps_untouched());
  }
}

TEST_P(CudaLora, BackwardWithoutDxMatchesCpu) {
  Pair s(GetParam());
  const LoraCase& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.output(c.n, c.out), no_dx;
  s.gpu->forward(x_d, y_d);
  s.gpu->backward(x_d, dy_d, no_dx);
  HostMatrix y(c.n, c.out);
  s.cpu->forward(s.ctx, x.view(), y.view());
  s.cpu->backward(s.ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  s.expect_gradients_match();
}

TEST_P(CudaLora, DeltaMatchesCpu) {
  Pair s(GetParam());
  const LoraCase& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  const HostMatrix y0 = s.random(c.n, c.out, 0.5), dx0 = s.random(c.n, c.in, 0.5);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.device(y0.view()), dx_d = s.device(dx0.view());
  s.gpu->forward_delta(x_d, y_d);
  s.gpu->backward_delta(x_d, dy_d, dx_d);

  HostMatrix y = copy_of(y0.view()), dx = copy_of(dx0.view());
  s.cpu->forward_delta(s.ctx, x.view(), y.view());
  s.cpu->backward_delta(s.ctx, x.view(), dy.view(), dx.view());

  // Accumulated on top of whatever the outputs held (here y0 and dx0).
  s.expect_part("y (delta)", y_d.download().view(), y.view(), y0.view());
  s.expect_part("dx (delta)", dx_d.download().view(), dx.view(), dx0.view());
  s.expect_gradients_match();
  EXPECT_TRUE(y_d.gaps_untouched());
  EXPECT_TRUE(dx_d.gaps_untouched());

  // Again without dx: only the gradients.
  DeviceMatrix no_dx;
  s.gpu->forward_delta(x_d, y_d);
  s.gpu->backward_delta(x_d, dy_d, no_dx);
  s.cpu->forward_delta(s.ctx, x.view(), y.view());
  s.cpu->backward_delta(s.ctx, x.view(), dy.view(), MatrixView<double, Cpu>());
  s.expect_gradients_match();
}

TEST_P(CudaLora, CallerOwnedReservesOutOfOrderMatchCpu) {
  Pair s(GetParam());
  const LoraCase& c = s.c;
  const index_t n1 = c.n, n2 = c.n + 2;
  const HostMatrix x1 = s.random(n1, c.in), dy1 = s.random(n1, c.out);
  const HostMatrix x2 = s.random(n2, c.in), dy2 = s.random(n2, c.out);
  DeviceMatrix x1_d = s.device(x1.view()), dy1_d = s.device(dy1.view());
  DeviceMatrix x2_d = s.device(x2.view()), dy2_d = s.device(dy2.view());
  DeviceMatrix y1_d = s.output(n1, c.out), y2_d = s.output(n2, c.out);
  DeviceMatrix dx1_d = s.output(n1, c.in), dx2_d = s.output(n2, c.in);
  DeviceBytes r1(s.gpu->reserve_bytes(n1)), r2(s.gpu->reserve_bytes(n2));
  // Pipeline order: both forwards, then the backwards in reverse.
  s.gpu->forward(x1_d, y1_d, r1);
  s.gpu->forward(x2_d, y2_d, r2);
  s.gpu->backward(x2_d, dy2_d, dx2_d, r2);
  s.gpu->backward(x1_d, dy1_d, dx1_d, r1);

  Vector<std::byte, Cpu> c1(s.cpu->reserve_bytes(n1)), c2(s.cpu->reserve_bytes(n2));
  HostMatrix y1(n1, c.out), y2(n2, c.out), dx1(n1, c.in), dx2(n2, c.in);
  s.cpu->forward(s.ctx, x1.view(), y1.view(), c1.view());
  s.cpu->forward(s.ctx, x2.view(), y2.view(), c2.view());
  s.cpu->backward(s.ctx, x2.view(), dy2.view(), dx2.view(), c2.view());
  s.cpu->backward(s.ctx, x1.view(), dy1.view(), dx1.view(), c1.view());

  s.expect_part("y1", y1_d.download().view(), y1.view(), s.base_y(x1.view()).view());
  s.expect_part("y2", y2_d.download().view(), y2.view(), s.base_y(x2.view()).view());
  s.expect_part("dx1", dx1_d.download().view(), dx1.view(), s.base_dx(dy1.view()).view());
  s.expect_part("dx2", dx2_d.download().view(), dx2.view(), s.base_dx(dy2.view()).view());
  s.expect_gradients_match();

  // The delta forms with reserves, interleaved the same way.
  const HostMatrix y0 = s.random(n1, c.out, 0.5), dx0 = s.random(n1, c.in, 0.5);
  DeviceMatrix yd_d = s.device(y0.view()), dxd_d = s.device(dx0.view());
  DeviceMatrix no_dx;
  s.gpu->forward_delta(x1_d, yd_d, r1);
  s.gpu->forward_delta(x2_d, y2_d, r2);
  s.gpu->backward_delta(x2_d, dy2_d, no_dx, r2);
  s.gpu->backward_delta(x1_d, dy1_d, dxd_d, r1);
  HostMatrix yd = copy_of(y0.view()), dxd = copy_of(dx0.view());
  s.cpu->forward_delta(s.ctx, x1.view(), yd.view(), c1.view());
  s.cpu->forward_delta(s.ctx, x2.view(), y2.view(), c2.view());
  s.cpu->backward_delta(s.ctx, x2.view(), dy2.view(), MatrixView<double, Cpu>(), c2.view());
  s.cpu->backward_delta(s.ctx, x1.view(), dy1.view(), dxd.view(), c1.view());
  s.expect_part("y (delta, reserve)", yd_d.download().view(), yd.view(), y0.view());
  s.expect_part("dx (delta, reserve)", dxd_d.download().view(), dxd.view(), dx0.view());
  s.expect_gradients_match();
}

TEST_P(CudaLora, DeltaWeightMergeUnmergeMatchCpu) {
  Pair s(GetParam());
  const LoraCase& c = s.c;
  HostMatrix delta(s.w0.rows(), s.w0.cols());
  s.cpu->delta_weight(s.ctx, delta.view());
  ASSERT_GT(frobenius(delta.view()), 0.0);
  EXPECT_LT(relative_error(s.gpu->delta_weight().view(), delta.view()), tolerance(c.dtype))
      << "delta_weight";

  EXPECT_TRUE(s.gpu->merge());
  EXPECT_FALSE(s.gpu->merge()) << "merging twice must do nothing";
  const HostMatrix merged = s.gpu->base_weight();
  EXPECT_LT(relative_error(difference(merged.view(), s.w0.view()).view(), delta.view()),
            tolerance(c.dtype))
      << "W0 after merge − W0";

  // The merged layer (base alone) equals the unmerged CPU layer; in evaluation, where neither
  // drops anything.
  s.gpu->set_training(false);
  s.cpu->set_training(false);
  const HostMatrix x = s.random(c.n, c.in);
  DeviceMatrix x_d = s.device(x.view()), y_d = s.output(c.n, c.out);
  s.gpu->forward(x_d, y_d);
  HostMatrix y(c.n, c.out);
  s.cpu->forward(s.ctx, x.view(), y.view());
  s.expect_part("y (merged)", y_d.download().view(), y.view(), s.base_y(x.view()).view());

  EXPECT_TRUE(s.gpu->unmerge());
  EXPECT_FALSE(s.gpu->unmerge());
  const HostMatrix restored = s.gpu->base_weight();
  EXPECT_LT(frobenius(difference(restored.view(), s.w0.view()).view()),
            tolerance(c.dtype) * frobenius(delta.view()))
      << "unmerge must restore W0";

  // Unmerged again: the adapter path runs as before.
  DeviceMatrix y2_d = s.output(c.n, c.out);
  s.gpu->forward(x_d, y2_d);
  s.expect_part("y (unmerged)", y2_d.download().view(), y.view(), s.base_y(x.view()).view());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaLora,
    ::testing::Values(LoraCase{DType::f32, 9, 13, 11, 4},
                      LoraCase{DType::f32, 17, 129, 33, 8, 0.25f, true, true, true},
                      // n = 1 and in = 3 without dropout: a mask could drop all of x and leave
                      // nothing to compare.
                      LoraCase{DType::f32, 1, 3, 17, 1, 0.0f, false, true, true},
                      LoraCase{DType::f32, 129, 17, 3, 3, 0.0f, true, false, false, true},
                      LoraCase{DType::f64, 9, 13, 11, 4, 0.1f, false, true, true},
                      LoraCase{DType::f64, 17, 129, 33, 8, 0.0f, true},
                      LoraCase{DType::f16, 17, 129, 65, 8},
                      LoraCase{DType::f16, 17, 129, 65, 8, 0.2f, true, true, true},
                      LoraCase{DType::bf16, 17, 129, 65, 8},
                      LoraCase{DType::bf16, 17, 129, 65, 8, 0.3f, true, true, true},
                      LoraCase{DType::bf16, 3, 17, 129, 16, 0.1f, false, true, false, true}),
    [](const auto& info) { return label(info.param); });

}  // namespace
}  // namespace peft::gpu::test
