#pragma once
// gemm on NVIDIA GPUs through cublasGemmEx with fp32 accumulation (fp64 for double; TF32 only
// when the Context allows it). Row-major C = op(A) op(B) is computed as the column-major
// Cᵀ = op(B)ᵀ op(A)ᵀ, so no operand is transposed or copied.

#include <climits>
#include <type_traits>

#include "../checks.hpp"
#include "context.hpp"
#include "dtype.cuh"
#include "elementwise.cuh"

namespace peft::gpu {
namespace detail {

inline int blas_int(index_t v, const char* what) {
  PEFT_CHECK_SHAPE(v <= INT_MAX, "gemm: ", what, " = ", v, " exceeds the cuBLAS int range");
  return static_cast<int>(v);
}

}  // namespace detail

/// C = alpha op(A) op(B) + beta C. A and B share an element type TA (float, double, __half,
/// __nv_bfloat16); C is TA, or float for 16-bit TA. With beta = 0, C is not read.
template <class TA, class TB, class TC>
void gemm(Context<Cuda>& ctx, Op op_a, Op op_b, double alpha, MatrixView<TA, Cuda> a,
          MatrixView<TB, Cuda> b, double beta, MatrixView<TC, Cuda> c) {
  using T = std::remove_const_t<TA>;
  static_assert(std::is_same_v<T, std::remove_const_t<TB>>, "gemm: A and B must share a type");
  static_assert(!std::is_const_v<TC>, "gemm: C must be writable");
  static_assert(std::is_same_v<TC, T> || (is_16bit_v<T> && std::is_same_v<TC, float>),
                "gemm: C must have the type of A and B, or float for 16-bit A and B");

  const auto [m, n, k] = peft::detail::check_gemm(op_a, a, op_b, b, c);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // no products: C = beta C, as on the CPU (never hand cuBLAS empty operands)
    if (beta == 0)
      fill(ctx, c, 0.0);
    else
      scale(ctx, beta, c);
    return;
  }

  const auto to_cublas = [](Op op) { return op == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; };
  const int mm = detail::blas_int(m, "rows of C"), nn = detail::blas_int(n, "cols of C");
  const int kk = detail::blas_int(k, "inner dimension");
  // cuBLAS wants leading dimensions >= 1 even for empty operands.
  const int lda = detail::blas_int(std::max<index_t>(a.stride(), 1), "stride of A");
  const int ldb = detail::blas_int(std::max<index_t>(b.stride(), 1), "stride of B");
  const int ldc = detail::blas_int(std::max<index_t>(c.stride(), 1), "stride of C");

  if constexpr (std::is_same_v<T, double>) {
    const double al = alpha, be = beta;
    PEFT_CUDA_CHECK(cublasGemmEx(ctx.cublas(), to_cublas(op_b), to_cublas(op_a), nn, mm, kk, &al,
                                 b.data(), CUDA_R_64F, ldb, a.data(), CUDA_R_64F, lda, &be,
                                 c.data(), CUDA_R_64F, ldc, CUBLAS_COMPUTE_64F,
                                 CUBLAS_GEMM_DEFAULT));
  } else {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const cublasComputeType_t compute = std::is_same_v<T, float> && ctx.allow_tf32()
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F;
    PEFT_CUDA_CHECK(cublasGemmEx(ctx.cublas(), to_cublas(op_b), to_cublas(op_a), nn, mm, kk, &al,
                                 b.data(), detail::data_type<T>(), ldb, a.data(),
                                 detail::data_type<T>(), lda, &be, c.data(),
                                 detail::data_type<TC>(), ldc, compute, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace peft::gpu
