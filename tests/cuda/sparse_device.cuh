#pragma once
// What the sparse .cu files of the CUDA tests share: the inside of DeviceCsr (a CsrMatrix of
// the element type behind a small base), typed access to it, and index arrays on the device.

#include <span>
#include <vector>

#include "device.cuh"
#include "gpu_sparse.hpp"

namespace peft::gpu {

struct DeviceCsr::Impl {
  explicit Impl(DType t) : dtype(t) {}
  virtual ~Impl() = default;
  DType dtype;
};

template <class V>
struct TypedCsr final : DeviceCsr::Impl {
  TypedCsr(index_t rows, index_t cols, index_t capacity)
      : DeviceCsr::Impl(dtype_of<V>()), matrix(rows, cols, capacity) {}
  CsrMatrix<V, Cuda> matrix;
};

/// The CsrMatrix behind a test matrix (throws when the dtype differs).
template <class V>
CsrMatrix<V, Cuda>& csr(const DeviceCsr& s) {
  PEFT_CHECK_ARG(s.dtype() == dtype_of<V>(), "gpu test: a ", name(s.dtype()),
                 " sparse matrix used as ", name(dtype_of<V>()));
  return static_cast<TypedCsr<V>&>(s.impl()).matrix;
}

/// An int32 array on the device holding `host`.
inline Vector<std::int32_t, Cuda> device_indices(std::span<const std::int32_t> host) {
  const auto n = static_cast<index_t>(host.size());
  Vector<std::int32_t, Cuda> d(n);
  if (n > 0)
    gpu::upload(context(), MatrixView<const std::int32_t, Cpu>(host.data(), 1, n),
                d.view().as_row());
  return d;
}

/// The first n elements of a device int32 array.
inline std::vector<std::int32_t> host_indices(const std::int32_t* device, index_t n) {
  std::vector<std::int32_t> host(static_cast<std::size_t>(n));
  if (n > 0)
    gpu::download(context(), MatrixView<const std::int32_t, Cuda>(device, 1, n),
                  MatrixView<std::int32_t, Cpu>(host.data(), 1, n));
  return host;
}

}  // namespace peft::gpu
