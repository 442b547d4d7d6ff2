// Reductions of the CUDA tests: dot (every pair of element types), norm, all_finite.

#include "device.cuh"

namespace peft::gpu {

double dot(const DeviceMatrix& x, const DeviceMatrix& y) {
  return dispatch(x.dtype(), [&](auto tx) {
    return dispatch(y.dtype(), [&](auto ty) {
      using TX = typename decltype(tx)::type;
      using TY = typename decltype(ty)::type;
      return gpu::dot(context(), cview<TX>(x), cview<TY>(y));
    });
  });
}

double norm(const DeviceMatrix& x) {
  return dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return gpu::norm(context(), cview<T>(x));
  });
}

bool all_finite(const DeviceMatrix& x) {
  return dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return gpu::all_finite(context(), cview<T>(x));
  });
}

}  // namespace peft::gpu
