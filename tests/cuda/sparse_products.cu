// spmm and sddmm of the CUDA tests: runtime dtypes to peft::gpu's static ones, on the CsrMatrix
// (and so the SparseCache) of a DeviceCsr.

#include "sparse_device.cuh"

namespace peft::gpu {

void spmm(double alpha, const DeviceMatrix& x, DeviceCsr& s, Op op, double beta, DeviceMatrix& y) {
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto& m = csr<T>(s);
    const auto& cm = m;
    const SparseOperand<T, Cuda> operand{cm.view(), cm.transposed_view(), &m.cache()};
    gpu::spmm(context(), alpha, cview<T>(x), operand, op, beta, view<T>(y));
  });
}

void sddmm(double alpha, Op op_a, const DeviceMatrix& a, Op op_b, const DeviceMatrix& b,
           double beta, DeviceCsr& s) {
  PEFT_CHECK_ARG(a.dtype() == b.dtype(), "gpu test sddmm: A is ", name(a.dtype()), ", B is ",
                 name(b.dtype()));
  PEFT_CHECK_ARG(s.dtype() == DType::f32 || s.dtype() == DType::f64,
                 "gpu test sddmm: S is f32 or f64, not ", name(s.dtype()));
  dispatch(a.dtype(), [&](auto ta) {
    using A = typename decltype(ta)::type;
    auto run = [&](auto tv) {
      using V = typename decltype(tv)::type;
      gpu::sddmm(context(), alpha, op_a, cview<A>(a), op_b, cview<A>(b), beta, csr<V>(s).view());
    };
    if (s.dtype() == DType::f32)
      run(Tag<float>{});
    else
      run(Tag<double>{});
  });
}

}  // namespace peft::gpu
