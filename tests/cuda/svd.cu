// The truncated SVD and LoRA-XS's frozen factors on the GPU for the CUDA tests (svd.hpp).

#include "device.cuh"
#include "svd.hpp"

namespace peft::gpu {
namespace {

/// Calls f(Tag<C>{}) with C = float for f32, double for f64.
template <class F>
decltype(auto) with_compute_type(DType c, F&& f) {
  PEFT_CHECK_ARG(c == DType::f32 || c == DType::f64,
                 "gpu test: truncated_svd computes in f32 or f64, not ", name(c));
  if (c == DType::f32) return std::forward<F>(f)(Tag<float>{});
  return std::forward<F>(f)(Tag<double>{});
}

bool all_nan(const HostMatrix& m) {
  for (index_t i = 0; i < m.size(); ++i)
    if (!std::isnan(m.data()[i])) return false;
  return true;
}

}  // namespace

SvdFactors svd_on_device(DType w_dtype, DType compute, Op op, HostView w, index_t r,
                         const SvdOptions& options, bool strided, bool* gaps_untouched) {
  const index_t m = op == Op::N ? w.rows() : w.cols();
  const index_t n = op == Op::N ? w.cols() : w.rows();
  const DeviceMatrix wd(w_dtype, w, strided);
  DeviceMatrix u(compute, m, r, strided), vt(compute, r, n, strided);
  DeviceMatrix s_storage(compute, r, strided ? 2 : 1);  // S in column 0, NaN in column 1
  dispatch(w_dtype, [&](auto w_tag) {
    using TW = typename decltype(w_tag)::type;
    with_compute_type(compute, [&](auto c_tag) {
      using C = typename decltype(c_tag)::type;
      const MatrixView<C, Cuda> s_matrix = view<C>(s_storage);
      gpu::truncated_svd(context(), op, cview<TW>(wd), r, options, view<C>(u),
                         VectorView<C, Cuda>(s_matrix.data(), r, s_matrix.stride()), view<C>(vt));
    });
  });
  synchronize();
  SvdFactors out{u.download(), HostMatrix(r, 1), vt.download()};
  const HostMatrix s_all = s_storage.download();
  for (index_t i = 0; i < r; ++i) out.s.view()(i, 0) = s_all.view()(i, 0);
  if (gaps_untouched != nullptr) {
    bool untouched = wd.gaps_untouched() && u.gaps_untouched() && vt.gaps_untouched();
    if (strided) {
      HostMatrix second(r, 1);
      for (index_t i = 0; i < r; ++i) second.view()(i, 0) = s_all.view()(i, 1);
      untouched = untouched && all_nan(second);
    }
    *gaps_untouched = untouched;
  }
  return out;
}

void svd_on_device_with_shapes(Op op, index_t w_rows, index_t w_cols, index_t r,
                               const SvdOptions& options, index_t u_rows, index_t u_cols,
                               index_t s_size, index_t vt_rows, index_t vt_cols) {
  const DeviceMatrix w(DType::f32, w_rows, w_cols, false, 0.0);
  DeviceMatrix u(DType::f32, u_rows, u_cols, false, 0.0),
      vt(DType::f32, vt_rows, vt_cols, false, 0.0);
  DeviceMatrix s(DType::f32, 1, s_size, false, 0.0);
  const MatrixView<float, Cuda> s_matrix = view<float>(s);
  gpu::truncated_svd(context(), op, cview<float>(w), r, options, view<float>(u),
                     VectorView<float, Cuda>(s_matrix.data(), s_size), view<float>(vt));
}

namespace {

template <class T>
LoraXsDeviceFactors factors_of(const LoraXs<T, Cuda>& layer) {
  using P = param_t<T>;
  auto to_double_host = [](MatrixView<const P, Cuda> v) {
    Matrix<P, Cpu> host(v.rows(), v.cols());
    gpu::download(context(), v, host.view());
    HostMatrix out(v.rows(), v.cols());
    for (index_t i = 0; i < v.rows(); ++i)
      for (index_t j = 0; j < v.cols(); ++j)
        out.view()(i, j) = static_cast<double>(host.view()(i, j));
    return out;
  };
  return {to_double_host(layer.frozen_a()), to_double_host(layer.frozen_b())};
}

}  // namespace

LoraXsDeviceFactors lora_xs_factors_on_device(DType dtype, HostView w0,
                                              const LoraXsConfig& config) {
  const DeviceMatrix wd(dtype, w0);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LoraXs<T, Cuda> layer(context(), cview<T>(wd), config);
    return factors_of(layer);
  });
}

LoraXsDeviceFactors lora_xs_reload_on_device(DType dtype, HostView w0, const LoraXsConfig& config,
                                             HostView a, HostView b) {
  const DeviceMatrix wd(dtype, w0);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using P = param_t<T>;
    const DType p = dtype_of<P>();
    const DeviceMatrix ad(p, a), bd(p, b);
    const LoraXs<T, Cuda> layer(context(), cview<T>(wd), config,
                                LoraXsFrozenFactors<P, Cuda>(cview<P>(ad), cview<P>(bd)));
    return factors_of(layer);
  });
}

}  // namespace peft::gpu
