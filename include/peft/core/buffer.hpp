#pragma once
// Owning storage: Matrix<T, B> and Vector<T, B>. Move-only, zero-initialised, 64-byte aligned
// on the host. Each backend provides detail::Allocator<B> (host memory here, cudaMalloc in
// backend/cuda).

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "backend.hpp"
#include "view.hpp"

namespace peft {
namespace detail {

template <class B>
struct Allocator;

template <>
struct Allocator<Cpu> {
  static constexpr std::size_t alignment = 64;
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    counter().fetch_add(1, std::memory_order_relaxed);
    const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    return p;
  }
  static void deallocate(void* p) noexcept { std::free(p); }
  /// Allocations made so far in this process (tests use it to prove that hot paths allocate
  /// nothing).
  static std::size_t allocations() noexcept { return counter().load(std::memory_order_relaxed); }

 private:
  static std::atomic<std::size_t>& counter() noexcept {
    static std::atomic<std::size_t> count{0};
    return count;
  }
};

/// Type-erased owning allocation of `bytes` bytes on backend B.
template <class B>
class Allocation {
 public:
  Allocation() = default;
  explicit Allocation(std::size_t bytes) : data_(Allocator<B>::allocate(bytes)), bytes_(bytes) {}
  Allocation(Allocation&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Allocation& operator=(Allocation&& o) noexcept {
    if (this != &o) {
      Allocator<B>::deallocate(data_);
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;
  ~Allocation() { Allocator<B>::deallocate(data_); }

  void* data() const noexcept { return data_; }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

inline std::size_t checked_bytes(index_t count, std::size_t element_size, const char* what) {
  PEFT_CHECK_SHAPE(count >= 0, what, ": negative element count ", count);
  PEFT_CHECK_SHAPE(
      static_cast<std::size_t>(count) <= std::numeric_limits<std::size_t>::max() / element_size,
      what, ": ", count, " elements of ", element_size, " bytes overflow size_t");
  return static_cast<std::size_t>(count) * element_size;
}

/// rows * cols, checked before it is computed: no negative sizes, no index_t overflow.
inline index_t checked_count(index_t rows, index_t cols, const char* what) {
  PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0, what, ": negative size ", rows, " x ", cols);
  PEFT_CHECK_SHAPE(cols == 0 || rows <= std::numeric_limits<index_t>::max() / cols, what, ": ",
                   rows, " x ", cols, " elements overflow index_t");
  return rows * cols;
}

}  // namespace detail

/// Owning rows x cols row-major matrix, zero-initialised.
template <class T, class B>
class Matrix {
 public:
  using value_type = T;
  using backend_type = B;

  Matrix() = default;
  Matrix(index_t rows, index_t cols)
      : storage_(detail::checked_bytes(detail::checked_count(rows, cols, "Matrix"), sizeof(T),
                                       "Matrix")),
        rows_(rows),
        cols_(cols) {}
  // A moved-from matrix is empty (0 x 0), not a shape over null data.
  Matrix(Matrix&& o) noexcept
      : storage_(std::move(o.storage_)),
        rows_(std::exchange(o.rows_, 0)),
        cols_(std::exchange(o.cols_, 0)) {}
  Matrix& operator=(Matrix&& o) noexcept {
    storage_ = std::move(o.storage_);
    rows_ = std::exchange(o.rows_, 0);
    cols_ = std::exchange(o.cols_, 0);
    return *this;
  }

  T* data() noexcept { return static_cast<T*>(storage_.data()); }
  const T* data() const noexcept { return static_cast<const T*>(storage_.data()); }
  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t size() const noexcept { return rows_ * cols_; }
  bool empty() const noexcept { return size() == 0; }

  MatrixView<T, B> view() noexcept { return {data(), rows_, cols_}; }
  MatrixView<const T, B> view() const noexcept { return {data(), rows_, cols_}; }

 private:
  detail::Allocation<B> storage_;
  index_t rows_ = 0;
  index_t cols_ = 0;
};

/// Owning contiguous vector, zero-initialised.
template <class T, class B>
class Vector {
 public:
  using value_type = T;
  using backend_type = B;

  Vector() = default;
  explicit Vector(index_t size)
      : storage_(detail::checked_bytes(size, sizeof(T), "Vector")), size_(size) {}
  Vector(Vector&& o) noexcept : storage_(std::move(o.storage_)), size_(std::exchange(o.size_, 0)) {}
  Vector& operator=(Vector&& o) noexcept {
    storage_ = std::move(o.storage_);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }

  T* data() noexcept { return static_cast<T*>(storage_.data()); }
  const T* data() const noexcept { return static_cast<const T*>(storage_.data()); }
  index_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

  VectorView<T, B> view() noexcept { return {data(), size_}; }
  VectorView<const T, B> view() const noexcept { return {data(), size_}; }

 private:
  detail::Allocation<B> storage_;
  index_t size_ = 0;
};

}  // namespace peft
