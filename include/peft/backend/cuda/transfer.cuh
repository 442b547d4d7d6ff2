#pragma once
// Copies between host memory and the GPU, and small writes into device memory.

#include <type_traits>

#include "../../core/buffer.hpp"
#include "context.hpp"

namespace peft::gpu {
namespace detail {

template <class T>
__global__ void store_value_kernel(T value, T* dst) {
  *dst = value;
}

template <class TS, class TD>
void copy_2d(Context<Cuda>& ctx, const TS* src, index_t src_stride, TD* dst, index_t dst_stride,
             index_t rows, index_t cols, cudaMemcpyKind kind, const char* what) {
  static_assert(std::is_same_v<std::remove_const_t<TS>, TD>,
                "host <-> device copies keep the element type; convert on the device");
  PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0, what, ": negative size");
  if (rows == 0 || cols == 0) return;
  PEFT_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_stride * sizeof(TD), src, src_stride * sizeof(TD),
                                    cols * sizeof(TD), rows, kind, ctx.stream()));
}

}  // namespace detail

/// dst (device) = host_src (host). Returns once the host memory may be reused.
template <class TS, class TD>
void upload(Context<Cuda>& ctx, MatrixView<TS, Cpu> host_src, MatrixView<TD, Cuda> dst) {
  PEFT_CHECK_SHAPE(host_src.rows() == dst.rows() && host_src.cols() == dst.cols(),
                   "upload: host matrix is ", shape_string(host_src), ", device matrix is ",
                   shape_string(dst));
  detail::copy_2d(ctx, host_src.data(), host_src.stride(), dst.data(), dst.stride(), dst.rows(),
                  dst.cols(), cudaMemcpyHostToDevice, "upload");
  ctx.synchronize();  // pageable host memory: make the copy complete before returning
}

/// host_dst (host) = src (device). Synchronises the stream.
template <class TS, class TD>
void download(Context<Cuda>& ctx, MatrixView<TS, Cuda> src, MatrixView<TD, Cpu> host_dst) {
  PEFT_CHECK_SHAPE(host_dst.rows() == src.rows() && host_dst.cols() == src.cols(),
                   "download: device matrix is ", shape_string(src), ", host matrix is ",
                   shape_string(host_dst));
  detail::copy_2d(ctx, src.data(), src.stride(), host_dst.data(), host_dst.stride(), src.rows(),
                  src.cols(), cudaMemcpyDeviceToHost, "download");
  ctx.synchronize();
}

/// A device copy of a host matrix.
template <class T>
Matrix<std::remove_const_t<T>, Cuda> to_device(Context<Cuda>& ctx, MatrixView<T, Cpu> host) {
  Matrix<std::remove_const_t<T>, Cuda> m(host.rows(), host.cols());
  upload(ctx, host, m.view());
  return m;
}

/// A host copy of a device matrix.
template <class T>
Matrix<std::remove_const_t<T>, Cpu> to_host(Context<Cuda>& ctx, MatrixView<T, Cuda> device) {
  Matrix<std::remove_const_t<T>, Cpu> m(device.rows(), device.cols());
  download(ctx, device, m.view());
  return m;
}

/// Writes one trivially copyable value to device memory, in stream order, without a host sync.
template <class T>
void store_value(Context<Cuda>& ctx, const T& value, T* dst) {
  detail::store_value_kernel<<<1, 1, 0, ctx.stream()>>>(value, dst);
  PEFT_CUDA_CHECK_LAUNCH();
}

}  // namespace peft::gpu
