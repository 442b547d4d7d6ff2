#pragma once
// The library behind the CPU gemm of float and double, chosen when peft is configured (CMake's
// PEFT_GEMM_PROVIDER), which defines one of PEFT_GEMM_PROVIDER_OPENBLAS, _ONEDNN or _BLIS on the
// peft::peft target (none: Eigen). Every provider has one function with the same call,
// C = alpha op(A) op(B) + beta C on row-major strided views with m, n, k >= 1; dense.hpp is the
// only caller (it handles empty shapes and 16-bit operands).
//
//   openblas  cblas_?gemm of OpenBLAS (its OpenMP build)
//   onednn    dnnl_sgemm of oneDNN for float; it has no double gemm, so double goes to OpenBLAS's
//             cblas_dgemm when OpenBLAS is linked too (PEFT_USE_BLAS), else to Eigen
//   blis      bli_?gemm of BLIS (its OpenMP build), which takes row and column strides directly
//   eigen     Eigen's own product
//
// PEFT_USE_BLAS means that OpenBLAS (cblas and LAPACK) is linked, whichever the provider.

#include <climits>
#include <string>
#include <type_traits>

#include <Eigen/Core>

#include "../../core/error.hpp"
#include "../../core/view.hpp"
#include "eigen_interop.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(PEFT_USE_BLAS)
#include <cblas.h>
// OpenBLAS's own thread control and kernel name; weak so that another cblas still links.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_corename(void) __attribute__((weak));
#endif
#if defined(PEFT_GEMM_PROVIDER_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#if DNNL_CPU_THREADING_RUNTIME != DNNL_RUNTIME_OMP
#error "peft: oneDNN must be its OpenMP build (the Context's threads reach it through OpenMP)"
#endif
#elif defined(PEFT_GEMM_PROVIDER_BLIS)
#include <blis.h>
#if defined(BLIS_ENABLE_PTHREADS)
#error "peft: BLIS's pthreads build competes with OpenMP's threads: use its OpenMP build"
#endif
#endif

#if (defined(PEFT_GEMM_PROVIDER_OPENBLAS) + defined(PEFT_GEMM_PROVIDER_ONEDNN) + \
     defined(PEFT_GEMM_PROVIDER_BLIS)) > 1
#error "peft: more than one PEFT_GEMM_PROVIDER_* is defined"
#endif
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS) && !defined(PEFT_USE_BLAS)
#error "peft: PEFT_GEMM_PROVIDER_OPENBLAS needs OpenBLAS's cblas (PEFT_USE_BLAS)"
#endif

namespace peft::cpu {

/// The gemm provider peft was built with: "openblas", "onednn", "blis" or "eigen".
inline constexpr const char* gemm_provider_name() {
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS)
  return "openblas";
#elif defined(PEFT_GEMM_PROVIDER_ONEDNN)
  return "onednn";
#elif defined(PEFT_GEMM_PROVIDER_BLIS)
  return "blis";
#else
  return "eigen";
#endif
}

/// What the provider runs on this CPU: OpenBLAS's core ("SkylakeX"), oneDNN's version and the
/// instruction set it dispatches to, BLIS's version and sub-configuration ("haswell").
inline std::string gemm_provider_kernel() {
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS)
  return openblas_get_corename != nullptr ? openblas_get_corename() : "unknown cblas";
#elif defined(PEFT_GEMM_PROVIDER_ONEDNN)
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " isa " + dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa());
#elif defined(PEFT_GEMM_PROVIDER_BLIS)
  return std::string("BLIS ") + bli_info_get_version_str() + " " +
         bli_arch_string(bli_arch_query_id());
#else
  return "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
         std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION);
#endif
}

namespace detail {

/// Gives the providers with a global thread count (OpenBLAS, BLIS) the Context's. oneDNN reads
/// OpenMP's count at each call instead (gemm_onednn sets it for that call only).
inline void set_provider_threads(int threads) {
#if defined(PEFT_USE_BLAS)
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(threads);
#endif
#if defined(PEFT_GEMM_PROVIDER_BLIS)
  bli_thread_set_num_threads(threads);
#endif
  (void)threads;
}

/// The leading dimension of a row-major view for a BLAS (at least 1, also for one row).
inline index_t leading_dim(index_t stride) {
  return stride > 0 ? stride : 1;
}

inline int blas_int(index_t v, const char* what) {
  PEFT_CHECK_SHAPE(v <= INT_MAX, "gemm: ", what, " = ", v, " exceeds the BLAS int range");
  return static_cast<int>(v);
}

template <class T>
void gemm_eigen(Op op_a, Op op_b, T alpha, MatrixView<const T, Cpu> a, MatrixView<const T, Cpu> b,
                T beta, MatrixView<T, Cpu> c) {
  auto cm = eigen_map(c);
  const auto am = eigen_map(a);
  const auto bm = eigen_map(b);
  if (beta == T(0)) {
    cm.setZero();
  } else if (beta != T(1)) {
    cm *= beta;
  }
  if (op_a == Op::N && op_b == Op::N) cm.noalias() += alpha * (am * bm);
  if (op_a == Op::N && op_b == Op::T) cm.noalias() += alpha * (am * bm.transpose());
  if (op_a == Op::T && op_b == Op::N) cm.noalias() += alpha * (am.transpose() * bm);
  if (op_a == Op::T && op_b == Op::T) cm.noalias() += alpha * (am.transpose() * bm.transpose());
}

#if defined(PEFT_USE_BLAS)
template <class T>
void gemm_openblas(Op op_a, Op op_b, T alpha, MatrixView<const T, Cpu> a,
                   MatrixView<const T, Cpu> b, T beta, MatrixView<T, Cpu> c, index_t k) {
  const auto ta = op_a == Op::N ? CblasNoTrans : CblasTrans;
  const auto tb = op_b == Op::N ? CblasNoTrans : CblasTrans;
  const int m = blas_int(c.rows(), "rows of C"), n = blas_int(c.cols(), "cols of C");
  const int kk = blas_int(k, "inner dimension");
  const int lda = blas_int(leading_dim(a.stride()), "stride of A");
  const int ldb = blas_int(leading_dim(b.stride()), "stride of B");
  const int ldc = blas_int(leading_dim(c.stride()), "stride of C");
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, kk, alpha, a.data(), lda, b.data(), ldb, beta,
                c.data(), ldc);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, kk, alpha, a.data(), lda, b.data(), ldb, beta,
                c.data(), ldc);
  }
}
#endif

#if defined(PEFT_GEMM_PROVIDER_ONEDNN)
/// oneDNN's OpenMP build runs on omp_get_max_threads() threads: the Context's count is set for
/// the call and the caller's OpenMP setting restored after it.
class OmpThreadsForCall {
 public:
  explicit OmpThreadsForCall(int threads) {
#if defined(_OPENMP)
    saved_ = omp_get_max_threads();
    if (saved_ != threads) omp_set_num_threads(threads);
#endif
    threads_ = threads;
  }
  ~OmpThreadsForCall() {
#if defined(_OPENMP)
    if (saved_ != threads_) omp_set_num_threads(saved_);
#endif
  }
  OmpThreadsForCall(const OmpThreadsForCall&) = delete;
  OmpThreadsForCall& operator=(const OmpThreadsForCall&) = delete;

 private:
  int saved_ = 0, threads_ = 0;
};

inline void gemm_onednn(int threads, Op op_a, Op op_b, float alpha, MatrixView<const float, Cpu> a,
                        MatrixView<const float, Cpu> b, float beta, MatrixView<float, Cpu> c,
                        index_t k) {
  const OmpThreadsForCall scope(threads);
  const dnnl_status_t status =
      dnnl_sgemm(op_a == Op::N ? 'N' : 'T', op_b == Op::N ? 'N' : 'T', c.rows(), c.cols(), k, alpha,
                 a.data(), leading_dim(a.stride()), b.data(), leading_dim(b.stride()), beta,
                 c.data(), leading_dim(c.stride()));
  PEFT_CHECK(status == dnnl_success, ErrorKind::invalid_argument, "gemm: oneDNN's dnnl_sgemm (",
             c.rows(), " x ", c.cols(), " x ", k, ") failed: ", dnnl_status2str(status));
}
#endif

#if defined(PEFT_GEMM_PROVIDER_BLIS)
template <class T>
void gemm_blis(Op op_a, Op op_b, T alpha, MatrixView<const T, Cpu> a, MatrixView<const T, Cpu> b,
               T beta, MatrixView<T, Cpu> c, index_t k) {
  // BLIS's typed API takes non-const pointers; it reads A, B, alpha and beta only.
  const trans_t ta = op_a == Op::N ? BLIS_NO_TRANSPOSE : BLIS_TRANSPOSE;
  const trans_t tb = op_b == Op::N ? BLIS_NO_TRANSPOSE : BLIS_TRANSPOSE;
  T* const pa = const_cast<T*>(a.data());
  T* const pb = const_cast<T*>(b.data());
  if constexpr (std::is_same_v<T, float>) {
    bli_sgemm(ta, tb, c.rows(), c.cols(), k, &alpha, pa, a.stride(), 1, pb, b.stride(), 1, &beta,
              c.data(), c.stride(), 1);
  } else {
    bli_dgemm(ta, tb, c.rows(), c.cols(), k, &alpha, pa, a.stride(), 1, pb, b.stride(), 1, &beta,
              c.data(), c.stride(), 1);
  }
}
#endif

/// C = alpha op(A) op(B) + beta C through the provider, for float and double; m, n, k >= 1.
template <class T>
void provider_gemm(int threads, Op op_a, Op op_b, T alpha, MatrixView<const T, Cpu> a,
                   MatrixView<const T, Cpu> b, T beta, MatrixView<T, Cpu> c, index_t k) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  (void)threads, (void)k;
#if defined(PEFT_GEMM_PROVIDER_OPENBLAS)
  gemm_openblas<T>(op_a, op_b, alpha, a, b, beta, c, k);
#elif defined(PEFT_GEMM_PROVIDER_ONEDNN)
  if constexpr (std::is_same_v<T, float>) {
    gemm_onednn(threads, op_a, op_b, alpha, a, b, beta, c, k);
  } else {
#if defined(PEFT_USE_BLAS)
    gemm_openblas<T>(op_a, op_b, alpha, a, b, beta, c, k);
#else
    gemm_eigen<T>(op_a, op_b, alpha, a, b, beta, c);
#endif
  }
#elif defined(PEFT_GEMM_PROVIDER_BLIS)
  gemm_blis<T>(op_a, op_b, alpha, a, b, beta, c, k);
#else
  gemm_eigen<T>(op_a, op_b, alpha, a, b, beta, c);
#endif
}

}  // namespace detail
}  // namespace peft::cpu
