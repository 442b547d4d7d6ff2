// AdaLoRA's primitives of the CUDA tests: importance_update (parameters and statistics in f32 or
// f64) and multiply (every pair of element types).

#include "device.cuh"

namespace peft::gpu {

namespace {

/// f(Tag<float>) or f(Tag<double>): the statistics' and parameters' types.
template <class F>
void dispatch_float(DType t, F&& f) {
  PEFT_CHECK_ARG(t == DType::f32 || t == DType::f64, "gpu test importance_update: ", name(t),
                 " is neither f32 nor f64");
  if (t == DType::f32)
    f(Tag<float>{});
  else
    f(Tag<double>{});
}

}  // namespace

void importance_update(double beta1, double beta2, const DeviceMatrix& value,
                       const DeviceMatrix& grad, DeviceMatrix& sensitivity,
                       DeviceMatrix& uncertainty, DeviceMatrix& score) {
  dispatch_float(value.dtype(), [&](auto tp) {
    dispatch_float(sensitivity.dtype(), [&](auto ts) {
      using P = typename decltype(tp)::type;
      using S = typename decltype(ts)::type;
      gpu::importance_update(context(), beta1, beta2, cview<P>(value), cview<P>(grad),
                             view<S>(sensitivity), view<S>(uncertainty), view<S>(score));
    });
  });
}

void multiply(const DeviceMatrix& x, DeviceMatrix& y) {
  dispatch(x.dtype(), [&](auto tx) {
    dispatch(y.dtype(), [&](auto ty) {
      using TX = typename decltype(tx)::type;
      using TY = typename decltype(ty)::type;
      gpu::multiply(context(), cview<TX>(x), view<TY>(y));
    });
  });
}

}  // namespace peft::gpu
