#pragma once
// Non-owning, row-major, strided views. The backend is part of the type, so a GPU
// pointer cannot be handed to a CPU adapter by accident.

#include <type_traits>

#include "backend.hpp"
#include "config.hpp"
#include "error.hpp"

namespace peft {

/// rows x cols elements; element (i, j) lives at data[i * stride + j]. stride >= cols.
template <class T, class B>
class MatrixView {
 public:
  using value_type = T;
  using backend_type = B;

  MatrixView() = default;
  MatrixView(T* data, index_t rows, index_t cols) : MatrixView(data, rows, cols, cols) {}
  MatrixView(T* data, index_t rows, index_t cols, index_t stride)
      : data_(data), rows_(rows), cols_(cols), stride_(stride) {
    PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0, "MatrixView: negative size ", rows, " x ", cols);
    PEFT_CHECK_SHAPE(stride >= cols, "MatrixView: stride ", stride, " is smaller than cols ", cols);
    PEFT_CHECK_ARG(data != nullptr || rows * cols == 0, "MatrixView: null data for a ", rows, " x ",
                   cols, " view");
  }

  /// A view of T converts to a view of const T.
  template <class U>
  requires(std::is_same_v<T, const U>)
      MatrixView(const MatrixView<U, B>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), stride_(other.stride()) {}

  T* data() const noexcept { return data_; }
  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t stride() const noexcept { return stride_; }
  index_t size() const noexcept { return rows_ * cols_; }
  bool empty() const noexcept { return rows_ == 0 || cols_ == 0; }
  bool contiguous() const noexcept { return stride_ == cols_ || rows_ <= 1; }

  /// Host-side element access (CPU views only).
  T& operator()(index_t i, index_t j) const noexcept requires std::is_same_v<B, Cpu> {
    return data_[i * stride_ + j];
  }

  /// Sub-matrix of nr x nc elements starting at (r0, c0), sharing the stride.
  MatrixView block(index_t r0, index_t c0, index_t nr, index_t nc) const {
    PEFT_CHECK_SHAPE(
        r0 >= 0 && c0 >= 0 && nr >= 0 && nc >= 0 && r0 + nr <= rows_ && c0 + nc <= cols_,
        "MatrixView::block: [", r0, ", ", r0 + nr, ") x [", c0, ", ", c0 + nc, ") is outside a ",
        rows_, " x ", cols_, " view");
    return MatrixView(data_ + r0 * stride_ + c0, nr, nc, stride_);
  }
  MatrixView rows_range(index_t r0, index_t nr) const { return block(r0, 0, nr, cols_); }

 private:
  T* data_ = nullptr;
  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t stride_ = 0;
};

/// size elements, element i at data[i * inc]. inc >= 1.
template <class T, class B>
class VectorView {
 public:
  using value_type = T;
  using backend_type = B;

  VectorView() = default;
  VectorView(T* data, index_t size, index_t inc = 1) : data_(data), size_(size), inc_(inc) {
    PEFT_CHECK_SHAPE(size >= 0, "VectorView: negative size ", size);
    PEFT_CHECK_SHAPE(inc >= 1, "VectorView: increment ", inc, " must be at least 1");
    PEFT_CHECK_ARG(data != nullptr || size == 0, "VectorView: null data for ", size, " elements");
  }

  template <class U>
  requires(std::is_same_v<T, const U>)
      VectorView(const VectorView<U, B>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), size_(other.size()), inc_(other.inc()) {}

  T* data() const noexcept { return data_; }
  index_t size() const noexcept { return size_; }
  index_t inc() const noexcept { return inc_; }
  bool empty() const noexcept { return size_ == 0; }

  T& operator[](index_t i) const noexcept requires std::is_same_v<B, Cpu> {
    return data_[i * inc_];
  }

  /// The vector seen as a 1 x size matrix (contiguous vectors only).
  MatrixView<T, B> as_row() const {
    PEFT_CHECK_SHAPE(inc_ == 1, "VectorView::as_row: increment ", inc_, " is not 1");
    return MatrixView<T, B>(data_, size_ == 0 ? 0 : 1, size_);
  }

 private:
  T* data_ = nullptr;
  index_t size_ = 0;
  index_t inc_ = 1;
};

template <class T, class B>
MatrixView<const T, B> as_const(MatrixView<T, B> v) {
  return v;
}

/// "r x c" for error messages.
template <class T, class B>
std::string shape_string(const MatrixView<T, B>& v) {
  return detail::concat(v.rows(), " x ", v.cols());
}

}  // namespace peft
