#pragma once
// gemm on the CPU: C = alpha op(A) op(B) + beta C on row-major strided views, without copies.
// float and double go to cblas_?gemm when PEFT_USE_BLAS is defined (set by the CMake target when
// a system BLAS is found), otherwise to Eigen. 16-bit inputs are staged through fp32 in the
// Context's workspace so that they accumulate in fp32, as cuBLAS does on the GPU.

#include <climits>
#include <type_traits>

#include <Eigen/Core>

#include "../../core/dtype.hpp"
#include "context.hpp"
#include "eigen_interop.hpp"

#if defined(PEFT_USE_BLAS)
#include <cblas.h>
// OpenBLAS's own thread control; weak so that other BLAS libraries still link.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#endif

namespace peft::cpu {
namespace detail {

/// Sends the Context's thread count to Eigen and the BLAS (only when it changed).
inline void apply_threads(Context<Cpu>& ctx) {
  static thread_local int applied = -1;
  if (applied == ctx.threads()) return;
  applied = ctx.threads();
  Eigen::setNbThreads(ctx.threads());
#if defined(PEFT_USE_BLAS)
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(ctx.threads());
#endif
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

template <class T>
void gemm_native(Op op_a, Op op_b, T alpha, MatrixView<const T, Cpu> a, MatrixView<const T, Cpu> b,
                 T beta, MatrixView<T, Cpu> c, index_t k) {
#if defined(PEFT_USE_BLAS)
  const auto ta = op_a == Op::N ? CblasNoTrans : CblasTrans;
  const auto tb = op_b == Op::N ? CblasNoTrans : CblasTrans;
  const int m = blas_int(c.rows(), "rows of C"), n = blas_int(c.cols(), "cols of C");
  const int kk = blas_int(k, "inner dimension");
  const int lda = blas_int(a.stride() > 0 ? a.stride() : 1, "stride of A");
  const int ldb = blas_int(b.stride() > 0 ? b.stride() : 1, "stride of B");
  const int ldc = blas_int(c.stride() > 0 ? c.stride() : 1, "stride of C");
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, kk, alpha, a.data(), lda, b.data(), ldb, beta,
                c.data(), ldc);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, kk, alpha, a.data(), lda, b.data(), ldb, beta,
                c.data(), ldc);
  }
#else
  (void)k;
  gemm_eigen<T>(op_a, op_b, alpha, a, b, beta, c);
#endif
}

/// Element-wise conversion between strided views of equal shape.
template <class S, class D>
void convert(Context<Cpu>& ctx, MatrixView<const S, Cpu> src, MatrixView<D, Cpu> dst) {
  const index_t rows = src.rows(), cols = src.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > (1 << 16))
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      dst.data()[i * dst.stride() + j] = convert_value<D>(src.data()[i * src.stride() + j]);
}

}  // namespace detail

/// C = alpha op(A) op(B) + beta C. A and B share an element type TA; C is TA, or float when TA
/// is a 16-bit type (fp32 gradients of 16-bit activations). With beta = 0, C is not read.
template <class TA, class TB, class TC>
void gemm(Context<Cpu>& ctx, Op op_a, Op op_b, double alpha, MatrixView<TA, Cpu> a,
          MatrixView<TB, Cpu> b, double beta, MatrixView<TC, Cpu> c) {
  using T = std::remove_const_t<TA>;
  static_assert(std::is_same_v<T, std::remove_const_t<TB>>, "gemm: A and B must share a type");
  static_assert(!std::is_const_v<TC>, "gemm: C must be writable");
  static_assert(std::is_same_v<TC, T> || (is_16bit_v<T> && std::is_same_v<TC, float>),
                "gemm: C must have the type of A and B, or float for 16-bit A and B");

  const index_t m = op_a == Op::N ? a.rows() : a.cols();
  const index_t k = op_a == Op::N ? a.cols() : a.rows();
  const index_t kb = op_b == Op::N ? b.rows() : b.cols();
  const index_t n = op_b == Op::N ? b.cols() : b.rows();
  PEFT_CHECK_SHAPE(k == kb, "gemm: op(A) is ", m, " x ", k, " but op(B) is ", kb, " x ", n,
                   " (inner dimensions differ)");
  PEFT_CHECK_SHAPE(c.rows() == m && c.cols() == n, "gemm: C is ", shape_string(c),
                   ", op(A) op(B) is ", m, " x ", n);
  if (m == 0 || n == 0) return;
  detail::apply_threads(ctx);

  if constexpr (!is_16bit_v<T>) {
    if (k == 0) {  // no products: C = beta C
      auto cm = eigen_map(c);
      if (beta == 0)
        cm.setZero();
      else
        cm *= static_cast<T>(beta);
      return;
    }
    detail::gemm_native<T>(op_a, op_b, static_cast<T>(alpha), a, b, static_cast<T>(beta), c, k);
  } else {
    typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
    auto af = frame.matrix<float>(a.rows(), a.cols());
    auto bf = frame.matrix<float>(b.rows(), b.cols());
    detail::convert<T, float>(ctx, a, af);
    detail::convert<T, float>(ctx, b, bf);
    if constexpr (std::is_same_v<TC, float>) {
      gemm(ctx, op_a, op_b, alpha, as_const(af), as_const(bf), beta, c);
    } else {
      auto cf = frame.matrix<float>(m, n);
      if (beta != 0) detail::convert<T, float>(ctx, as_const(c), cf);
      gemm(ctx, op_a, op_b, alpha, as_const(af), as_const(bf), beta, cf);
      detail::convert<float, T>(ctx, as_const(cf), c);
    }
  }
}

}  // namespace peft::cpu
