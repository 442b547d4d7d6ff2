// AdaLora<T, Cuda> against AdaLora<double, Cpu>: the CudaAdapter checks (adapter_test.cpp) over
// AdaLoRA's cases (E random, so that every factor contributes), then its trainers on the device:
// RankAllocator<T, Cuda> keeps the ranks RankAllocator<double, Cpu> keeps, with the same budgets,
// masked E and statistics; the orthogonal regulariser adds the CPU's value and gradients.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/adapter_pair.hpp"

namespace peft::gpu::test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    AdaLora, CudaAdapter,
    ::testing::Values(adalora_case(DType::f32, 9, 13, 11, 4),
                      adalora_case(DType::f32, 17, 129, 33, 8, 0.25, true, true, true),
                      adalora_case(DType::f32, 1, 3, 17, 1, 0.0, false, true, true),
                      adalora_case(DType::f64, 9, 13, 11, 4, 0.1, false, true, true),
                      adalora_case(DType::f64, 17, 129, 33, 8, 0.0, true),
                      adalora_case(DType::f16, 17, 129, 65, 8, 0.2, true, true, true),
                      adalora_case(DType::bf16, 17, 129, 65, 8),
                      adalora_case(DType::bf16, 3, 17, 129, 16, 0.3, false, true, true)),
    CaseName());

// ---- the trainers ----------------------------------------------------------------------------

class CudaAdaLoraTrainers : public CudaTest, public ::testing::WithParamInterface<DType> {
 protected:
  using Pair = AdapterPair<AdaLora<double, Cpu>>;
  static constexpr index_t n = 9, in = 13, out = 11, r = 6;

  static AdaLoraConfig config() {
    return {.init_r = r, .alpha = 12, .init_weights = false, .seed = 11};
  }
  static GpuAdaLora& adalora(Pair& s) { return dynamic_cast<GpuAdaLora&>(*s.gpu); }

  /// A forward and backward of fresh inputs on both layers.
  static void step(Pair& s) {
    const HostMatrix x = s.random(n, in), dy = s.random(n, out);
    DeviceMatrix x_d = s.device(x.view()), dy_d = s.device(dy.view());
    DeviceMatrix y_d = s.output(n, out), dx_d = s.output(n, in);
    s.gpu->forward(x_d, y_d);
    s.gpu->backward(x_d, dy_d, dx_d);
    HostMatrix y(n, out), dx(n, in);
    s.cpu->forward(s.ctx, x.view(), y.view());
    s.cpu->backward(s.ctx, x.view(), dy.view(), dx.view());
  }
};

TEST_P(CudaAdaLoraTrainers, RankAllocatorKeepsTheCpuRanks) {
  Pair s({GetParam(), n, in, out}, config());
  // The budget falls from 6 to 2 over steps 2 .. 6, masking every step; the pattern is final at
  // step 7.
  const RankAllocatorOptions options{
      .target_r = 2, .tinit = 1, .tfinal = 2, .delta_t = 1, .total_step = 9};
  RankAllocator<double, Cpu> cpu_allocator(options);
  cpu_allocator.add(s.ctx, *s.cpu, "layer");
  adalora(s).start_rank_allocator(options);
  index_t last_budget = r;
  for (std::int64_t t = 1; t <= 9; ++t) {
    SCOPED_TRACE(peft::detail::concat("step ", t));
    step(s);
    const index_t budget = cpu_allocator.update_and_allocate(s.ctx, t);
    EXPECT_EQ(adalora(s).update_and_allocate(t), budget);
    last_budget = budget;
    const std::vector<bool> expected = cpu_allocator.rank_pattern(s.ctx).at(0).second;
    EXPECT_EQ(adalora(s).rank_pattern(), expected);
    // E masked identically: the kept entries are untouched, the others exactly zero.
    EXPECT_TRUE(bitwise_equal(s.gpu->parameter(1).view(), as_const(s.cpu->parameters()[1].value)))
        << "lora_E";
    // The statistics (EMAs of |p · ∇p|) in the parameters' type.
    const auto cpu_state = cpu_allocator.state(s.ctx);
    const auto gpu_state = adalora(s).allocator_state();
    ASSERT_EQ(gpu_state.size(), cpu_state.size());
    for (std::size_t k = 0; k < cpu_state.size(); ++k) {
      EXPECT_EQ(gpu_state[k].first, cpu_state[k].first);
      EXPECT_LT(relative_error(gpu_state[k].second.view(), as_const(cpu_state[k].second)),
                gradient_tolerance(GetParam()))
          << cpu_state[k].first;
    }
    s.gpu->zero_grad();
    s.cpu->zero_grad(s.ctx);
  }
  EXPECT_EQ(last_budget, 2);
  std::size_t kept = 0;
  for (bool k : adalora(s).rank_pattern()) kept += k ? 1 : 0;
  EXPECT_EQ(kept, 2u);
  // The masked layer still agrees with the CPU.
  check_forward_backward(s, "after allocation");
}

TEST_P(CudaAdaLoraTrainers, OrthogonalRegularizationMatchesCpu) {
  Pair s({GetParam(), n, in, out}, config());
  step(s);
  const double expected = add_orthogonal_regularization<double, Cpu>(s.ctx, {s.cpu.get()}, 0.3);
  const double got = adalora(s).orthogonal_regularization(0.3);
  EXPECT_GT(expected, 0.0);
  EXPECT_NEAR(got, expected, gradient_tolerance(GetParam()) * expected);
  s.expect_gradients_match();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaAdaLoraTrainers, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(name(info.param)); });

}  // namespace
}  // namespace peft::gpu::test
