#pragma once
// What the .cu files of the CUDA tests share: the test context, the insides of DeviceMatrix and
// DeviceBytes, typed views of them, and the runtime-to-static dispatch over DType.

#include <type_traits>
#include <utility>

#include <peft/cuda.hpp>

#include "gpu.hpp"

namespace peft::gpu {

/// The context every primitive of the tests runs on, created on first use (never when no
/// device exists: the tests skip before).
Context<Cuda>& context();

template <class T>
struct Tag {
  using type = T;
};

/// Calls f(Tag<T>{}) with the element type of `t`.
template <class F>
decltype(auto) dispatch(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return std::forward<F>(f)(Tag<float>{});
    case DType::f64:
      return std::forward<F>(f)(Tag<double>{});
    case DType::f16:
      return std::forward<F>(f)(Tag<__half>{});
    case DType::bf16:
      return std::forward<F>(f)(Tag<__nv_bfloat16>{});
  }
  throw Error(ErrorKind::invalid_argument, "gpu test: unknown dtype");
}

template <class T>
constexpr DType dtype_of() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<U, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<U, __half>)
    return DType::f16;
  else
    return DType::bf16;
}

struct DeviceMatrix::Impl {
  DType dtype = DType::f32;
  index_t rows = 0, cols = 0;
  bool strided = false;
  double gap = 0;
  index_t full_rows = 0, full_cols = 0;
  index_t offset = 0;  // elements from the start of the storage to (0, 0) of the view
  peft::detail::Allocation<Cuda> storage;

  template <class T>
  MatrixView<T, Cuda> view() const {
    PEFT_CHECK_ARG(dtype_of<T>() == dtype, "gpu test: a ", name(dtype), " device matrix used as ",
                   name(dtype_of<T>()));
    if (rows == 0 || cols == 0) return MatrixView<T, Cuda>(nullptr, rows, cols);
    using U = std::remove_const_t<T>;
    return MatrixView<T, Cuda>(static_cast<U*>(storage.data()) + offset, rows, cols, full_cols);
  }
  template <class T>
  MatrixView<T, Cuda> full() const {
    using U = std::remove_const_t<T>;
    return MatrixView<T, Cuda>(static_cast<U*>(storage.data()), full_rows, full_cols);
  }
};

struct DeviceBytes::Impl {
  Vector<std::byte, Cuda> bytes;
};

/// Typed views of a test matrix (throws when the dtype differs).
template <class T>
MatrixView<T, Cuda> view(DeviceMatrix& m) {
  return m.impl().view<T>();
}
template <class T>
MatrixView<const T, Cuda> cview(const DeviceMatrix& m) {
  return m.impl().view<const T>();
}

}  // namespace peft::gpu
