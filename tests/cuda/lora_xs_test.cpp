// LoRA-XS's frozen factors on the GPU: computed by the GPU's truncated SVD, they agree with the
// CPU layer's (in double, on the same rounded W0) for every dtype and both orientations; a second
// build over the same W0, and a reload from the factors, give bit-identical factors. The layer's
// outputs and gradients against the CPU run in the GPU conformance suite (LoraXsCase in
// tests/conformance/cases.hpp).

#include <gtest/gtest.h>

#include "cuda/reference.hpp"
#include "cuda/svd.hpp"

namespace peft::gpu::test {
namespace {

class CudaLoraXs : public CudaTest {};

HostMatrix decaying_weight(index_t rows, index_t cols, std::uint32_t seed) {
  // Random entries scaled by column: a spectrum with clear gaps at the top.
  HostMatrix w = random_matrix(DType::f64, rows, cols, seed);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) w.view()(i, j) *= std::pow(0.7, double(j));
  return w;
}

TEST_F(CudaLoraXs, FactorsAgreeWithTheCpu) {
  constexpr index_t out = 24, in = 18, r = 5;
  for (DType dtype : kAllTypes)
    for (bool fan : {false, true}) {
      SCOPED_TRACE(testing::Message() << name(dtype) << (fan ? " fan_in_fan_out" : ""));
      const HostMatrix logical = decaying_weight(out, in, 3);
      HostMatrix stored(fan ? in : out, fan ? out : in);
      for (index_t i = 0; i < out; ++i)
        for (index_t j = 0; j < in; ++j)
          (fan ? stored.view()(j, i) : stored.view()(i, j)) = logical.view()(i, j);
      const HostMatrix w0 = round_to(dtype, stored.view());
      const LoraXsConfig config{.r = r, .fan_in_fan_out = fan};
      const LoraXsDeviceFactors gpu = lora_xs_factors_on_device(dtype, w0.view(), config);

      HostCtx ctx;
      HostMatrix w0_cpu = copy_of(w0.view());
      const LoraXs<double, Cpu> cpu(ctx, w0_cpu.view(), config);
      const double tol = dtype == DType::f64 ? 1e-10 : 1e-4;
      EXPECT_LT(relative_error(gpu.a.view(), to_double(cpu.frozen_a()).view()), tol);
      EXPECT_LT(relative_error(gpu.b.view(), to_double(cpu.frozen_b()).view()), tol);
    }
}

TEST_F(CudaLoraXs, RebuildAndReloadGiveBitIdenticalFactors) {
  for (DType dtype : kAllTypes) {
    SCOPED_TRACE(name(dtype));
    const HostMatrix w0 = round_to(dtype, decaying_weight(20, 30, 4).view());
    const LoraXsConfig config{.r = 6};
    const LoraXsDeviceFactors first = lora_xs_factors_on_device(dtype, w0.view(), config);
    const LoraXsDeviceFactors second = lora_xs_factors_on_device(dtype, w0.view(), config);
    EXPECT_TRUE(bitwise_equal(second.a.view(), first.a.view()));
    EXPECT_TRUE(bitwise_equal(second.b.view(), first.b.view()));
    const LoraXsDeviceFactors reloaded =
        lora_xs_reload_on_device(dtype, w0.view(), config, first.a.view(), first.b.view());
    EXPECT_TRUE(bitwise_equal(reloaded.a.view(), first.a.view()));
    EXPECT_TRUE(bitwise_equal(reloaded.b.view(), first.b.view()));
  }
}

}  // namespace
}  // namespace peft::gpu::test
