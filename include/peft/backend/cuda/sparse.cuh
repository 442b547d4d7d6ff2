#pragma once
// Sparse primitives on NVIDIA GPUs with the CPU backend's signatures (backend/cpu/sparse.hpp):
// cusparseSpMM (CSR, preprocessed once per shape into a buffer the matrix keeps),
// cusparseSDDMM (16-bit inputs staged through fp32), cusparseCsr2cscEx2 for the transpose, small
// kernels for the rest, and a radix-select top-k so that masks are built where the gradients live.

#include <cub/device/device_scan.cuh>

#include <array>
#include <cstdint>
#include <type_traits>

#include "../../core/sparse.hpp"
#include "dtype.cuh"
#include "elementwise.cuh"  // detail::math_t
#include "launch.cuh"

namespace peft {

/// Per-matrix cuSPARSE state: the sparse descriptors of S and Sᵀ (built for the value arrays
/// they were first used with) and the SpMM buffers, preprocessed once per product shape.
template <>
class SparseCache<Cuda> {
 public:
  SparseCache() = default;
  SparseCache(SparseCache&& o) noexcept { *this = std::move(o); }
  SparseCache& operator=(SparseCache&& o) noexcept {
    if (this != &o) {
      release();
      plans_ = o.plans_;
      buffers_ = std::move(o.buffers_);
      for (auto& p : o.plans_) p = Plan{};
    }
    return *this;
  }
  SparseCache(const SparseCache&) = delete;
  SparseCache& operator=(const SparseCache&) = delete;
  ~SparseCache() { release(); }

  /// One plan per orientation (0: S for X Sᵀ, 1: Sᵀ for X S).
  struct Plan {
    cusparseSpMatDescr_t matrix = nullptr;
    const void* values = nullptr;  // the value array the descriptor points to
    index_t rows = -1, cols = -1, nnz = -1;
    index_t batch = -1, ld_x = -1, ld_y = -1;  // the product shape preprocessed for
    cudaDataType_t type = CUDA_R_32F;
  };

  Plan& plan(int orientation) { return plans_[orientation]; }
  detail::Allocation<Cuda>& buffer(int orientation) { return buffers_[orientation]; }

 private:
  void release() noexcept {
    for (auto& p : plans_)
      if (p.matrix != nullptr) (void)cusparseDestroySpMat(p.matrix);
  }

  std::array<Plan, 2> plans_{};
  std::array<detail::Allocation<Cuda>, 2> buffers_{};
};

namespace gpu {
namespace detail {

template <class V, class B>
void check_csr_shape(const char* where, const CsrView<V, B>& s, index_t rows, index_t cols) {
  PEFT_CHECK_SHAPE(s.rows == rows && s.cols == cols, where, ": the sparse matrix is ", s.rows,
                   " x ", s.cols, ", expected ", rows, " x ", cols);
}

template <class T>
constexpr cudaDataType_t compute_type() {
  return std::is_same_v<std::remove_const_t<T>, double> ? CUDA_R_64F : CUDA_R_32F;
}

/// A dense descriptor for the row-major view m seen as its column-major transpose
/// (cols x rows, leading dimension = stride). Destroyed at scope exit.
class DenseDescriptor {
 public:
  template <class T>
  explicit DenseDescriptor(MatrixView<T, Cuda> m) {
    PEFT_CUDA_CHECK(cusparseCreateDnMat(&d_, m.cols(), m.rows(), std::max<index_t>(m.stride(), 1),
                                        const_cast<std::remove_const_t<T>*>(m.data()),
                                        data_type<T>(), CUSPARSE_ORDER_COL));
  }
  DenseDescriptor(const DenseDescriptor&) = delete;
  DenseDescriptor& operator=(const DenseDescriptor&) = delete;
  ~DenseDescriptor() { (void)cusparseDestroyDnMat(d_); }
  cusparseDnMatDescr_t get() const { return d_; }

 private:
  cusparseDnMatDescr_t d_ = nullptr;
};

template <class V>
void ensure_matrix(SparseCache<Cuda>::Plan& plan, const CsrView<V, Cuda>& s) {
  const cudaDataType_t type = data_type<V>();
  if (plan.matrix != nullptr && plan.values == s.values && plan.rows == s.rows &&
      plan.cols == s.cols && plan.nnz == s.nnz && plan.type == type)
    return;
  if (plan.matrix != nullptr) PEFT_CUDA_CHECK(cusparseDestroySpMat(plan.matrix));
  plan = SparseCache<Cuda>::Plan{};
  PEFT_CUDA_CHECK(cusparseCreateCsr(
      &plan.matrix, s.rows, s.cols, s.nnz, const_cast<std::int32_t*>(s.row_offsets),
      const_cast<std::int32_t*>(s.col_indices), const_cast<std::remove_const_t<V>*>(s.values),
      CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, type));
  plan.values = s.values;
  plan.rows = s.rows;
  plan.cols = s.cols;
  plan.nnz = s.nnz;
  plan.type = type;
}

template <class V, class T>
__global__ void add_sparse_to_dense_kernel(index_t rows, const std::int32_t* offsets,
                                           const std::int32_t* cols, const V* values, double alpha,
                                           T* dense, index_t ld) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step)
    for (index_t e = offsets[r]; e < offsets[r + 1]; ++e) {
      T& d = dense[r * ld + cols[e]];
      using M = math_t<T>;
      d = convert<T>(convert<M>(d) + M(alpha) * convert<M>(values[e]));
    }
}

template <class TS, class TD>
__global__ void gather_kernel(const TS* src, const std::int32_t* index, TD* dst, index_t n) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step)
    dst[k] = convert<TD>(src[index[k]]);
}

template <class TS, class TD>
struct AccumulateSquaresOp {
  const TS* src;
  index_t lds;
  TD* dst;
  index_t ldd;
  math_t<TD> alpha;
  __device__ void operator()(index_t i, index_t j) const {
    const auto v = convert<math_t<TD>>(src[i * lds + j]);
    TD& d = dst[i * ldd + j];
    d = convert<TD>(convert<math_t<TD>>(d) + alpha * v * v);
  }
};

// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void iota_kernel(double* out, index_t n) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step)
    out[k] = double(k);
}

// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void to_index_kernel(const double* in, std::int32_t* out, index_t n) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step)
    out[k] = static_cast<std::int32_t>(in[k]);
}

// ---- top-k by radix select ------------------------------------------------------------------

/// Order-preserving key of |v|: the bits of a non-negative float or double.
template <class T>
using key_t = std::conditional_t<std::is_same_v<std::remove_const_t<T>, double>, unsigned long long,
                                 unsigned int>;

template <class T>
__device__ inline key_t<T> magnitude_key(T v) {
  using M = math_t<T>;
  const M a = fabs(convert<M>(v));
  key_t<T> k;
  memcpy(&k, &a, sizeof(k));
  return k;
}

/// Histogram of the 8-bit digit at `shift` over the keys whose higher digits equal `prefix`
/// (masked by `prefix_mask`); also counts non-finite scores into bins[256].
template <class T>
__global__ void digit_histogram_kernel(const T* scores, index_t ld, index_t rows, index_t cols,
                                       key_t<T> prefix, key_t<T> prefix_mask, int shift,
                                       unsigned long long* bins) {
  __shared__ unsigned long long local[257];
  for (int b = threadIdx.x; b < 257; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const index_t total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const T v = scores[(idx / cols) * ld + idx % cols];
    if (!isfinite(convert<math_t<T>>(v))) {
      atomicAdd(&local[256], 1ull);
      continue;
    }
    const key_t<T> k = magnitude_key(v);
    if ((k & prefix_mask) == prefix) atomicAdd(&local[(k >> shift) & 0xFF], 1ull);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < 257; b += blockDim.x)
    if (local[b] != 0) atomicAdd(&bins[b], local[b]);
}

/// flags[i] = 1 for keys above the threshold, 2 for keys equal to it, 0 otherwise.
template <class T>
__global__ void classify_kernel(const T* scores, index_t ld, index_t rows, index_t cols,
                                key_t<T> threshold, std::int32_t* above, std::int32_t* equal) {
  const index_t total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const key_t<T> k = magnitude_key(scores[(idx / cols) * ld + idx % cols]);
    above[idx] = k > threshold ? 1 : 0;
    equal[idx] = k == threshold ? 1 : 0;
  }
}

/// Keeps every key above the threshold and the first `ties` equal keys (by flat index), writing
/// the kept flat indices in order: row-major order, which is CSR order.
// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void select_kernel(index_t total, const std::int32_t* above, const std::int32_t* equal,
                              const std::int32_t* equal_rank, index_t ties, std::int32_t* keep) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step)
    keep[idx] = (above[idx] != 0 || (equal[idx] != 0 && equal_rank[idx] < ties)) ? 1 : 0;
}

// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void scatter_kept_kernel(index_t total, index_t cols, const std::int32_t* keep,
                                    const std::int32_t* position, std::int32_t* col_indices,
                                    std::int32_t* row_of_entry) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step)
    if (keep[idx] != 0) {
      col_indices[position[idx]] = static_cast<std::int32_t>(idx % cols);
      row_of_entry[position[idx]] = static_cast<std::int32_t>(idx / cols);
    }
}

/// row_offsets[r] = number of entries in rows < r (a lower bound in the sorted row list).
// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void row_offsets_kernel(index_t rows, index_t k, const std::int32_t* row_of_entry,
                                   std::int32_t* row_offsets) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x; r <= rows; r += step) {
    index_t lo = 0, hi = k;
    while (lo < hi) {
      const index_t mid = (lo + hi) / 2;
      if (row_of_entry[mid] < r)
        lo = mid + 1;
      else
        hi = mid;
    }
    row_offsets[r] = static_cast<std::int32_t>(lo);
  }
}

inline void exclusive_scan(Context<Cuda>& ctx, const std::int32_t* in, std::int32_t* out,
                           index_t n) {
  std::size_t bytes = 0;
  PEFT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, n, ctx.stream()));
  typename peft::detail::Workspace<Cuda>::Frame frame(ctx.workspace());
  void* temp = frame.take<std::byte>(static_cast<index_t>(bytes));
  PEFT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, bytes, in, out, n, ctx.stream()));
}

}  // namespace detail

/// Y = alpha X op(S) + beta Y through cusparseSpMM on the column-major transposes
/// (Yᵀ = op(S)ᵀ Xᵀ, so the sparse matrix is always used untransposed: S for op = T, Sᵀ for
/// op = N). X, S's values and Y share the element type T; accumulation is fp32 (fp64 for double).
template <class TX, class V, class TY>
void spmm(Context<Cuda>& ctx, double alpha, MatrixView<TX, Cuda> x,
          const SparseOperand<V, Cuda>& op_s, Op op, double beta, MatrixView<TY, Cuda> y) {
  static_assert(std::is_same_v<std::remove_const_t<TX>, std::remove_const_t<V>> &&
                    std::is_same_v<std::remove_const_t<TX>, TY>,
                "spmm on the GPU: X, S and Y share one element type");
  const CsrView<const V, Cuda>& a = op == Op::T ? op_s.s : op_s.st;  // the CSR matrix op(S)ᵀ
  if (op == Op::T) {
    detail::check_csr_shape("spmm (X Sᵀ)", op_s.s, y.cols(), x.cols());
  } else {
    detail::check_csr_shape("spmm (X S)", op_s.s, x.cols(), y.cols());
    PEFT_CHECK_ARG(op_s.st.row_offsets != nullptr && op_s.st.nnz == op_s.s.nnz,
                   "spmm (X S) on the GPU needs the transpose Sᵀ in the operand");
  }
  PEFT_CHECK_SHAPE(y.rows() == x.rows(), "spmm: Y has ", y.rows(), " rows, X has ", x.rows());
  PEFT_CHECK_ARG(op_s.cache != nullptr, "spmm: the operand has no SparseCache");
  if (y.empty()) return;
  if (a.nnz == 0) {  // cuSPARSE rejects empty matrices on some versions: Y = beta Y
    if (beta == 0)
      fill(ctx, y, 0.0);
    else if (beta != 1)
      scale(ctx, beta, y);
    return;
  }
  // BLAS semantics: with beta = 0, Y is not read (it may hold NaN); do not rely on cuSPARSE
  // for that, zero it.
  if (beta == 0) fill(ctx, y, 0.0);
  const int orientation = op == Op::T ? 0 : 1;
  auto& plan = op_s.cache->plan(orientation);
  detail::ensure_matrix(plan, a);
  detail::DenseDescriptor xd(x), yd(y);
  using C = std::conditional_t<std::is_same_v<TY, double>, double, float>;
  const C al = static_cast<C>(alpha), be = static_cast<C>(beta);
  const cudaDataType_t compute = detail::compute_type<TY>();
  constexpr auto alg = CUSPARSE_SPMM_CSR_ALG1;
  if (plan.batch != x.rows() || plan.ld_x != x.stride() || plan.ld_y != y.stride()) {
    std::size_t bytes = 0;
    PEFT_CUDA_CHECK(cusparseSpMM_bufferSize(ctx.cusparse(), CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_NON_TRANSPOSE, &al, plan.matrix,
                                            xd.get(), &be, yd.get(), compute, alg, &bytes));
    auto& buffer = op_s.cache->buffer(orientation);
    if (buffer.bytes() < bytes) buffer = peft::detail::Allocation<Cuda>(bytes);
    PEFT_CUDA_CHECK(cusparseSpMM_preprocess(ctx.cusparse(), CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_NON_TRANSPOSE, &al, plan.matrix,
                                            xd.get(), &be, yd.get(), compute, alg, buffer.data()));
    plan.batch = x.rows();
    plan.ld_x = x.stride();
    plan.ld_y = y.stride();
  }
  PEFT_CUDA_CHECK(cusparseSpMM(ctx.cusparse(), CUSPARSE_OPERATION_NON_TRANSPOSE,
                               CUSPARSE_OPERATION_NON_TRANSPOSE, &al, plan.matrix, xd.get(), &be,
                               yd.get(), compute, alg, op_s.cache->buffer(orientation).data()));
}

/// values(S) = alpha (op(A) op(B)) ⊙ pattern(S) + beta values(S) through cusparseSDDMM in fp32
/// (fp64 for double). 16-bit A and B are staged through fp32 in the workspace.
template <class TA, class TB, class V>
void sddmm(Context<Cuda>& ctx, double alpha, Op op_a, MatrixView<TA, Cuda> a, Op op_b,
           MatrixView<TB, Cuda> b, double beta, const CsrView<V, Cuda>& s) {
  static_assert(std::is_same_v<V, float> || std::is_same_v<V, double>,
                "sddmm on the GPU writes float or double values");
  const index_t m = op_a == Op::N ? a.rows() : a.cols();
  const index_t k = op_a == Op::N ? a.cols() : a.rows();
  const index_t kb = op_b == Op::N ? b.rows() : b.cols();
  const index_t n = op_b == Op::N ? b.cols() : b.rows();
  PEFT_CHECK_SHAPE(k == kb, "sddmm: op(A) is ", m, " x ", k, " but op(B) is ", kb, " x ", n);
  detail::check_csr_shape("sddmm", s, m, n);
  if (s.nnz == 0) return;
  using A = std::remove_const_t<TA>;
  using Bt = std::remove_const_t<TB>;
  typename peft::detail::Workspace<Cuda>::Frame frame(ctx.workspace());
  auto staged = [&](auto view) {
    using E = std::remove_const_t<typename decltype(view)::value_type>;
    if constexpr (std::is_same_v<E, V>) {
      return MatrixView<const V, Cuda>(view);
    } else {
      auto f = frame.template matrix<V>(view.rows(), view.cols());
      copy(ctx, view, f);
      return MatrixView<const V, Cuda>(f);
    }
  };
  static_assert(std::is_same_v<A, Bt>, "sddmm: A and B share a type");
  const auto af = staged(a);
  const auto bf = staged(b);
  cusparseSpMatDescr_t c = nullptr;
  PEFT_CUDA_CHECK(
      cusparseCreateCsr(&c, s.rows, s.cols, s.nnz, const_cast<std::int32_t*>(s.row_offsets),
                        const_cast<std::int32_t*>(s.col_indices), s.values, CUSPARSE_INDEX_32I,
                        CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, gpu::detail::data_type<V>()));
  try {
    // Row-major M is the column-major Mᵀ: op(M) = M needs a transpose of that, op(M) = Mᵀ none.
    const auto cu_op = [](Op op) {
      return op == Op::T ? CUSPARSE_OPERATION_NON_TRANSPOSE : CUSPARSE_OPERATION_TRANSPOSE;
    };
    detail::DenseDescriptor ad(af), bd(bf);
    const V al = static_cast<V>(alpha), be = static_cast<V>(beta);
    std::size_t bytes = 0;
    PEFT_CUDA_CHECK(cusparseSDDMM_bufferSize(
        ctx.cusparse(), cu_op(op_a), cu_op(op_b), &al, ad.get(), bd.get(), &be, c,
        gpu::detail::data_type<V>(), CUSPARSE_SDDMM_ALG_DEFAULT, &bytes));
    void* buffer = frame.template take<std::byte>(static_cast<index_t>(bytes));
    PEFT_CUDA_CHECK(cusparseSDDMM(ctx.cusparse(), cu_op(op_a), cu_op(op_b), &al, ad.get(), bd.get(),
                                  &be, c, gpu::detail::data_type<V>(), CUSPARSE_SDDMM_ALG_DEFAULT,
                                  buffer));
  } catch (...) {
    (void)cusparseDestroySpMat(c);
    throw;
  }
  PEFT_CUDA_CHECK(cusparseDestroySpMat(c));
}

/// dense(r, c) += alpha S(r, c) for every entry.
template <class V, class T>
void add_sparse_to_dense(Context<Cuda>& ctx, double alpha, const CsrView<V, Cuda>& s,
                         MatrixView<T, Cuda> dense) {
  detail::check_csr_shape("add_sparse_to_dense", s, dense.rows(), dense.cols());
  if (s.nnz == 0) return;
  using VU = std::remove_const_t<V>;
  detail::add_sparse_to_dense_kernel<VU, T>
      <<<detail::grid_size(s.rows), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          s.rows, s.row_offsets, s.col_indices, s.values, alpha, dense.data(), dense.stride());
  PEFT_CUDA_CHECK_LAUNCH();
}

/// dst[k] = src[index[k]] with conversion.
template <class TS, class TD>
void gather(Context<Cuda>& ctx, VectorView<TS, Cuda> src,
            VectorView<const std::int32_t, Cuda> index, VectorView<TD, Cuda> dst) {
  PEFT_CHECK_SHAPE(index.size() == dst.size(), "gather: ", index.size(), " indices for ",
                   dst.size(), " outputs");
  PEFT_CHECK_SHAPE(src.inc() == 1 && index.inc() == 1 && dst.inc() == 1,
                   "gather: vectors must be contiguous on the GPU");
  if (dst.empty()) return;
  using S = std::remove_const_t<TS>;
  detail::gather_kernel<S, TD>
      <<<detail::grid_size(dst.size()), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          src.data(), index.data(), dst.data(), dst.size());
  PEFT_CUDA_CHECK_LAUNCH();
}

/// dst += alpha src ⊙ src.
template <class TS, class TD>
void accumulate_squares(Context<Cuda>& ctx, double alpha, MatrixView<TS, Cuda> src,
                        MatrixView<TD, Cuda> dst) {
  detail::check_same_shape("accumulate_squares", src, dst);
  using S = std::remove_const_t<TS>;
  detail::for_each_element(
      ctx, src.rows(), src.cols(),
      detail::AccumulateSquaresOp<S, TD>{src.data(), src.stride(), dst.data(), dst.stride(),
                                         static_cast<detail::math_t<TD>>(alpha)});
}

/// The pattern of Sᵀ and the permutation from its entries to S's, by cusparseCsr2cscEx2 over an
/// index array (exact in double for any int32 entry count).
template <class V>
void csr_transpose_pattern(Context<Cuda>& ctx, const CsrView<V, Cuda>& s,
                           VectorView<std::int32_t, Cuda> t_row_offsets,
                           VectorView<std::int32_t, Cuda> t_col_indices,
                           VectorView<std::int32_t, Cuda> perm) {
  PEFT_CHECK_SHAPE(
      t_row_offsets.size() == s.cols + 1 && t_col_indices.size() >= s.nnz && perm.size() >= s.nnz,
      "csr_transpose_pattern: output sizes do not fit a ", s.rows, " x ", s.cols, " matrix with ",
      s.nnz, " entries");
  if (s.nnz == 0) {
    PEFT_CUDA_CHECK(cudaMemsetAsync(t_row_offsets.data(), 0, sizeof(std::int32_t) * (s.cols + 1),
                                    ctx.stream()));
    return;
  }
  typename peft::detail::Workspace<Cuda>::Frame frame(ctx.workspace());
  double* index = frame.take<double>(s.nnz);
  double* t_index = frame.take<double>(s.nnz);
  detail::iota_kernel<>
      <<<detail::grid_size(s.nnz), detail::kThreadsPerBlock, 0, ctx.stream()>>>(index, s.nnz);
  PEFT_CUDA_CHECK_LAUNCH();
  std::size_t bytes = 0;
  PEFT_CUDA_CHECK(cusparseCsr2cscEx2_bufferSize(
      ctx.cusparse(), int(s.rows), int(s.cols), int(s.nnz), index, s.row_offsets, s.col_indices,
      t_index, t_row_offsets.data(), t_col_indices.data(), CUDA_R_64F, CUSPARSE_ACTION_NUMERIC,
      CUSPARSE_INDEX_BASE_ZERO, CUSPARSE_CSR2CSC_ALG1, &bytes));
  void* buffer = frame.take<std::byte>(static_cast<index_t>(bytes));
  PEFT_CUDA_CHECK(cusparseCsr2cscEx2(ctx.cusparse(), int(s.rows), int(s.cols), int(s.nnz), index,
                                     s.row_offsets, s.col_indices, t_index, t_row_offsets.data(),
                                     t_col_indices.data(), CUDA_R_64F, CUSPARSE_ACTION_NUMERIC,
                                     CUSPARSE_INDEX_BASE_ZERO, CUSPARSE_CSR2CSC_ALG1, buffer));
  detail::to_index_kernel<>
      <<<detail::grid_size(s.nnz), detail::kThreadsPerBlock, 0, ctx.stream()>>>(t_index,
                                                                                perm.data(), s.nnz);
  PEFT_CUDA_CHECK_LAUNCH();
}

/// The k entries of largest |score| as a CSR pattern, ties to the smaller row-major index (the
/// CPU primitive's rule, so both backends build the same mask). A radix select over the bits of
/// |score| (8 bits per pass, one small host read per pass) finds the k-th largest key; scans
/// then compact the kept indices in row-major order. Throws on non-finite scores.
template <class T>
void topk_pattern(Context<Cuda>& ctx, MatrixView<T, Cuda> scores, index_t k,
                  VectorView<std::int32_t, Cuda> row_offsets,
                  VectorView<std::int32_t, Cuda> col_indices) {
  using U = std::remove_const_t<T>;
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, double>,
                "topk_pattern on the GPU takes float or double scores");
  using Key = detail::key_t<U>;
  const index_t rows = scores.rows(), cols = scores.cols(), total = rows * cols;
  PEFT_CHECK_ARG(k >= 0 && k <= total, "topk_pattern: k is ", k, ", expected in [0, ", total, "]");
  PEFT_CHECK_SHAPE(row_offsets.size() == rows + 1 && col_indices.size() >= k,
                   "topk_pattern: output sizes do not fit ", rows, " rows and ", k, " entries");
  PEFT_CHECK_SHAPE(total <= INT32_MAX, "topk_pattern: ", total, " scores exceed int32 indices");
  typename peft::detail::Workspace<Cuda>::Frame frame(ctx.workspace());
  auto* bins = frame.take<unsigned long long>(257);
  std::array<unsigned long long, 257> host{};

  // Find the k-th largest key digit by digit, from the most significant. The first pass also
  // counts the non-finite scores, so it runs for k = 0 too (the CPU primitive throws then).
  Key prefix = 0, prefix_mask = 0;
  index_t remaining = k;  // how many of the keys matching the prefix are still to be taken
  constexpr int kBits = int(sizeof(Key) * 8);
  for (int shift = kBits - 8; shift >= 0 && (k > 0 || shift == kBits - 8); shift -= 8) {
    PEFT_CUDA_CHECK(cudaMemsetAsync(bins, 0, sizeof(unsigned long long) * 257, ctx.stream()));
    detail::digit_histogram_kernel<U>
        <<<std::min(detail::grid_size(total), 1024u), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
            scores.data(), scores.stride(), rows, cols, prefix, prefix_mask, shift, bins);
    PEFT_CUDA_CHECK_LAUNCH();
    PEFT_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), bins, sizeof(host), cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();
    PEFT_CHECK(host[256] == 0, ErrorKind::numeric, "topk_pattern: ", host[256],
               " scores are not finite");
    int digit = 255;
    for (; digit > 0; --digit) {
      if (index_t(host[digit]) >= remaining) break;
      remaining -= index_t(host[digit]);
    }
    prefix |= Key(digit) << shift;
    prefix_mask |= Key(0xFF) << shift;
  }
  const Key threshold = prefix;  // the k-th largest key; `remaining` of its ties are kept

  std::int32_t* above = frame.take<std::int32_t>(total);
  std::int32_t* equal = frame.take<std::int32_t>(total);
  std::int32_t* rank = frame.take<std::int32_t>(total);
  std::int32_t* keep = frame.take<std::int32_t>(total);
  std::int32_t* position = frame.take<std::int32_t>(total);
  std::int32_t* row_of_entry = frame.take<std::int32_t>(std::max<index_t>(k, 1));
  const unsigned grid = detail::grid_size(total);
  if (k == 0) {
    PEFT_CUDA_CHECK(
        cudaMemsetAsync(row_offsets.data(), 0, sizeof(std::int32_t) * (rows + 1), ctx.stream()));
    return;
  }
  detail::classify_kernel<U><<<grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
      scores.data(), scores.stride(), rows, cols, threshold, above, equal);
  PEFT_CUDA_CHECK_LAUNCH();
  detail::exclusive_scan(ctx, equal, rank, total);
  detail::select_kernel<><<<grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
      total, above, equal, rank, remaining, keep);
  PEFT_CUDA_CHECK_LAUNCH();
  detail::exclusive_scan(ctx, keep, position, total);
  detail::scatter_kept_kernel<><<<grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
      total, cols, keep, position, col_indices.data(), row_of_entry);
  PEFT_CUDA_CHECK_LAUNCH();
  detail::row_offsets_kernel<>
      <<<detail::grid_size(rows + 1), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          rows, k, row_of_entry, row_offsets.data());
  PEFT_CUDA_CHECK_LAUNCH();
}

}  // namespace gpu
}  // namespace peft
