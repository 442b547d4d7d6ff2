#pragma once
// truncated_svd on NVIDIA GPUs: the randomized range finder of backend/svd.hpp with its products
// with W through the gemm primitive (cuBLAS), its orthonormalisations by cuSOLVER's Householder
// QR (geqrf + orgqr), the small l x l SVD by cuSOLVER's gesvd, and the sign rule in a kernel.
// The same steps, in the same layout, as the CPU (backend/cpu/svd.hpp); the sketch is drawn on
// the host from Philox, so both backends start from the same numbers.
//
// Not a hot path (a layer runs it once, at construction): it allocates its buffers and a
// cuSOLVER handle per call (the Context holds none), and synchronises the stream at the end to
// read cuSOLVER's info codes.

#include <cusolverDn.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <vector>

#include "../../core/buffer.hpp"
#include "../svd.hpp"
#include "check.hpp"
#include "context.hpp"
#include "dense.cuh"
#include "elementwise.cuh"
#include "transfer.cuh"

namespace peft::gpu {
namespace detail {

inline const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS:
      return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED:
      return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED:
      return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE:
      return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH:
      return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED:
      return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR:
      return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_INVALID_WORKSPACE:
      return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default:
      return "cuSOLVER error";
  }
}

/// cuSOLVER statuses for PEFT_CUDA_CHECK, beside the runtime's, cuBLAS's and cuSPARSE's
/// (check.hpp).
inline void check(cusolverStatus_t status, const char* call, const char* file, int line) {
  if (status == CUSOLVER_STATUS_SUCCESS) [[likely]]
    return;
  throw Error(ErrorKind::cuda,
              peft::detail::concat(call, " failed: ", cusolver_status_name(status), " (",
                                   static_cast<int>(status), ") at ", file, ":", line));
}

/// A cuSOLVER dense handle bound to the context's stream, for one call.
class CusolverHandle {
 public:
  explicit CusolverHandle(Context<Cuda>& ctx) {
    PEFT_CUDA_CHECK(cusolverDnCreate(&handle_));
    const cusolverStatus_t status = cusolverDnSetStream(handle_, ctx.stream());
    if (status != CUSOLVER_STATUS_SUCCESS) {
      (void)cusolverDnDestroy(handle_);
      PEFT_CUDA_CHECK(status);
    }
  }
  CusolverHandle(const CusolverHandle&) = delete;
  CusolverHandle& operator=(const CusolverHandle&) = delete;
  ~CusolverHandle() { (void)cusolverDnDestroy(handle_); }
  cusolverDnHandle_t get() const noexcept { return handle_; }

 private:
  cusolverDnHandle_t handle_ = nullptr;
};

inline int solver_int(index_t v, const char* what) {
  PEFT_CHECK_SHAPE(v <= INT_MAX, "truncated_svd: ", what, " = ", v,
                   " exceeds the cuSOLVER int range");
  return static_cast<int>(v);
}

// The legacy cuSOLVER calls by type (S for float, D for double).
inline cusolverStatus_t geqrf_buffer_size(cusolverDnHandle_t h, int m, int n, float* a, int lda,
                                          int* lwork) {
  return cusolverDnSgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
inline cusolverStatus_t geqrf_buffer_size(cusolverDnHandle_t h, int m, int n, double* a, int lda,
                                          int* lwork) {
  return cusolverDnDgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* tau,
                              float* work, int lwork, int* info) {
  return cusolverDnSgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* tau,
                              double* work, int lwork, int* info) {
  return cusolverDnDgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t orgqr_buffer_size(cusolverDnHandle_t h, int m, int n, int k, const float* a,
                                          int lda, const float* tau, int* lwork) {
  return cusolverDnSorgqr_bufferSize(h, m, n, k, a, lda, tau, lwork);
}
inline cusolverStatus_t orgqr_buffer_size(cusolverDnHandle_t h, int m, int n, int k,
                                          const double* a, int lda, const double* tau, int* lwork) {
  return cusolverDnDorgqr_bufferSize(h, m, n, k, a, lda, tau, lwork);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, float* a, int lda,
                              const float* tau, float* work, int lwork, int* info) {
  return cusolverDnSorgqr(h, m, n, k, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, double* a, int lda,
                              const double* tau, double* work, int lwork, int* info) {
  return cusolverDnDorgqr(h, m, n, k, a, lda, tau, work, lwork, info);
}
template <class C>
cusolverStatus_t gesvd_buffer_size(cusolverDnHandle_t h, int m, int n, int* lwork) {
  if constexpr (std::is_same_v<C, float>)
    return cusolverDnSgesvd_bufferSize(h, m, n, lwork);
  else
    return cusolverDnDgesvd_bufferSize(h, m, n, lwork);
}
inline cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* s,
                              float* u, int ldu, float* vt, int ldvt, float* work, int lwork,
                              int* info) {
  return cusolverDnSgesvd(h, 'A', 'A', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, nullptr,
                          info);
}
inline cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* s,
                              double* u, int ldu, double* vt, int ldvt, double* work, int lwork,
                              int* info) {
  return cusolverDnDgesvd(h, 'A', 'A', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, nullptr,
                          info);
}

/// dst (column-major l x l) = the upper triangle of the top l rows of src (column-major, leading
/// dimension lds): the R of a geqrf, without the Householder vectors below it.
template <class C>
__global__ void upper_triangle_kernel(const C* src, index_t lds, C* dst, index_t l) {
  const index_t total = l * l;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const index_t col = idx / l, row = idx % l;
    dst[idx] = row <= col ? src[col * lds + row] : C(0);
  }
}

inline constexpr int kFlipThreads = 256;

/// The sign rule of backend/svd.hpp, one block per column j of U [m, r] (row-major): the entry
/// of largest magnitude (the first on a tie) decides; a flip negates column j of U and row j of
/// Vt [r, n].
template <class C>
__global__ void flip_signs_kernel(C* u, index_t ldu, index_t m, C* vt, index_t ldv, index_t n) {
  __shared__ C best_abs[kFlipThreads];
  __shared__ index_t best_row[kFlipThreads];
  const index_t j = blockIdx.x;
  const int t = threadIdx.x;
  C ba = C(-1);
  index_t bi = 0;
  for (index_t i = t; i < m; i += blockDim.x) {
    const C v = u[i * ldu + j];
    const C a = v < C(0) ? -v : v;
    if (a > ba) {
      ba = a;
      bi = i;
    }
  }
  best_abs[t] = ba;
  best_row[t] = bi;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) {
      const C oa = best_abs[t + stride];
      const index_t oi = best_row[t + stride];
      if (oa > best_abs[t] || (oa == best_abs[t] && oi < best_row[t])) {
        best_abs[t] = oa;
        best_row[t] = oi;
      }
    }
    __syncthreads();
  }
  const bool flip = u[best_row[0] * ldu + j] < C(0);
  __syncthreads();  // every thread has read the deciding entry before any writes
  if (!flip) return;
  for (index_t i = t; i < m; i += blockDim.x) u[i * ldu + j] = -u[i * ldu + j];
  for (index_t k = t; k < n; k += blockDim.x) vt[j * ldv + k] = -vt[j * ldv + k];
}

}  // namespace detail

/// op(W) ≈ U diag(S) Vt, rank r (backend/svd.hpp). W is any element type; U, S and Vt are float
/// or double, which is the type the SVD computes in.
template <class TW, class C>
void truncated_svd(Context<Cuda>& ctx, Op op_w, MatrixView<TW, Cuda> w, index_t r,
                   const SvdOptions& options, MatrixView<C, Cuda> u, VectorView<C, Cuda> s,
                   MatrixView<C, Cuda> vt) {
  static_assert(std::is_same_v<C, float> || std::is_same_v<C, double>,
                "truncated_svd: U, S and Vt must be float or double (the compute type)");
  const peft::detail::SvdShape shape =
      peft::detail::check_truncated_svd("truncated_svd", op_w, w, r, options, u, s, vt);
  const index_t m = shape.m, n = shape.n, l = shape.l;
  const int mi = detail::solver_int(m, "rows of op(W)");
  const int ni = detail::solver_int(n, "columns of op(W)");
  const int li = detail::solver_int(l, "sketch width");

  // W in the compute type.
  Matrix<C, Cuda> converted;
  MatrixView<const C, Cuda> wc;
  if constexpr (std::is_same_v<std::remove_const_t<TW>, C>) {
    wc = w;
  } else {
    converted = Matrix<C, Cuda>(w.rows(), w.cols());
    copy(ctx, as_const(w), converted.view());
    wc = as_const(converted.view());
  }

  // Row-major [l, k] = X [k, l]ᵀ, the column-major layout cuSOLVER wants: y = op(W) x is
  // yᵀ = xᵀ op(W)ᵀ and z = op(W)ᵀ q is zᵀ = qᵀ op(W).
  const Op op_wt = op_w == Op::N ? Op::T : Op::N;
  Matrix<C, Cuda> omega_t(l, n), y_t(l, m), z_t(l, n), tau(l, 1), r2(l, l), ua(l, l), va(l, l),
      sv(l, 1);
  {
    Matrix<C, Cpu> host(l, n);
    peft::detail::fill_svd_sketch(host.view(), options.seed);
    upload(ctx, as_const(host.view()), omega_t.view());
  }

  detail::CusolverHandle handle(ctx);
  const cusolverDnHandle_t h = handle.get();
  int lwork = 1, size = 0;
  PEFT_CUDA_CHECK(detail::geqrf_buffer_size(h, mi, li, y_t.data(), mi, &size));
  lwork = std::max(lwork, size);
  PEFT_CUDA_CHECK(detail::geqrf_buffer_size(h, ni, li, z_t.data(), ni, &size));
  lwork = std::max(lwork, size);
  PEFT_CUDA_CHECK(detail::orgqr_buffer_size(h, mi, li, li, y_t.data(), mi, tau.data(), &size));
  lwork = std::max(lwork, size);
  PEFT_CUDA_CHECK(detail::orgqr_buffer_size(h, ni, li, li, z_t.data(), ni, tau.data(), &size));
  lwork = std::max(lwork, size);
  PEFT_CUDA_CHECK(detail::gesvd_buffer_size<C>(h, li, li, &size));
  lwork = std::max(lwork, size);
  Matrix<C, Cuda> work(lwork, 1);
  // One info per cuSOLVER call: 2 per orthonormalisation (2q + 2 of them) and gesvd's.
  const index_t calls = 2 * (2 * options.power_iterations + 2) + 1;
  Matrix<int, Cuda> info(calls, 1);
  index_t next_info = 0;
  const auto qr = [&](MatrixView<C, Cuda> t, int rows) {
    PEFT_CUDA_CHECK(detail::geqrf(h, rows, li, t.data(), rows, tau.data(), work.data(), lwork,
                                  info.data() + next_info++));
  };
  const auto form_q = [&](MatrixView<C, Cuda> t, int rows) {
    PEFT_CUDA_CHECK(detail::orgqr(h, rows, li, li, t.data(), rows, tau.data(), work.data(), lwork,
                                  info.data() + next_info++));
  };

  gemm(ctx, Op::N, op_wt, 1.0, as_const(omega_t.view()), wc, 0.0, y_t.view());
  for (index_t q = 0; q < options.power_iterations; ++q) {
    qr(y_t.view(), mi);
    form_q(y_t.view(), mi);
    gemm(ctx, Op::N, op_w, 1.0, as_const(y_t.view()), wc, 0.0, z_t.view());
    qr(z_t.view(), ni);
    form_q(z_t.view(), ni);
    gemm(ctx, Op::N, op_wt, 1.0, as_const(z_t.view()), wc, 0.0, y_t.view());
  }
  qr(y_t.view(), mi);
  form_q(y_t.view(), mi);  // Q [m, l]
  // B = Qᵀ op(W) [l, n], kept as Bᵀ [n, l]; Bᵀ = Q₂ R₂; R₂ = U_a Σ V_aᵀ.
  gemm(ctx, Op::N, op_w, 1.0, as_const(y_t.view()), wc, 0.0, z_t.view());
  qr(z_t.view(), ni);
  detail::upper_triangle_kernel<<<detail::grid_size(l * l), detail::kThreadsPerBlock, 0,
                                  ctx.stream()>>>(z_t.data(), n, r2.data(), l);
  PEFT_CUDA_CHECK_LAUNCH();
  form_q(z_t.view(), ni);  // Q₂ [n, l]
  // gesvd writes U_a column-major (row-major U_aᵀ) and V_aᵀ column-major (row-major V_a).
  PEFT_CUDA_CHECK(detail::gesvd(h, li, li, r2.data(), li, sv.data(), ua.data(), li, va.data(), li,
                                work.data(), lwork, info.data() + next_info++));

  // op(W) ≈ (Q V_a) Σ (Q₂ U_a)ᵀ, truncated to r.
  gemm(ctx, Op::T, Op::N, 1.0, as_const(y_t.view()), MatrixView<const C, Cuda>(va.data(), l, r, l),
       0.0, u);
  gemm(ctx, Op::N, Op::N, 1.0, MatrixView<const C, Cuda>(ua.data(), r, l, l), as_const(z_t.view()),
       0.0, vt);
  copy(ctx, MatrixView<const C, Cuda>(sv.data(), r, 1),
       MatrixView<C, Cuda>(s.data(), r, 1, s.inc()));
  detail::flip_signs_kernel<<<static_cast<unsigned>(r), detail::kFlipThreads, 0, ctx.stream()>>>(
      u.data(), u.stride(), m, vt.data(), vt.stride(), n);
  PEFT_CUDA_CHECK_LAUNCH();

  std::vector<int> host_info(static_cast<std::size_t>(next_info));
  PEFT_CUDA_CHECK(cudaMemcpyAsync(host_info.data(), info.data(), host_info.size() * sizeof(int),
                                  cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  for (std::size_t k = 0; k < host_info.size(); ++k) {
    const bool is_svd = k + 1 == host_info.size();
    PEFT_CHECK(host_info[k] <= 0, ErrorKind::numeric, "truncated_svd: cuSOLVER's gesvd did not ",
               "converge (info = ", host_info[k], ")");
    PEFT_CHECK(host_info[k] == 0, ErrorKind::cuda, "truncated_svd: cuSOLVER's ",
               is_svd ? "gesvd" : (k % 2 == 0 ? "geqrf" : "orgqr"), " rejected parameter ",
               -host_info[k]);
  }
}

/// truncated_svd of W itself (op = N).
template <class TW, class C>
void truncated_svd(Context<Cuda>& ctx, MatrixView<TW, Cuda> w, index_t r, const SvdOptions& options,
                   MatrixView<C, Cuda> u, VectorView<C, Cuda> s, MatrixView<C, Cuda> vt) {
  truncated_svd(ctx, Op::N, w, r, options, u, s, vt);
}

}  // namespace peft::gpu
