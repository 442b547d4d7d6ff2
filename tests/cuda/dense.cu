// gemm of the CUDA tests: runtime dtypes to peft::gpu::gemm's static ones.

#include "device.cuh"

namespace peft::gpu {

void gemm(Op op_a, Op op_b, double alpha, const DeviceMatrix& a, const DeviceMatrix& b, double beta,
          DeviceMatrix& c) {
  PEFT_CHECK_ARG(a.dtype() == b.dtype(), "gpu test gemm: A is ", name(a.dtype()), ", B is ",
                 name(b.dtype()));
  dispatch(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (is_16bit_v<T>) {
      if (c.dtype() == DType::f32) {
        gpu::gemm(context(), op_a, op_b, alpha, cview<T>(a), cview<T>(b), beta, view<float>(c));
        return;
      }
    }
    gpu::gemm(context(), op_a, op_b, alpha, cview<T>(a), cview<T>(b), beta, view<T>(c));
  });
}

}  // namespace peft::gpu
