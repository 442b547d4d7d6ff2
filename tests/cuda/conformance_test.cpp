// The conformance suite on the GPU: every method of the CPU suite's list
// (tests/conformance/cases.hpp, so a method added there runs here too) and every GPU dtype
// (double, float, __half, __nv_bfloat16) pass the checks of tests/conformance with the CPU layer
// in double as the reference: outputs and the gradients of every parameter of parameters() and
// of dx (the CPU suite proves the double layer against central differences), full and delta
// calls, with and without dropout, in both weight orientations; merge equals forward and unmerge
// restores W0; safe_merge refuses non-finite results; reserves used out of order equal the
// simple order bit for bit; forward_delta/backward_delta equal the full calls minus the base; no
// device allocation of any kind after preallocate (the backend allocator and the workspace);
// parameter names unique and the CPU's.

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <set>
#include <string>

#include "conformance/cases.hpp"
#include "cuda/adapter_pair.hpp"

namespace peft::gpu::test {
namespace {

template <class Case, DType D>
struct GpuCombo {
  using case_type = Case;
  static constexpr DType dtype = D;
};

template <class List>
struct EveryGpuDtype;
template <class... Cases>
struct EveryGpuDtype<peft::test::CaseList<Cases...>> {
  using type = ::testing::Types<GpuCombo<Cases, DType::f64>..., GpuCombo<Cases, DType::f32>...,
                                GpuCombo<Cases, DType::f16>..., GpuCombo<Cases, DType::bf16>...>;
};

template <class C>
class CudaConformance : public CudaTest {
 protected:
  using Case = typename C::case_type;
  using CpuLayer = typename Case::template Layer<double, Cpu>;
  using Pair = AdapterPair<CpuLayer>;
  static constexpr DType dtype = C::dtype;
  static constexpr index_t n = 5, in = 7, out = 6;

  /// The case's layer on both sides (with a bias), parameters random and equal.
  static Pair make(double dropout = 0.0, bool fan_in_fan_out = false) {
    return Pair({dtype, n, in, out, /*bias=*/true}, Case::config(dropout, fan_in_fan_out),
                [&](const AdapterArgs& args) {
                  return make_case_adapter(dtype, Case::name, args, dropout, fan_in_fan_out);
                });
  }
};

TYPED_TEST_SUITE_P(CudaConformance);

// Outputs and every gradient against the CPU layer in double, with and without dropout, in both
// orientations, through the full and the delta calls (twice: gradients accumulate).
TYPED_TEST_P(CudaConformance, AgreesWithTheCpuInDouble) {
  for (double dropout : {0.0, 0.3})
    for (bool fan : {false, true}) {
      SCOPED_TRACE(testing::Message() << "dropout " << dropout << " fan_in_fan_out " << fan);
      auto s = this->make(dropout, fan);
      check_forward_backward(s, "round 0");
      check_forward_backward(s, "round 1");
      check_delta(s);
      check_backward_without_dx(s);
    }
}

TYPED_TEST_P(CudaConformance, MergedForwardEqualsForwardAndUnmergeRestoresW0) {
  for (bool fan : {false, true}) {
    SCOPED_TRACE(testing::Message() << "fan_in_fan_out " << fan);
    auto s = this->make(0.0, fan);
    check_merge(s);
  }
}

TYPED_TEST_P(CudaConformance, SafeMergeRefusesNonFiniteAndLeavesW0Untouched) {
  auto s = this->make();
  const HostMatrix original = s.gpu->base_weight();
  HostMatrix first = s.gpu->parameter(0);
  first.view()(0, 0) = std::numeric_limits<double>::infinity();
  s.gpu->set_parameter(0, first.view());
  s.gpu->parameters_updated();
  expect_error([&] { s.gpu->safe_merge(); }, ErrorKind::numeric, {"non-finite"});
  EXPECT_TRUE(bitwise_equal(s.gpu->base_weight().view(), original.view()));
  EXPECT_FALSE(s.gpu->merged());
}

// Two micro-batches forward with their own reserves, then backward in reverse order, equal the
// simple order bit for bit (dropout included), and both equal the CPU.
TYPED_TEST_P(CudaConformance, ReservesUsedOutOfOrderMatchTheSimpleOrder) {
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  auto simple = this->make(0.3);
  auto piped = this->make(0.3);
  const HostMatrix x1 = simple.random(n, in), dy1 = simple.random(n, out);
  const HostMatrix x2 = simple.random(n + 2, in), dy2 = simple.random(n + 2, out);
  DeviceMatrix x1_d = simple.device(x1.view()), dy1_d = simple.device(dy1.view());
  DeviceMatrix x2_d = simple.device(x2.view()), dy2_d = simple.device(dy2.view());
  DeviceMatrix y1 = simple.output(n, out), y2 = simple.output(n + 2, out);
  DeviceMatrix dx1 = simple.output(n, in), dx2 = simple.output(n + 2, in);
  DeviceMatrix py1 = simple.output(n, out), py2 = simple.output(n + 2, out);
  DeviceMatrix pdx1 = simple.output(n, in), pdx2 = simple.output(n + 2, in);

  simple.gpu->forward(x1_d, y1);
  simple.gpu->backward(x1_d, dy1_d, dx1);
  simple.gpu->forward(x2_d, y2);
  simple.gpu->backward(x2_d, dy2_d, dx2);

  DeviceBytes r1(piped.gpu->reserve_bytes(n)), r2(piped.gpu->reserve_bytes(n + 2));
  piped.gpu->forward(x1_d, py1, r1);
  piped.gpu->forward(x2_d, py2, r2);
  piped.gpu->backward(x2_d, dy2_d, pdx2, r2);
  piped.gpu->backward(x1_d, dy1_d, pdx1, r1);
  simple.gpu->prepare_gradients();
  piped.gpu->prepare_gradients();

  EXPECT_TRUE(bitwise_equal(py1.download().view(), y1.download().view()));
  EXPECT_TRUE(bitwise_equal(py2.download().view(), y2.download().view()));
  EXPECT_TRUE(bitwise_equal(pdx1.download().view(), dx1.download().view()));
  EXPECT_TRUE(bitwise_equal(pdx2.download().view(), dx2.download().view()));
  const auto names = piped.gpu->parameter_names();
  for (std::size_t k = 0; k < names.size(); ++k)  // summed in the other order
    EXPECT_LT(relative_error(piped.gpu->gradient(k).view(), simple.gpu->gradient(k).view()),
              gradient_tolerance(TestFixture::dtype))
        << names[k];

  // And the same order on the CPU (a fresh pair: the dropout masks follow the calls made).
  auto fresh = this->make(0.3);
  check_reserves_out_of_order(fresh);
}

// forward_delta and backward_delta give the full calls minus the base, and the same gradients.
TYPED_TEST_P(CudaConformance, DeltaCallsEqualFullCallsMinusTheBase) {
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  for (bool fan : {false, true}) {
    SCOPED_TRACE(testing::Message() << "fan_in_fan_out " << fan);
    auto full = this->make(0.3, fan);
    auto delta = this->make(0.3, fan);
    const HostMatrix x = full.random(n, in), dy = full.random(n, out);
    DeviceMatrix x_d = full.device(x.view()), dy_d = full.device(dy.view());
    DeviceMatrix y = full.output(n, out), dx = full.output(n, in);
    const HostMatrix zero_y(n, out), zero_dx(n, in);
    DeviceMatrix y_part = full.device(zero_y.view()), dx_part = full.device(zero_dx.view());
    full.gpu->forward(x_d, y);
    full.gpu->backward(x_d, dy_d, dx);
    delta.gpu->forward_delta(x_d, y_part);
    delta.gpu->backward_delta(x_d, dy_d, dx_part);
    full.gpu->prepare_gradients();
    delta.gpu->prepare_gradients();

    const HostMatrix part_y = difference(y.download().view(), full.base_y(x.view()).view());
    const HostMatrix part_dx = difference(dx.download().view(), full.base_dx(dy.view()).view());
    EXPECT_LT(relative_error(y_part.download().view(), part_y.view()),
              output_tolerance(TestFixture::dtype));
    EXPECT_LT(relative_error(dx_part.download().view(), part_dx.view()),
              output_tolerance(TestFixture::dtype));
    const auto names = full.gpu->parameter_names();
    for (std::size_t k = 0; k < names.size(); ++k)
      EXPECT_LT(relative_error(delta.gpu->gradient(k).view(), full.gpu->gradient(k).view()),
                gradient_tolerance(TestFixture::dtype))
          << names[k];
  }
}

// After preallocate, no call allocates device memory: not the workspace, not the backend
// allocator (cudaMalloc, which may synchronise the device).
TYPED_TEST_P(CudaConformance, NoAllocationAfterPreallocate) {
  constexpr index_t n = TestFixture::n, in = TestFixture::in, out = TestFixture::out;
  auto s = this->make(0.3);
  const HostMatrix x = s.random(n, in), dy = s.random(n, out);
  DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
  DeviceMatrix y = s.output(n, out), dx = s.output(n, in);
  DeviceBytes reserve(s.gpu->reserve_bytes(n));
  s.gpu->preallocate(n);
  auto step = [&] {
    s.gpu->forward(x_d, y);
    s.gpu->backward(x_d, dy_d, dx);
    s.gpu->forward_delta(x_d, y, reserve);
    s.gpu->backward_delta(x_d, dy_d, dx, reserve);
    s.gpu->prepare_gradients();
    s.gpu->parameters_updated();
    s.gpu->zero_grad();
  };
  step();  // warms up what is outside the library (cuBLAS's and cuSPARSE's first calls)
  synchronize();
  const DeviceAllocations before = device_allocations();
  step();
  synchronize();
  const DeviceAllocations after = device_allocations();
  EXPECT_EQ(after.workspace, before.workspace);
  EXPECT_EQ(after.backend, before.backend);
}

TYPED_TEST_P(CudaConformance, ParameterNamesAreUniqueAndTheCpus) {
  auto s = this->make();
  const auto names = s.gpu->parameter_names();
  auto cpu_params = s.cpu->parameters();
  ASSERT_EQ(names.size(), cpu_params.size());
  std::set<std::string> unique;
  index_t total = 0;
  for (std::size_t k = 0; k < names.size(); ++k) {
    EXPECT_TRUE(unique.insert(names[k]).second) << names[k] << " twice";
    EXPECT_EQ(names[k], cpu_params[k].name);
    const HostMatrix value = s.gpu->parameter(k), grad = s.gpu->gradient(k);
    EXPECT_EQ(value.rows(), cpu_params[k].value.rows()) << names[k];
    EXPECT_EQ(value.cols(), cpu_params[k].value.cols()) << names[k];
    EXPECT_EQ(grad.rows(), value.rows()) << names[k];
    EXPECT_EQ(grad.cols(), value.cols()) << names[k];
    total += value.size();
  }
  EXPECT_EQ(total, s.gpu->num_trainable());
  EXPECT_EQ(s.gpu->num_trainable(), s.cpu->num_trainable());
}

REGISTER_TYPED_TEST_SUITE_P(CudaConformance, AgreesWithTheCpuInDouble,
                            MergedForwardEqualsForwardAndUnmergeRestoresW0,
                            SafeMergeRefusesNonFiniteAndLeavesW0Untouched,
                            ReservesUsedOutOfOrderMatchTheSimpleOrder,
                            DeltaCallsEqualFullCallsMinusTheBase, NoAllocationAfterPreallocate,
                            ParameterNamesAreUniqueAndTheCpus);

struct ComboName {
  template <class C>
  static std::string GetName(int) {
    return std::string(C::case_type::name) + "_" + name(C::dtype);
  }
};

using Combos = EveryGpuDtype<peft::test::AllCases>::type;
INSTANTIATE_TYPED_TEST_SUITE_P(Cuda, CudaConformance, Combos, ComboName);

}  // namespace
}  // namespace peft::gpu::test
