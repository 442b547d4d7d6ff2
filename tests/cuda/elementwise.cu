// Element-wise primitives of the CUDA tests: fill, scale, axpy, copy, broadcast_rows, with
// every pair of element types where the primitive takes two.

#include "device.cuh"

namespace peft::gpu {

void fill(DeviceMatrix& x, double value) {
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    gpu::fill(context(), view<T>(x), value);
  });
}

void scale(double alpha, DeviceMatrix& x) {
  dispatch(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    gpu::scale(context(), alpha, view<T>(x));
  });
}

void axpy(double alpha, const DeviceMatrix& x, DeviceMatrix& y) {
  dispatch(x.dtype(), [&](auto tx) {
    dispatch(y.dtype(), [&](auto ty) {
      using TX = typename decltype(tx)::type;
      using TY = typename decltype(ty)::type;
      gpu::axpy(context(), alpha, cview<TX>(x), view<TY>(y));
    });
  });
}

void copy(const DeviceMatrix& src, DeviceMatrix& dst) {
  dispatch(src.dtype(), [&](auto ts) {
    dispatch(dst.dtype(), [&](auto td) {
      using TS = typename decltype(ts)::type;
      using TD = typename decltype(td)::type;
      gpu::copy(context(), cview<TS>(src), view<TD>(dst));
    });
  });
}

void broadcast_rows(const DeviceMatrix& b, bool column, DeviceMatrix& y) {
  dispatch(b.dtype(), [&](auto tb) {
    dispatch(y.dtype(), [&](auto ty) {
      using TB = typename decltype(tb)::type;
      using T = typename decltype(ty)::type;
      const MatrixView<const TB, Cuda> m = cview<TB>(b);
      const VectorView<const TB, Cuda> v =
          column ? VectorView<const TB, Cuda>(m.data(), m.rows(), m.stride())
                 : VectorView<const TB, Cuda>(m.data(), m.cols(), 1);
      gpu::broadcast_rows(context(), v, view<T>(y));
    });
  });
}

}  // namespace peft::gpu
