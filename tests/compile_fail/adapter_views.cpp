// Compile-fail checks (tests/compile_fail/compile_fail.cmake builds this file once per case):
// the backend is part of a view's type, so a GPU view handed to a CPU adapter must not compile.
// PEFT_CASE_control compiles the same call with a CPU view, so that a failure of the other cases
// can only come from the line they change.

#include <peft/peft.hpp>

void call(peft::Context<peft::Cpu>& ctx, peft::Lora<float, peft::Cpu>& layer,
          peft::MatrixView<float, peft::Cpu> y) {
#if defined(PEFT_CASE_control)
  peft::MatrixView<const float, peft::Cpu> x;
  layer.forward(ctx, x, y);
#elif defined(PEFT_CASE_gpu_view_to_cpu_adapter)
  peft::MatrixView<const float, peft::Cuda> x;
  layer.forward(ctx, x, y);
#elif defined(PEFT_CASE_gpu_weight_to_cpu_adapter)
  peft::MatrixView<const float, peft::Cuda> w0;
  peft::Lora<float, peft::Cpu> other(ctx, w0, peft::LoraConfig{});
  (void)other;
#endif
  (void)layer;
  (void)y;
}
