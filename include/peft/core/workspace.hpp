#pragma once
// Scratch memory for the duration of one call, owned by a Context. A bump arena: a call opens a
// Frame, takes what it needs, and the Frame gives it back. When a request does not fit, an
// overflow block is allocated for that call only; once the outermost frame closes, the arena
// regrows to the peak it saw, so a steady workload allocates nothing after its first call.
// Closing a frame never throws (frames close in destructors, also during unwinding): when that
// regrow fails for lack of memory, it is left pending and the next frame or reserve retries it
// and reports the failure as a peft::Error.

#include <algorithm>
#include <cstddef>
#include <vector>

#include "buffer.hpp"

namespace peft::detail {

template <class B>
class Workspace {
 public:
  static constexpr std::size_t alignment = 256;

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  /// Grows the arena to at least `bytes` (no frame may be open).
  void reserve(std::size_t bytes) {
    PEFT_CHECK(depth_ == 0, ErrorKind::state, "Workspace::reserve: called while a frame is open");
    regrow();
    if (bytes > main_.bytes()) {
      main_ = Allocation<B>();  // give the old arena back first: both may not fit at once
      main_ = Allocation<B>(bytes);
      ++allocations_;
    }
  }

  std::size_t capacity() const noexcept { return main_.bytes(); }
  /// Number of allocations made so far; tests use it to prove that hot paths allocate nothing.
  std::size_t allocations() const noexcept { return allocations_; }

  class Frame {
   public:
    explicit Frame(Workspace& ws) : ws_(ws), saved_used_(ws.used_) {
      if (ws_.depth_ == 0) ws_.regrow();  // a regrow that failed when the last frame closed
      ++ws_.depth_;
    }
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;
    ~Frame() { ws_.close(saved_used_); }

    /// count elements of T, aligned, valid until the frame closes.
    template <class T>
    T* take(index_t count) {
      return static_cast<T*>(ws_.take_bytes(checked_bytes(count, sizeof(T), "Workspace")));
    }
    template <class T>
    MatrixView<T, B> matrix(index_t rows, index_t cols) {
      return MatrixView<T, B>(take<T>(checked_count(rows, cols, "Workspace")), rows, cols);
    }

   private:
    Workspace& ws_;
    std::size_t saved_used_;
  };

 private:
  void* take_bytes(std::size_t bytes) {
    const std::size_t size = (bytes + alignment - 1) / alignment * alignment;
    if (size == 0) return nullptr;
    peak_ = std::max(peak_, used_ + size);
    if (used_ + size <= main_.bytes()) {
      void* p = static_cast<std::byte*>(main_.data()) + used_;
      used_ += size;
      return p;
    }
    used_ += size;  // counted towards the peak, served from an overflow block
    overflow_.emplace_back(size);
    ++allocations_;
    return overflow_.back().data();
  }

  void close(std::size_t saved_used) noexcept {
    used_ = saved_used;
    if (--depth_ == 0 && !overflow_.empty()) {
      overflow_.clear();
      regrow_pending_ = true;
      try {
        regrow();
      } catch (...) {  // out of memory: the next frame or reserve retries and reports it
      }
    }
  }

  /// Grows the arena to the peak seen, when an overflow asked for it (no frame may be open).
  void regrow() {
    if (!regrow_pending_) return;
    main_ = Allocation<B>();  // give the old arena back first: both may not fit at once
    main_ = Allocation<B>(peak_);
    ++allocations_;
    regrow_pending_ = false;
  }

  Allocation<B> main_;
  std::vector<Allocation<B>> overflow_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  int depth_ = 0;
  std::size_t allocations_ = 0;
  bool regrow_pending_ = false;
};

}  // namespace peft::detail
