#pragma once
// Device memory for Matrix<T, Cuda>, Vector<T, Cuda> and the workspace: cudaMalloc, zeroed.

#include <atomic>
#include <cstddef>

#include "../../core/buffer.hpp"
#include "check.hpp"

namespace peft::detail {

template <>
struct Allocator<Cuda> {
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    counter().fetch_add(1, std::memory_order_relaxed);
    void* p = nullptr;
    PEFT_CUDA_CHECK(cudaMalloc(&p, bytes));
    // cudaMemset runs on the default stream, which the context's non-blocking stream does not
    // wait for: finish it here (allocation is never on a hot path).
    cudaError_t status = cudaMemset(p, 0, bytes);
    if (status == cudaSuccess) status = cudaStreamSynchronize(nullptr);
    if (status != cudaSuccess) {
      cudaFree(p);
      PEFT_CUDA_CHECK(status);
    }
    return p;
  }
  // Errors while freeing (e.g. a context torn down at exit) cannot be reported from a destructor.
  static void deallocate(void* p) noexcept {
    if (p != nullptr) (void)cudaFree(p);
  }
  /// cudaMalloc calls made so far in this process (tests use it to prove that hot paths
  /// allocate nothing: a cudaMalloc may synchronise the device).
  static std::size_t allocations() noexcept { return counter().load(std::memory_order_relaxed); }

 private:
  static std::atomic<std::size_t>& counter() noexcept {
    static std::atomic<std::size_t> count{0};
    return count;
  }
};

}  // namespace peft::detail
