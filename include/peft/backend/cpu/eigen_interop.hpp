#pragma once
// Conversions between library views and Eigen maps (CPU only; Eigen stays inside backend/).

#include <Eigen/Core>

#include "../../core/view.hpp"

namespace peft::cpu {

template <class T>
using RowMajorMap = Eigen::Map<
    std::conditional_t<std::is_const_v<T>,
                       const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic,
                                           Eigen::RowMajor>,
                       Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>,
    Eigen::Unaligned, Eigen::OuterStride<>>;

/// An Eigen map over a view: no copy.
template <class T>
RowMajorMap<T> eigen_map(MatrixView<T, Cpu> v) {
  return RowMajorMap<T>(v.data(), v.rows(), v.cols(), Eigen::OuterStride<>(v.stride()));
}

/// A view of a row-major Eigen matrix or block (e.g. from Eigen::Ref).
template <class Derived>
auto view_of(Eigen::PlainObjectBase<Derived>& m) {
  static_assert(Derived::IsRowMajor, "peft views are row-major: use Eigen::RowMajor matrices");
  using T = typename Derived::Scalar;
  return MatrixView<T, Cpu>(m.data(), m.rows(), m.cols(), m.outerStride());
}

template <class T, int Options, class Stride>
MatrixView<T, Cpu> view_of(
    Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, Options, Stride>
        ref) {
  return MatrixView<T, Cpu>(ref.data(), ref.rows(), ref.cols(), ref.outerStride());
}

}  // namespace peft::cpu
