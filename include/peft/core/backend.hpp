#pragma once
// Backend tags. Each tag lives in its backend's namespace so that argument-dependent
// lookup finds that backend's primitives: an adapter calls `gemm(ctx, ...)` unqualified
// and gets peft::cpu::gemm for Context<Cpu>, peft::gpu::gemm for Context<Cuda>.

namespace peft {

namespace cpu {
struct Backend {
  static constexpr const char* name = "cpu";
};
}  // namespace cpu

namespace gpu {
struct Backend {
  static constexpr const char* name = "cuda";
};
}  // namespace gpu

using Cpu = cpu::Backend;
using Cuda = gpu::Backend;

/// Transposition of a GEMM operand: op(X) = X or Xᵀ.
enum class Op { N, T };

/// Everything a backend needs to run; specialised in backend/<name>/context.hpp.
template <class B>
class Context;

}  // namespace peft
