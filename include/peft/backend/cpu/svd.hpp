#pragma once
// truncated_svd on the CPU: the randomized range finder of backend/svd.hpp, its products with W
// through the gemm primitive (the BLAS), its orthonormalisations by Householder QR (LAPACK's
// geqrf + orgqr from the BLAS library with PEFT_USE_BLAS, else Eigen's HouseholderQR), the small
// l x l SVD by Eigen's JacobiSVD. Not a hot path (a layer runs it once, at construction):
// it allocates its own buffers instead of growing the Context's workspace to their size.
//
// Tall l-column matrices are kept as row-major [l, k] buffers, which are column-major [k, l]
// matrices: the layout the QR wants, the same as on the GPU (backend/cuda/svd.cuh).

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>
#include <vector>

#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>

#include "../../core/buffer.hpp"
#include "../svd.hpp"
#include "context.hpp"
#include "dense.hpp"
#include "eigen_interop.hpp"
#include "elementwise.hpp"

#if defined(PEFT_USE_BLAS)
// LAPACK's Householder QR from the BLAS library (OpenBLAS ships it), with lapack.h's exact
// prototypes; weak, so that a BLAS without LAPACK still links (Eigen's QR then runs instead).
extern "C" {
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work,
             const int* lwork, int* info) __attribute__((weak));
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
             const int* lwork, int* info) __attribute__((weak));
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau,
             float* work, const int* lwork, int* info) __attribute__((weak));
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
             double* work, const int* lwork, int* info) __attribute__((weak));
}
#endif

namespace peft::cpu {
namespace detail {

template <class C>
using ColMajor = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

/// A contiguous row-major [l, k] buffer as the column-major [k, l] matrix it also is.
template <class C>
Eigen::Map<ColMajor<C>> column_major(MatrixView<C, Cpu> t) {
  return Eigen::Map<ColMajor<C>>(t.data(), t.cols(), t.rows());
}

#if defined(PEFT_USE_BLAS)
template <class C>
bool lapack_qr_available() {
  if constexpr (std::is_same_v<C, float>)
    return sgeqrf_ != nullptr && sorgqr_ != nullptr;
  else
    return dgeqrf_ != nullptr && dorgqr_ != nullptr;
}

/// orthonormalise through LAPACK's geqrf and orgqr (blocked, on the BLAS's threads).
template <class C>
void lapack_orthonormalise(MatrixView<C, Cpu> t, ColMajor<C>* r) {
  PEFT_CHECK_SHAPE(t.cols() <= INT_MAX, "truncated_svd: ", t.cols(),
                   " rows exceed LAPACK's int range");
  const int k = static_cast<int>(t.cols()), l = static_cast<int>(t.rows());
  std::vector<C> tau(static_cast<std::size_t>(l));
  int info = 0, query = -1;
  C size[2] = {};
  const auto geqrf = [&](C* work, const int* lwork) {
    if constexpr (std::is_same_v<C, float>)
      sgeqrf_(&k, &l, t.data(), &k, tau.data(), work, lwork, &info);
    else
      dgeqrf_(&k, &l, t.data(), &k, tau.data(), work, lwork, &info);
  };
  const auto orgqr = [&](C* work, const int* lwork) {
    if constexpr (std::is_same_v<C, float>)
      sorgqr_(&k, &l, &l, t.data(), &k, tau.data(), work, lwork, &info);
    else
      dorgqr_(&k, &l, &l, t.data(), &k, tau.data(), work, lwork, &info);
  };
  geqrf(&size[0], &query);
  orgqr(&size[1], &query);
  const int lwork = std::max({1, static_cast<int>(size[0]), static_cast<int>(size[1])});
  std::vector<C> work(static_cast<std::size_t>(lwork));
  geqrf(work.data(), &lwork);
  PEFT_CHECK(info == 0, ErrorKind::numeric, "truncated_svd: LAPACK geqrf returned info = ", info);
  if (r != nullptr) *r = column_major(t).topRows(l).template triangularView<Eigen::Upper>();
  orgqr(work.data(), &lwork);
  PEFT_CHECK(info == 0, ErrorKind::numeric, "truncated_svd: LAPACK orgqr returned info = ", info);
}
#endif

/// orthonormalise through Eigen's HouseholderQR (without a LAPACK).
template <class C>
void eigen_orthonormalise(MatrixView<C, Cpu> t, ColMajor<C>* r) {
  auto x = column_major(t);
  const Eigen::HouseholderQR<ColMajor<C>> qr(x);
  if (r != nullptr) *r = qr.matrixQR().topRows(x.cols()).template triangularView<Eigen::Upper>();
  x = qr.householderQ() * ColMajor<C>::Identity(x.rows(), x.cols());
}

/// Replaces the column-major [k, l] matrix in `t` (k >= l) by the Q of its thin QR; the R
/// (l x l, upper triangular) goes to *r when r is not null.
template <class C>
void orthonormalise(MatrixView<C, Cpu> t, ColMajor<C>* r = nullptr) {
#if defined(PEFT_USE_BLAS)
  if (lapack_qr_available<C>()) {
    lapack_orthonormalise(t, r);
    return;
  }
#endif
  eigen_orthonormalise(t, r);
}

/// The sign rule of backend/svd.hpp: the entry of largest magnitude of every column of U is
/// positive (the first on a tie); a flipped column flips the row of Vt.
template <class C>
void flip_signs(MatrixView<C, Cpu> u, MatrixView<C, Cpu> vt) {
  for (index_t j = 0; j < u.cols(); ++j) {
    index_t best = 0;
    C best_abs = -1;
    for (index_t i = 0; i < u.rows(); ++i)
      if (std::abs(u(i, j)) > best_abs) {
        best_abs = std::abs(u(i, j));
        best = i;
      }
    if (!(u(best, j) < C(0))) continue;
    for (index_t i = 0; i < u.rows(); ++i) u(i, j) = -u(i, j);
    for (index_t k = 0; k < vt.cols(); ++k) vt(j, k) = -vt(j, k);
  }
}

}  // namespace detail

/// op(W) ≈ U diag(S) Vt, rank r (backend/svd.hpp). W is any element type; U, S and Vt are float
/// or double, which is the type the SVD computes in.
template <class TW, class C>
void truncated_svd(Context<Cpu>& ctx, Op op_w, MatrixView<TW, Cpu> w, index_t r,
                   const SvdOptions& options, MatrixView<C, Cpu> u, VectorView<C, Cpu> s,
                   MatrixView<C, Cpu> vt) {
  static_assert(std::is_same_v<C, float> || std::is_same_v<C, double>,
                "truncated_svd: U, S and Vt must be float or double (the compute type)");
  const auto [m, n, rank, l] =
      peft::detail::check_truncated_svd("truncated_svd", op_w, w, r, options, u, s, vt);
  detail::apply_threads(ctx);

  // W in the compute type.
  Matrix<C, Cpu> converted;
  MatrixView<const C, Cpu> wc;
  if constexpr (std::is_same_v<std::remove_const_t<TW>, C>) {
    wc = w;
  } else {
    converted = Matrix<C, Cpu>(w.rows(), w.cols());
    copy(ctx, as_const(w), converted.view());
    wc = as_const(converted.view());
  }
  // Row-major [l, k] = X [k, l]ᵀ: y = op(W) x is yᵀ = xᵀ op(W)ᵀ, z = op(W)ᵀ q is zᵀ = qᵀ op(W).
  const Op op_wt = op_w == Op::N ? Op::T : Op::N;
  Matrix<C, Cpu> omega_t(l, n), y_t(l, m), z_t(l, n);
  peft::detail::fill_svd_sketch(omega_t.view(), options.seed);
  gemm(ctx, Op::N, op_wt, 1.0, as_const(omega_t.view()), wc, 0.0, y_t.view());
  for (index_t q = 0; q < options.power_iterations; ++q) {
    detail::orthonormalise(y_t.view());
    gemm(ctx, Op::N, op_w, 1.0, as_const(y_t.view()), wc, 0.0, z_t.view());
    detail::orthonormalise(z_t.view());
    gemm(ctx, Op::N, op_wt, 1.0, as_const(z_t.view()), wc, 0.0, y_t.view());
  }
  detail::orthonormalise(y_t.view());  // Q [m, l]
  // B = Qᵀ op(W) [l, n], kept as Bᵀ [n, l]; Bᵀ = Q₂ R₂; R₂ = U_a Σ V_aᵀ.
  gemm(ctx, Op::N, op_w, 1.0, as_const(y_t.view()), wc, 0.0, z_t.view());
  detail::ColMajor<C> r2;
  detail::orthonormalise(z_t.view(), &r2);  // Q₂ [n, l]
  const auto b_t = detail::column_major(z_t.view());
  const Eigen::JacobiSVD<detail::ColMajor<C>> svd(r2, Eigen::ComputeFullU | Eigen::ComputeFullV);

  // op(W) ≈ (Q V_a) Σ (Q₂ U_a)ᵀ, truncated to r.
  const auto q_m = detail::column_major(y_t.view());
  eigen_map(u).noalias() = q_m * svd.matrixV().leftCols(rank);
  eigen_map(vt).noalias() = svd.matrixU().leftCols(rank).transpose() * b_t.transpose();
  for (index_t i = 0; i < rank; ++i) s[i] = svd.singularValues()(i);
  detail::flip_signs(u, vt);
}

/// truncated_svd of W itself (op = N).
template <class TW, class C>
void truncated_svd(Context<Cpu>& ctx, MatrixView<TW, Cpu> w, index_t r, const SvdOptions& options,
                   MatrixView<C, Cpu> u, VectorView<C, Cpu> s, MatrixView<C, Cpu> vt) {
  truncated_svd(ctx, Op::N, w, r, options, u, s, vt);
}

}  // namespace peft::cpu
