#pragma once
// Context<Cpu>: a thread count and a scratch workspace. Passed to every call, as cuBLAS passes
// its handle; there is no hidden global state in the library.

#include <algorithm>

#include "../../core/backend.hpp"
#include "../../core/workspace.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace peft {

struct CpuContextOptions {
  /// Threads for OpenMP loops, Eigen and the BLAS. 0 = OpenMP's default (OMP_NUM_THREADS).
  int threads = 0;
};

template <>
class Context<Cpu> {
 public:
  using backend_type = Cpu;

  Context() : Context(CpuContextOptions{}) {}
  explicit Context(CpuContextOptions options) {
    PEFT_CHECK_ARG(options.threads >= 0, "Context<Cpu>: threads is ", options.threads,
                   ", expected >= 0");
    threads_ = options.threads > 0 ? options.threads : default_threads();
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int threads() const noexcept { return threads_; }
  void set_threads(int threads) {
    PEFT_CHECK_ARG(threads >= 1, "Context<Cpu>::set_threads: threads is ", threads,
                   ", expected >= 1");
    threads_ = threads;
  }

  detail::Workspace<Cpu>& workspace() noexcept { return workspace_; }

 private:
  static int default_threads() {
#if defined(_OPENMP)
    return std::max(1, omp_get_max_threads());
#else
    return 1;
#endif
  }

  int threads_ = 1;
  detail::Workspace<Cpu> workspace_;
};

}  // namespace peft
