// Rosa<T, Cuda> against Rosa<double, Cpu> built from the same config and seed, with the same
// mask (set_mask with a host CsrPattern) and the same values of S. The factors are drawn on the
// host (init = none: A and B both random), so both layers start with identical parameters;
// dropout masks come from the same Philox streams. Compared: the adapter's own contribution
// (y − x W0ᵀ − b and dx − dy W0, the base computed in double on the host), dA, dB and dS, for
// forward/backward, forward_delta/backward_delta, caller-owned reserves used out of order,
// merge/unmerge and delta_weight, in both forward modes (dense_add, spmm), with dropout,
// fan_in_fan_out, bias, strided views, masks with empty rows and masks below capacity; then
// changes of S's values and of the mask, and an optimizer step, which must reach the sparse
// products (Sᵀ and the 16-bit copies are refreshed by parameters_updated).
// RosaMaskBuilder<T, Cuda> (both accumulation modes, on the device and on the host) builds the
// CPU's mask; bad masks throw peft::Error.
// Relative error bounds: 1e-5 for float, 1e-12 for double, 1e-2 for __half and __nv_bfloat16.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cuda/sparse_reference.hpp"

namespace peft::gpu::test {
namespace {

struct RosaCase {
  DType dtype;
  index_t n, in, out, r;
  double density;
  RosaForward mode;
  float dropout = 0.0f;
  bool fan_in_fan_out = false;
  bool bias = false;
  bool strided = false;  // x, y, dy, dx and W0 as blocks of larger device matrices
  bool partial = false;  // a mask with fewer entries than the capacity
};

std::string label(const RosaCase& c) {
  return peft::detail::concat(name(c.dtype), "_n", c.n, "_in", c.in, "_out", c.out, "_r", c.r,
                              c.mode == RosaForward::spmm ? "_spmm" : "_denseadd",
                              c.dropout > 0 ? "_dropout" : "", c.fan_in_fan_out ? "_fanin" : "",
                              c.bias ? "_bias" : "", c.strided ? "_strided" : "",
                              c.partial ? "_partial" : "");
}

void PrintTo(const RosaCase& c, std::ostream* os) {
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

/// The dtype of the layer's parameters (param_t<T>).
DType param_dtype(DType t) {
  return t == DType::f64 ? DType::f64 : DType::f32;
}

/// Both layers over one problem. The frozen weight is small (|W0| <= 0.1) so that the base does
/// not dwarf the adapter's contribution in the 16-bit outputs.
struct Pair {
  RosaCase c;
  RosaConfig cfg;
  LayerOptions opts{.stream_id = 5};
  HostMatrix w0, bias;
  HostCtx ctx;
  std::unique_ptr<Rosa<double, Cpu>> cpu;
  std::unique_ptr<GpuRosa> gpu;
  std::uint32_t seed = 100;

  explicit Pair(const RosaCase& rc, bool with_mask = true) : c(rc) {
    cfg = RosaConfig{.lora = LoraConfig{.r = c.r,
                                        .alpha = 2.0 * double(c.r),
                                        .dropout = c.dropout,
                                        .fan_in_fan_out = c.fan_in_fan_out,
                                        .init = LoraInit::none,
                                        .seed = 11},
                     .density = c.density,
                     .forward = c.mode};
    w0 = c.fan_in_fan_out ? random_matrix(c.dtype, c.in, c.out, 1, 0.1)
                          : random_matrix(c.dtype, c.out, c.in, 1, 0.1);
    if (c.bias) bias = random_matrix(c.dtype, 1, c.out, 2, 0.1);
    const VectorView<const double, Cpu> b = c.bias
                                                ? VectorView<const double, Cpu>(bias.data(), c.out)
                                                : VectorView<const double, Cpu>();
    cpu = std::make_unique<Rosa<double, Cpu>>(ctx, w0.view(), cfg, opts, b);
    gpu = make_rosa(c.dtype, w0.view(), cfg, opts, bias.view(), c.strided);
    if (with_mask) {
      const index_t capacity = cpu->sparse_capacity();
      install_mask(pattern_with(c.out, c.in, c.partial ? capacity * 2 / 3 : capacity, 21));
    }
  }

  /// The same mask on both layers, then the same random values of S.
  void install_mask(const CsrPattern& pattern) {
    cpu->set_mask(ctx, pattern);
    gpu->set_mask(pattern);
    set_values(++seed);
  }

  /// S's values uniform in [-0.5, 0.5), in the parameters' type, on both layers.
  void set_values(std::uint32_t value_seed) {
    const index_t nnz = cpu->sparse().nnz();
    const HostMatrix values = random_matrix(param_dtype(c.dtype), 1, nnz, value_seed, 0.5);
    auto s = cpu->parameters()[2].value;
    for (index_t e = 0; e < nnz; ++e) s.data()[e] = values.data()[e];
    cpu->parameters_updated(ctx);
    gpu->set_sparse_values(values.view());
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
    EXPECT_GT(frobenius_norm(e.view()), 1e-3 * frobenius_norm(base) + 1e-12)
        << what << ": the adapter contributes nothing, the comparison would be vacuous";
    EXPECT_LT(relative_error(g.view(), e.view()), tolerance(c.dtype)) << what;
  }

  /// dA, dB and dS (all capacity entries of S: those past nnz must stay zero).
  void expect_gradients_match() {
    auto params = cpu->parameters();
    for (std::size_t p = 0; p < params.size(); ++p) {
      const HostMatrix expected = copy_of(as_const(params[p].grad));
      EXPECT_GT(frobenius_norm(expected.view()), 0.0) << params[p].name;
      EXPECT_LT(relative_error(gpu->gradient(p).view(), expected.view()), tolerance(c.dtype))
          << "gradient of " << params[p].name;
    }
  }

  /// One forward and backward of fresh inputs on both layers, compared.
  void expect_forward_backward_match(const char* what) {
    SCOPED_TRACE(what);
    const HostMatrix x = random(c.n, c.in), dy = random(c.n, c.out);
    DeviceMatrix x_d = device(x.view()), dy_d = device(dy.view());
    DeviceMatrix y_d = output(c.n, c.out), dx_d = output(c.n, c.in);
    gpu->forward(x_d, y_d);
    gpu->backward(x_d, dy_d, dx_d);
    HostMatrix y(c.n, c.out), dx(c.n, c.in);
    cpu->forward(ctx, x.view(), y.view());
    cpu->backward(ctx, x.view(), dy.view(), dx.view());
    expect_part("y", y_d.download().view(), y.view(), base_y(x.view()).view());
    expect_part("dx", dx_d.download().view(), dx.view(), base_dx(dy.view()).view());
    expect_gradients_match();
    EXPECT_TRUE(y_d.gaps_untouched());
    EXPECT_TRUE(dx_d.gaps_untouched());
  }
};

class CudaRosa : public CudaTest, public ::testing::WithParamInterface<RosaCase> {};

TEST_P(CudaRosa, SameParametersAndMaskAsCpu) {
  Pair s(GetParam());
  EXPECT_EQ(s.gpu->forward_mode(), s.cpu->forward_mode());
  EXPECT_EQ(s.gpu->sparse_capacity(), s.cpu->sparse_capacity());
  ASSERT_TRUE(s.gpu->has_mask());
  const CsrPattern mask = s.gpu->mask();
  const CsrView<const double, Cpu> expected = std::as_const(s.cpu->sparse()).view();
  ASSERT_EQ(mask.nnz(), expected.nnz);
  EXPECT_TRUE(std::equal(mask.row_offsets.begin(), mask.row_offsets.end(), expected.row_offsets));
  EXPECT_TRUE(std::equal(mask.col_indices.begin(), mask.col_indices.end(), expected.col_indices));
  auto params = s.cpu->parameters();
  const auto names = s.gpu->parameter_names();
  ASSERT_EQ(names.size(), params.size());
  for (std::size_t p = 0; p < params.size(); ++p) {
    EXPECT_EQ(names[p], params[p].name);
    EXPECT_TRUE(bitwise_equal(s.gpu->parameter(p).view(), as_const(params[p].value)))
        << params[p].name;
    EXPECT_EQ(frobenius_norm(s.gpu->gradient(p).view()), 0.0);
  }
}

TEST_P(CudaRosa, ForwardBackwardMatchCpu) {
  Pair s(GetParam());
  // The second round accumulates into the gradients and draws a new dropout mask.
  s.expect_forward_backward_match("round 0");
  s.expect_forward_backward_match("round 1");
}

TEST_P(CudaRosa, BackwardWithoutDxMatchesCpu) {
  Pair s(GetParam());
  const RosaCase& c = s.c;
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

TEST_P(CudaRosa, DeltaMatchesCpu) {
  Pair s(GetParam());
  const RosaCase& c = s.c;
  const HostMatrix x = s.random(c.n, c.in), dy = s.random(c.n, c.out);
  const HostMatrix y0 = s.random(c.n, c.out, 0.5), dx0 = s.random(c.n, c.in, 0.5);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y_d = s.device(y0.view()), dx_d = s.device(dx0.view());
  s.gpu->forward_delta(x_d, y_d);
  s.gpu->backward_delta(x_d, dy_d, dx_d);

  HostMatrix y = copy_of(y0.view()), dx = copy_of(dx0.view());
  s.cpu->forward_delta(s.ctx, x.view(), y.view());
  s.cpu->backward_delta(s.ctx, x.view(), dy.view(), dx.view());

  // Accumulated on top of whatever the outputs held (here y0 and dx0): x Sᵀ + LoRA, dy S + LoRA.
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

TEST_P(CudaRosa, CallerOwnedReservesOutOfOrderMatchCpu) {
  // Two batch sizes alternate: the sparse products re-plan for each.
  Pair s(GetParam());
  const RosaCase& c = s.c;
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

TEST_P(CudaRosa, DeltaWeightMergeUnmergeMatchCpu) {
  Pair s(GetParam());
  const RosaCase& c = s.c;
  HostMatrix delta(s.w0.rows(), s.w0.cols());
  s.cpu->delta_weight(s.ctx, delta.view());
  ASSERT_GT(frobenius_norm(delta.view()), 0.0);
  EXPECT_LT(relative_error(s.gpu->delta_weight().view(), delta.view()), tolerance(c.dtype))
      << "delta_weight = s B A + S";

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
  EXPECT_LT(frobenius_norm(difference(restored.view(), s.w0.view()).view()),
            tolerance(c.dtype) * frobenius_norm(delta.view()))
      << "unmerge must restore W0";

  // Unmerged again: the adapter path runs as before.
  DeviceMatrix y2_d = s.output(c.n, c.out);
  s.gpu->forward(x_d, y2_d);
  s.expect_part("y (unmerged)", y2_d.download().view(), y.view(), s.base_y(x.view()).view());
}

TEST_P(CudaRosa, NewValuesAndNewMasksReachTheProducts) {
  // The sparse products keep descriptors of S's (and Sᵀ's) value arrays between calls: new
  // values must show in the next call, and a new mask (same capacity, another pattern) must
  // replace the old one everywhere.
  Pair s(GetParam());
  const RosaCase& c = s.c;
  s.expect_forward_backward_match("first mask");
  s.set_values(77);
  s.expect_forward_backward_match("new values");
  const index_t capacity = s.cpu->sparse_capacity();
  s.install_mask(pattern_with(c.out, c.in, std::max<index_t>(capacity / 2, 1), 78, false));
  s.expect_forward_backward_match("second mask");
  HostMatrix delta(s.w0.rows(), s.w0.cols());
  s.cpu->delta_weight(s.ctx, delta.view());
  EXPECT_LT(relative_error(s.gpu->delta_weight().view(), delta.view()), tolerance(c.dtype))
      << "delta_weight with the second mask";
}

TEST_P(CudaRosa, OptimizerStepReachesTheProducts) {
  // AdamW steps the GPU layer's parameters (S included) and calls parameters_updated; the CPU
  // layer then takes the stepped values, and both must agree again (Sᵀ's values and the 16-bit
  // copies follow the step).
  Pair s(GetParam());
  s.gpu->add_to_optimizer({.lr = 0.05, .weight_decay = 0.1});
  s.expect_forward_backward_match("before the step");
  const HostMatrix s_before = s.gpu->parameter(2);
  s.gpu->optimizer_step();
  s.gpu->zero_grad();
  s.cpu->zero_grad(s.ctx);
  EXPECT_GT(relative_error(s.gpu->parameter(2).view(), s_before.view()), 1e-3)
      << "the step must change S";
  auto params = s.cpu->parameters();
  for (std::size_t p = 0; p < params.size(); ++p) {
    const HostMatrix stepped = s.gpu->parameter(p);
    copy(s.ctx, as_const(stepped.view()), params[p].value);
  }
  s.cpu->parameters_updated(s.ctx);
  s.expect_forward_backward_match("after the step");
}

TEST_P(CudaRosa, WithoutMaskItIsLora) {
  Pair s(GetParam(), /*with_mask=*/false);
  EXPECT_FALSE(s.gpu->has_mask());
  EXPECT_EQ(s.gpu->mask().nnz(), 0);
  // dS stays zero: expect_gradients_match would call it vacuous, so compare dA and dB here.
  const RosaCase& c = s.c;
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
  auto params = s.cpu->parameters();
  for (std::size_t p = 0; p < 2; ++p)
    EXPECT_LT(relative_error(s.gpu->gradient(p).view(), copy_of(as_const(params[p].grad)).view()),
              tolerance(c.dtype))
        << params[p].name;
  EXPECT_EQ(frobenius_norm(s.gpu->gradient(2).view()), 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaRosa,
    ::testing::Values(
        RosaCase{DType::f32, 9, 13, 11, 4, 0.2, RosaForward::dense_add},
        RosaCase{DType::f32, 9, 13, 11, 4, 0.2, RosaForward::spmm},
        RosaCase{DType::f32, 17, 129, 33, 8, 0.05, RosaForward::spmm, 0.25f, true, true, true},
        RosaCase{DType::f32, 17, 129, 33, 8, 0.05, RosaForward::dense_add, 0.25f, true, true, true,
                 true},
        // n = 1 and in = 3 without dropout: a mask could drop all of x and leave nothing to
        // compare.
        RosaCase{DType::f32, 1, 3, 17, 1, 0.3, RosaForward::dense_add, 0.0f, false, true, true},
        RosaCase{DType::f32, 129, 17, 3, 3, 0.5, RosaForward::spmm, 0.0f, true, false, false, true},
        RosaCase{DType::f64, 9, 13, 11, 4, 0.2, RosaForward::dense_add, 0.1f, false, true, true},
        RosaCase{DType::f64, 17, 129, 33, 8, 0.05, RosaForward::spmm, 0.0f, true},
        RosaCase{DType::f16, 17, 129, 65, 8, 0.02, RosaForward::spmm},
        RosaCase{DType::f16, 17, 129, 65, 8, 0.02, RosaForward::dense_add, 0.2f, true, true, true},
        RosaCase{DType::bf16, 17, 129, 65, 8, 0.02, RosaForward::dense_add},
        RosaCase{DType::bf16, 17, 129, 65, 8, 0.02, RosaForward::spmm, 0.3f, true, true, true,
                 true},
        RosaCase{DType::bf16, 3, 17, 129, 16, 0.01, RosaForward::spmm, 0.1f, false, true, false}),
    [](const auto& info) { return label(info.param); });

// ---- the mask builder ------------------------------------------------------------------------

struct MaskCase {
  DType dtype;
  RosaGradAccumulation accumulation;
  bool on_host;
};

std::string label(const MaskCase& c) {
  return peft::detail::concat(
      name(c.dtype),
      c.accumulation == RosaGradAccumulation::mean_squared ? "_meansquared" : "_mean",
      c.on_host ? "_onhost" : "_ondevice");
}

void PrintTo(const MaskCase& c, std::ostream* os) {
  *os << label(c);
}

class CudaRosaMask : public CudaTest, public ::testing::WithParamInterface<MaskCase> {};

constexpr index_t kMaskN = 9, kMaskIn = 17, kMaskOut = 12, kMicroBatches = 3;

/// The micro-batches' inputs and gradients, rounded to the dtype.
struct MicroBatches {
  std::vector<HostMatrix> x, dy;
};

MicroBatches micro_batches(DType t, std::uint32_t seed) {
  MicroBatches b;
  for (index_t i = 0; i < kMicroBatches; ++i) {
    b.x.push_back(random_matrix(t, kMaskN, kMaskIn, seed + 2 * std::uint32_t(i)));
    b.dy.push_back(random_matrix(t, kMaskN, kMaskOut, seed + 2 * std::uint32_t(i) + 1));
  }
  return b;
}

/// The relative gap between the k-th and the (k+1)-th largest score of the micro-batches
/// (computed in double): how far float rounding would have to move a score to change the mask.
double gap_at(const MicroBatches& b, RosaGradAccumulation mode, index_t k) {
  HostCtx ctx;
  HostMatrix sum(kMaskOut, kMaskIn);
  for (index_t i = 0; i < kMicroBatches; ++i) {
    HostMatrix g(kMaskOut, kMaskIn);
    cpu::gemm(ctx, Op::T, Op::N, 1.0, b.dy[std::size_t(i)].view(), b.x[std::size_t(i)].view(), 0.0,
              g.view());
    for (index_t e = 0; e < g.size(); ++e)
      sum.data()[e] += mode == RosaGradAccumulation::mean ? g.data()[e] : g.data()[e] * g.data()[e];
  }
  std::vector<double> scores(static_cast<std::size_t>(sum.size()));
  for (index_t e = 0; e < sum.size(); ++e) scores[std::size_t(e)] = std::abs(sum.data()[e]);
  std::sort(scores.begin(), scores.end(), std::greater<>());
  if (k == 0 || k == sum.size()) return 1.0;
  const double above = scores[std::size_t(k - 1)], below = scores[std::size_t(k)];
  return (above - below) / above;
}

TEST_P(CudaRosaMask, BuilderBuildsTheCpuMask) {
  const MaskCase mc = GetParam();
  const RosaConfig cfg{.lora = {.r = 2, .init = LoraInit::none, .seed = 3}, .density = 0.2};
  const HostMatrix w0 = random_matrix(mc.dtype, kMaskOut, kMaskIn, 1, 0.1);
  for (std::optional<double> density : {std::optional<double>{}, std::optional<double>{0.1}}) {
    SCOPED_TRACE(density ? "density 0.1" : "the layer's density");
    const index_t k = static_cast<index_t>((density ? *density : cfg.density) * kMaskOut * kMaskIn);
    // Inputs whose scores do not nearly tie at the threshold, so that fp32 accumulation on the
    // device cannot flip which entries make the mask.
    std::uint32_t seed = 10;
    MicroBatches b = micro_batches(mc.dtype, seed);
    while (gap_at(b, mc.accumulation, k) < 1e-3) b = micro_batches(mc.dtype, seed += 10);

    HostCtx ctx;
    Rosa<double, Cpu> cpu_layer(ctx, w0.view(), cfg);
    RosaMaskBuilder<double, Cpu> builder(
        {.accumulation = mc.accumulation, .accumulate_on_host = mc.on_host});
    builder.add(cpu_layer, density);
    builder.start(ctx);
    auto gpu_layer = make_rosa(mc.dtype, w0.view(), cfg);
    gpu_layer->start_mask_builder(
        {.accumulation = mc.accumulation, .accumulate_on_host = mc.on_host}, density);
    EXPECT_TRUE(gpu_layer->mask_builder_collecting());
    for (index_t i = 0; i < kMicroBatches; ++i) {
      const HostView x = b.x[std::size_t(i)].view(), dy = b.dy[std::size_t(i)].view();
      HostMatrix y(kMaskN, kMaskOut), dx(kMaskN, kMaskIn);
      cpu_layer.forward(ctx, x, y.view());
      cpu_layer.backward(ctx, x, dy, dx.view());
      DeviceMatrix x_d(mc.dtype, x, true), dy_d(mc.dtype, dy, true);
      DeviceMatrix y_d(mc.dtype, kMaskN, kMaskOut), dx_d(mc.dtype, kMaskN, kMaskIn);
      gpu_layer->forward(x_d, y_d);
      gpu_layer->backward(x_d, dy_d, dx_d);
    }
    builder.finish(ctx);
    gpu_layer->finish_mask_builder();
    EXPECT_FALSE(gpu_layer->mask_builder_collecting());
    ASSERT_TRUE(gpu_layer->has_mask());
    const CsrPattern got = gpu_layer->mask();
    const CsrView<const double, Cpu> expected = std::as_const(cpu_layer.sparse()).view();
    ASSERT_EQ(got.nnz(), k);
    ASSERT_EQ(expected.nnz, k);
    EXPECT_TRUE(std::equal(got.row_offsets.begin(), got.row_offsets.end(), expected.row_offsets));
    EXPECT_TRUE(std::equal(got.col_indices.begin(), got.col_indices.end(), expected.col_indices));
    EXPECT_EQ(frobenius_norm(gpu_layer->parameter(2).view()), 0.0) << "S starts at zero";

    // The mask the device built (and transposed) drives the products like a host one.
    const HostMatrix values = random_matrix(param_dtype(mc.dtype), 1, k, 5, 0.5);
    auto s_values = cpu_layer.parameters()[2].value;
    for (index_t e = 0; e < k; ++e) s_values.data()[e] = values.data()[e];
    cpu_layer.parameters_updated(ctx);
    gpu_layer->set_sparse_values(values.view());
    HostMatrix delta(kMaskOut, kMaskIn);
    cpu_layer.delta_weight(ctx, delta.view());
    EXPECT_LT(relative_error(gpu_layer->delta_weight().view(), delta.view()), tolerance(mc.dtype));
    const HostView x = b.x[0].view(), dy = b.dy[0].view();
    HostMatrix y(kMaskN, kMaskOut), dx(kMaskN, kMaskIn);
    cpu_layer.forward(ctx, x, y.view());
    cpu_layer.backward(ctx, x, dy, dx.view());
    DeviceMatrix x_d(mc.dtype, x), dy_d(mc.dtype, dy);
    DeviceMatrix y_d(mc.dtype, kMaskN, kMaskOut), dx_d(mc.dtype, kMaskN, kMaskIn);
    gpu_layer->forward(x_d, y_d);
    gpu_layer->backward(x_d, dy_d, dx_d);
    EXPECT_LT(relative_error(y_d.download().view(), y.view()), tolerance(mc.dtype));
    EXPECT_LT(relative_error(dx_d.download().view(), dx.view()), tolerance(mc.dtype));
    EXPECT_LT(relative_error(gpu_layer->gradient(2).view(),
                             copy_of(as_const(cpu_layer.parameters()[2].grad)).view()),
              tolerance(mc.dtype))
        << "dS on the device's mask";
  }
}

std::vector<MaskCase> mask_cases() {
  std::vector<MaskCase> cases;
  for (DType t : kAllTypes)
    for (auto mode : {RosaGradAccumulation::mean_squared, RosaGradAccumulation::mean})
      for (bool on_host : {false, true}) cases.push_back({t, mode, on_host});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaRosaMask, ::testing::ValuesIn(mask_cases()),
                         [](const auto& info) { return label(info.param); });

// ---- bad input -------------------------------------------------------------------------------

class CudaRosaErrors : public CudaTest {};

TEST_F(CudaRosaErrors, BadMasksThrowAndLeaveTheLayerAsItWas) {
  // out = 6, in = 7, capacity int(0.25 · 42) = 10.
  const HostMatrix w0 = random_matrix(DType::f32, 6, 7, 1, 0.1);
  const RosaConfig cfg{.lora = {.r = 2, .init = LoraInit::none, .seed = 3}, .density = 0.25};
  auto layer = make_rosa(DType::f32, w0.view(), cfg);
  ASSERT_EQ(layer->sparse_capacity(), 10);
  const CsrPattern good{6, 7, {0, 2, 2, 3, 3, 3, 4}, {1, 5, 0, 6}};
  struct Bad {
    CsrPattern pattern;
    ErrorKind kind;
    std::vector<std::string> needles;
  };
  const std::vector<Bad> bad = {
      {{6, 7, {0, 2, 2, 3}, {1, 5, 0}}, ErrorKind::shape, {"4 row offsets for 6 rows"}},
      {{6, 7, {1, 2, 2, 3, 3, 3, 4}, {1, 5, 0, 6}},
       ErrorKind::invalid_argument,
       {"row_offsets[0] is 1"}},
      {{6, 7, {0, 2, 2, 3, 3, 3, 5}, {1, 5, 0, 6}},
       ErrorKind::invalid_argument,
       {"row_offsets[6] is 5", "nnz = 4"}},
      {{6, 7, {0, 1, 0, 3, 3, 3, 4}, {1, 5, 0, 6}},
       ErrorKind::invalid_argument,
       {"row_offsets decrease at row 1"}},
      {{6, 7, {0, 2, 2, 3, 3, 3, 4}, {5, 1, 0, 6}},
       ErrorKind::invalid_argument,
       {"not sorted and unique", "row 0"}},
      {{6, 7, {0, 2, 2, 3, 3, 3, 4}, {5, 5, 0, 6}},
       ErrorKind::invalid_argument,
       {"not sorted and unique"}},
      {{6, 7, {0, 2, 2, 3, 3, 3, 4}, {1, 7, 0, 6}},
       ErrorKind::invalid_argument,
       {"column index 7 in row 0", "[0, 7)"}},
      {{6, 7, {0, 2, 2, 3, 3, 3, 4}, {-1, 5, 0, 6}},
       ErrorKind::invalid_argument,
       {"column index -1"}},
      {{7, 6, {0, 0, 0, 0, 0, 0, 0, 1}, {2}}, ErrorKind::shape, {"pattern is 7 x 6", "6 x 7"}},
      {pattern_with(6, 7, 11, 1), ErrorKind::shape, {"pattern has 11 entries", "room for 10"}},
      {{-1, 7, {}, {}}, ErrorKind::shape, {"negative size"}},
  };
  auto expect_all_rejected = [&] {
    for (const Bad& b : bad) {
      SCOPED_TRACE(b.needles.front());
      try {
        layer->set_mask(b.pattern);
        ADD_FAILURE() << "expected peft::Error, nothing was thrown";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), b.kind) << e.what();
        for (const auto& needle : b.needles)
          EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
              << "message \"" << e.what() << "\" lacks \"" << needle << "\"";
        EXPECT_NE(std::string(e.what()).find("CsrMatrix::set_pattern"), std::string::npos)
            << e.what();
      }
    }
  };
  expect_all_rejected();
  EXPECT_FALSE(layer->has_mask()) << "a rejected mask must not be installed";

  // With a mask in place, a rejected one keeps it.
  layer->set_mask(good);
  expect_all_rejected();
  ASSERT_TRUE(layer->has_mask());
  const CsrPattern kept = layer->mask();
  EXPECT_EQ(kept.row_offsets, good.row_offsets);
  EXPECT_EQ(kept.col_indices, good.col_indices);

  // A merged layer refuses a new mask; wrong shapes are named.
  ASSERT_TRUE(layer->merge());
  expect_error([&] { layer->set_mask(good); }, ErrorKind::state,
               {"Rosa::set_mask", "unmerge it first"});
  ASSERT_TRUE(layer->unmerge());
  DeviceMatrix x(DType::f32, 3, 8), y(DType::f32, 3, 6);
  expect_error([&] { layer->forward(x, y); }, ErrorKind::shape,
               {"Rosa::forward", "x has 8 columns"});
  expect_error([&] { layer->set_sparse_values(filled(1, 5, 0.0).view()); }, ErrorKind::shape,
               {"5 values for 4 entries"});
}

TEST_F(CudaRosaErrors, MaskBuilderMisuse) {
  const HostMatrix w0 = random_matrix(DType::f32, 6, 7, 1, 0.1);
  const RosaConfig cfg{.lora = {.r = 2}, .density = 0.1};
  auto layer = make_rosa(DType::f32, w0.view(), cfg);
  expect_error([&] { layer->start_mask_builder({}, 0.5); }, ErrorKind::invalid_argument,
               {"density 0.5", "room for 4"});
  layer->start_mask_builder({});
  expect_error([&] { layer->finish_mask_builder(); }, ErrorKind::state, {"saw no backward"});
}

}  // namespace
}  // namespace peft::gpu::test
