// Rosa<T, Cuda> against Rosa<double, Cpu> built from the same config and seed, with the same
// mask (set_mask with a host CsrPattern) and the same values of S: the CudaAdapter checks
// (adapter_test.cpp) over RoSA's cases, in both forward modes (dense_add, spmm), with dropout,
// fan_in_fan_out, bias, strided views, masks with empty rows and masks below capacity; then
// RoSA's own: the mask, changes of S's values and of the mask, which must reach the sparse
// products (Sᵀ and the 16-bit copies are refreshed by parameters_updated), and a layer without a
// mask. RosaMaskBuilder<T, Cuda> (both accumulation modes, on the device and on the host) builds
// the CPU's mask; bad masks throw peft::Error.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cuda/adapter_pair.hpp"

namespace peft::gpu::test {
namespace {

std::vector<AdapterCase> rosa_cases() {
  const auto dense_add = RosaForward::dense_add, spmm = RosaForward::spmm;
  return {
      rosa_case(DType::f32, 9, 13, 11, 4, 0.2, dense_add),
      rosa_case(DType::f32, 9, 13, 11, 4, 0.2, spmm),
      rosa_case(DType::f32, 17, 129, 33, 8, 0.05, spmm, 0.25, true, true, true),
      rosa_case(DType::f32, 17, 129, 33, 8, 0.05, dense_add, 0.25, true, true, true, true),
      // n = 1 and in = 3 without dropout: a mask could drop all of x and leave nothing to
      // compare.
      rosa_case(DType::f32, 1, 3, 17, 1, 0.3, dense_add, 0.0, false, true, true),
      rosa_case(DType::f32, 129, 17, 3, 3, 0.5, spmm, 0.0, true, false, false, true),
      rosa_case(DType::f64, 9, 13, 11, 4, 0.2, dense_add, 0.1, false, true, true),
      rosa_case(DType::f64, 17, 129, 33, 8, 0.05, spmm, 0.0, true),
      rosa_case(DType::f16, 17, 129, 65, 8, 0.02, spmm),
      rosa_case(DType::f16, 17, 129, 65, 8, 0.02, dense_add, 0.2, true, true, true),
      rosa_case(DType::bf16, 17, 129, 65, 8, 0.02, dense_add),
      rosa_case(DType::bf16, 17, 129, 65, 8, 0.02, spmm, 0.3, true, true, true, true),
      rosa_case(DType::bf16, 3, 17, 129, 16, 0.01, spmm, 0.1, false, true, false),
  };
}

INSTANTIATE_TEST_SUITE_P(Rosa, CudaAdapter, ::testing::ValuesIn(rosa_cases()), CaseName());

// ---- RoSA's own checks -----------------------------------------------------------------------

class CudaRosa : public CudaAdapter {
 protected:
  using Pair = AdapterPair<Rosa<double, Cpu>>;
  const RosaConfig& config() const { return std::get<RosaConfig>(GetParam().config); }
};

TEST_P(CudaRosa, SameModeCapacityAndMaskAsCpu) {
  Pair s(GetParam().shape, config());
  GpuRosa& gpu = s.rosa();
  EXPECT_EQ(gpu.forward_mode(), s.cpu->forward_mode());
  EXPECT_EQ(gpu.sparse_capacity(), s.cpu->sparse_capacity());
  ASSERT_TRUE(gpu.has_mask());
  const CsrPattern mask = gpu.mask();
  const CsrView<const double, Cpu> expected = std::as_const(*s.cpu).sparse().view();
  ASSERT_EQ(mask.nnz(), expected.nnz);
  EXPECT_TRUE(std::equal(mask.row_offsets.begin(), mask.row_offsets.end(), expected.row_offsets));
  EXPECT_TRUE(std::equal(mask.col_indices.begin(), mask.col_indices.end(), expected.col_indices));
}

TEST_P(CudaRosa, NewValuesAndNewMasksReachTheProducts) {
  // The sparse products keep descriptors of S's (and Sᵀ's) value arrays between calls: new
  // values must show in the next call, and a new mask (same capacity, another pattern) must
  // replace the old one everywhere.
  Pair s(GetParam().shape, config());
  const PairShape& c = s.c;
  check_forward_backward(s, "first mask");
  s.set_sparse_values(77);
  check_forward_backward(s, "new values");
  const index_t capacity = s.cpu->sparse_capacity();
  s.install_mask(pattern_with(c.out, c.in, std::max<index_t>(capacity / 2, 1), 78, false));
  s.set_sparse_values(79);
  check_forward_backward(s, "second mask");
  HostMatrix delta(s.w0.rows(), s.w0.cols());
  s.cpu->delta_weight(s.ctx, delta.view());
  EXPECT_LT(relative_error(s.gpu->delta_weight().view(), delta.view()), output_tolerance(c.dtype))
      << "delta_weight with the second mask";
}

TEST_P(CudaRosa, WithoutMaskItIsLora) {
  PairShape shape = GetParam().shape;
  shape.mask_fill = 0;
  Pair s(shape, config());
  EXPECT_FALSE(s.rosa().has_mask());
  EXPECT_EQ(s.rosa().mask().nnz(), 0);
  // dS stays zero on both sides.
  check_forward_backward(s, "without a mask", /*allow_zero_gradients=*/true);
  EXPECT_EQ(frobenius_norm(s.gpu->gradient(2).view()), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaRosa, ::testing::ValuesIn(rosa_cases()), CaseName());

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
    auto gpu_layer = make_adapter(mc.dtype, {w0.view()}, cfg);
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
    EXPECT_LT(relative_error(gpu_layer->delta_weight().view(), delta.view()),
              output_tolerance(mc.dtype));
    const HostView x = b.x[0].view(), dy = b.dy[0].view();
    HostMatrix y(kMaskN, kMaskOut), dx(kMaskN, kMaskIn);
    cpu_layer.forward(ctx, x, y.view());
    cpu_layer.backward(ctx, x, dy, dx.view());
    DeviceMatrix x_d(mc.dtype, x), dy_d(mc.dtype, dy);
    DeviceMatrix y_d(mc.dtype, kMaskN, kMaskOut), dx_d(mc.dtype, kMaskN, kMaskIn);
    gpu_layer->forward(x_d, y_d);
    gpu_layer->backward(x_d, dy_d, dx_d);
    EXPECT_LT(relative_error(y_d.download().view(), y.view()), output_tolerance(mc.dtype));
    EXPECT_LT(relative_error(dx_d.download().view(), dx.view()), output_tolerance(mc.dtype));
    EXPECT_LT(relative_error(gpu_layer->gradient(2).view(),
                             copy_of(as_const(cpu_layer.parameters()[2].grad)).view()),
              output_tolerance(mc.dtype))
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
  auto layer = make_adapter(DType::f32, {w0.view()}, cfg);
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
  auto layer = make_adapter(DType::f32, {w0.view()}, cfg);
  expect_error([&] { layer->start_mask_builder({}, 0.5); }, ErrorKind::invalid_argument,
               {"density 0.5", "room for 4"});
  layer->start_mask_builder({});
  expect_error([&] { layer->finish_mask_builder(); }, ErrorKind::state, {"saw no backward"});
}

}  // namespace
}  // namespace peft::gpu::test
