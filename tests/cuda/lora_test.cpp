// Lora<T, Cuda> against Lora<double, Cpu>: the CudaAdapter checks (adapter_test.cpp) over
// LoRA's cases, with dropout, fan_in_fan_out, bias, rsLoRA and strided views.

#include "cuda/adapter_pair.hpp"

namespace peft::gpu::test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Lora, CudaAdapter,
    ::testing::Values(lora_case(DType::f32, 9, 13, 11, 4),
                      lora_case(DType::f32, 17, 129, 33, 8, 0.25, true, true, true),
                      // n = 1 and in = 3 without dropout: a mask could drop all of x and leave
                      // nothing to compare.
                      lora_case(DType::f32, 1, 3, 17, 1, 0.0, false, true, true),
                      lora_case(DType::f32, 129, 17, 3, 3, 0.0, true, false, false, true),
                      lora_case(DType::f64, 9, 13, 11, 4, 0.1, false, true, true),
                      lora_case(DType::f64, 17, 129, 33, 8, 0.0, true),
                      lora_case(DType::f16, 17, 129, 65, 8),
                      lora_case(DType::f16, 17, 129, 65, 8, 0.2, true, true, true),
                      lora_case(DType::bf16, 17, 129, 65, 8),
                      lora_case(DType::bf16, 17, 129, 65, 8, 0.3, true, true, true),
                      lora_case(DType::bf16, 3, 17, 129, 16, 0.1, false, true, false, true)),
    CaseName());

}  // namespace
}  // namespace peft::gpu::test
