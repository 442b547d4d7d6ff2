#pragma once
// Sparse primitives on NVIDIA GPUs with the CPU backend's signatures (backend/cpu/sparse.hpp):
// cusparseSpMM (CSR, preprocessed once per shape into a buffer the matrix keeps),
// cusparseSDDMM (16-bit inputs staged through fp32), cusparseCsr2cscEx2 for the transpose, small
// kernels for the rest, and a radix-select top-k so that masks are built where the gradients live.

#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../core/sparse.hpp"
#include "../checks.hpp"
#include "dtype.cuh"
#include "elementwise.cuh"  // detail::math_t
#include "launch.cuh"

namespace peft {

/// Per-matrix cuSPARSE state: the sparse descriptors of S and Sᵀ (built for the index and value
/// arrays they were first used with) and the SpMM buffers, preprocessed once per product shape.
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
    // The arrays the descriptor points to. cuSPARSE lets only the values change between
    // cusparseSpMM_preprocess and cusparseSpMM, so other index arrays need a new descriptor (and
    // a new preprocessing) even when the shape, nnz and values pointer are the same.
    const std::int32_t* row_offsets = nullptr;
    const std::int32_t* col_indices = nullptr;
    const void* values = nullptr;
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

// The argument checks shared with the CPU backend (backend/checks.hpp).
using peft::detail::check_csr_shape;

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
  if (plan.matrix != nullptr && plan.row_offsets == s.row_offsets &&
      plan.col_indices == s.col_indices && plan.values == s.values && plan.rows == s.rows &&
      plan.cols == s.cols && plan.nnz == s.nnz && plan.type == type)
    return;
  if (plan.matrix != nullptr) PEFT_CUDA_CHECK(cusparseDestroySpMat(plan.matrix));
  plan = SparseCache<Cuda>::Plan{};
  PEFT_CUDA_CHECK(cusparseCreateCsr(
      &plan.matrix, s.rows, s.cols, s.nnz, const_cast<std::int32_t*>(s.row_offsets),
      const_cast<std::int32_t*>(s.col_indices), const_cast<std::remove_const_t<V>*>(s.values),
      CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, type));
  plan.row_offsets = s.row_offsets;
  plan.col_indices = s.col_indices;
  plan.values = s.values;
  plan.rows = s.rows;
  plan.cols = s.cols;
  plan.nnz = s.nnz;
  plan.type = type;
}

/// The row of entry e: the last row r whose offset is <= e (rows without entries share their
/// offset with the next row, so the last such row is the one that holds e). rows >= 1, e < nnz.
__device__ inline index_t row_of(const std::int32_t* offsets, index_t rows, index_t e) {
  index_t lo = 0, hi = rows - 1;  // offsets[0] = 0 <= e
  while (lo < hi) {
    const index_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= e)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// One thread per entry, not per row: RoSA's masks cluster in few rows, which a thread per row
/// would walk alone. The entries of a CSR matrix are distinct, so no two threads share an
/// element of `dense`. In double, as on the CPU.
template <class V, class T>
__global__ void add_sparse_to_dense_kernel(index_t rows, index_t nnz, const std::int32_t* offsets,
                                           const std::int32_t* cols, const V* values, double alpha,
                                           T* dense, index_t ld) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < nnz; e += step) {
    T& d = dense[row_of(offsets, rows, e) * ld + cols[e]];
    d = convert<T>(__dadd_rn(convert<double>(d), __dmul_rn(alpha, convert<double>(values[e]))));
  }
}

template <class TS, class TD>
__global__ void gather_kernel(const TS* src, const std::int32_t* index, TD* dst, index_t n) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step)
    dst[k] = convert<TD>(src[index[k]]);
}

/// In double, unfused, as on the CPU (see ScaleOp in elementwise.cuh).
template <class TS, class TD>
struct AccumulateSquaresOp {
  const TS* src;
  index_t lds;
  TD* dst;
  index_t ldd;
  double alpha;
  __device__ void operator()(index_t i, index_t j) const {
    const double v = convert<double>(src[i * lds + j]);
    TD& d = dst[i * ldd + j];
    d = convert<TD>(__dadd_rn(convert<double>(d), __dmul_rn(__dmul_rn(alpha, v), v)));
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

/// One warp per row (the loops over rows are warp-uniform, so every lane reaches the shuffles
/// and ballots): rows r = warp, warp + warps, ...
__device__ inline index_t first_warp_row() {
  return (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
}
__device__ inline index_t warp_row_step() {
  return index_t(gridDim.x) * (blockDim.x / 32);
}

/// Per row: how many keys lie above the threshold and how many equal it.
template <class T>
__global__ void count_row_keys_kernel(const T* scores, index_t ld, index_t rows, index_t cols,
                                      key_t<T> threshold, std::int32_t* above,
                                      std::int32_t* equal) {
  const int lane = int(threadIdx.x % 32);
  for (index_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* row = scores + r * ld;
    int a = 0, e = 0;  // a row has at most INT32_MAX scores
    for (index_t c = lane; c < cols; c += 32) {
      const key_t<T> key = magnitude_key(row[c]);
      a += key > threshold ? 1 : 0;
      e += key == threshold ? 1 : 0;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      e += __shfl_down_sync(0xffffffffu, e, offset);
    }
    if (lane == 0) {
      above[r] = a;
      equal[r] = e;
    }
  }
}

/// kept[r] = the keys of row r above the threshold plus its share of the `ties` equal keys kept
/// (the first ones by row-major index: equal_before[r] of them lie in earlier rows);
/// kept[rows] = 0, so that an exclusive scan of kept[0 .. rows] gives the row offsets. `kept`
/// may be `above`.
// A template only so that the header can define it in several translation units.
template <class = void>
__global__ void kept_per_row_kernel(index_t rows, index_t ties, const std::int32_t* above,
                                    const std::int32_t* equal, const std::int32_t* equal_before,
                                    std::int32_t* kept) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x; r <= rows; r += step) {
    if (r == rows) {
      kept[r] = 0;
      continue;
    }
    const index_t tie_room = ties - index_t(equal_before[r]);
    const index_t kept_ties = tie_room < 0 ? 0 : (tie_room < equal[r] ? tie_room : equal[r]);
    kept[r] = static_cast<std::int32_t>(above[r] + kept_ties);
  }
}

/// Writes the kept columns of each row, in order, from row_offsets[r] on: a warp walks the row
/// 32 columns at a time; ballots give each lane its rank among the chunk's equal keys (for the
/// tie rule) and among its kept keys (for the output position).
template <class T>
__global__ void write_row_columns_kernel(const T* scores, index_t ld, index_t rows, index_t cols,
                                         key_t<T> threshold, index_t ties,
                                         const std::int32_t* equal_before,
                                         const std::int32_t* row_offsets,
                                         std::int32_t* col_indices) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (index_t r = first_warp_row(); r < rows; r += warp_row_step()) {
    const T* row = scores + r * ld;
    index_t out = row_offsets[r];
    const index_t end = row_offsets[r + 1];
    index_t ties_before = equal_before[r];  // equal keys before the current chunk
    for (index_t c0 = 0; c0 < cols && out < end; c0 += 32) {
      const index_t c = c0 + lane;
      bool is_above = false, is_equal = false;
      if (c < cols) {
        const key_t<T> key = magnitude_key(row[c]);
        is_above = key > threshold;
        is_equal = key == threshold;
      }
      const unsigned equal_lanes = __ballot_sync(0xffffffffu, is_equal);
      const bool keep =
          is_above || (is_equal && ties_before + __popc(equal_lanes & lower_lanes) < ties);
      const unsigned kept_lanes = __ballot_sync(0xffffffffu, keep);
      if (keep) col_indices[out + __popc(kept_lanes & lower_lanes)] = static_cast<std::int32_t>(c);
      out += __popc(kept_lanes);
      ties_before += __popc(equal_lanes);
    }
  }
}

/// Scratch of one top-k call, in one temporary device allocation that is freed on return: mask
/// building runs once per training, so the shared workspace should not keep its peak. O(rows),
/// not O(rows x cols): 257 histogram bins, three int32 counts per row and CUB's scan storage.
class TopkScratch {
 public:
  TopkScratch(Context<Cuda>& ctx, index_t rows) : ctx_(ctx) {
    std::size_t scan_bytes = 0;
    for (const index_t n : {rows, rows + 1}) {
      std::size_t bytes = 0;
      PEFT_CUDA_CHECK(
          cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<std::int32_t*>(nullptr),
                                        static_cast<std::int32_t*>(nullptr), n, ctx.stream()));
      scan_bytes = std::max(scan_bytes, bytes);
    }
    const std::size_t counts = static_cast<std::size_t>(rows) + 1;
    offsets_[0] = 0;                                                        // bins
    offsets_[1] = offsets_[0] + aligned(257 * sizeof(unsigned long long));  // above
    offsets_[2] = offsets_[1] + aligned(counts * sizeof(std::int32_t));     // equal
    offsets_[3] = offsets_[2] + aligned(counts * sizeof(std::int32_t));     // equal_before
    offsets_[4] = offsets_[3] + aligned(counts * sizeof(std::int32_t));     // scan storage
    scan_bytes_ = std::max<std::size_t>(scan_bytes, 1);
    memory_ = peft::detail::Allocation<Cuda>(offsets_[4] + scan_bytes_);
  }
  TopkScratch(const TopkScratch&) = delete;
  TopkScratch& operator=(const TopkScratch&) = delete;
  /// The kernels that use the scratch must finish before it is freed (also when unwinding).
  ~TopkScratch() { (void)cudaStreamSynchronize(ctx_.stream()); }

  unsigned long long* bins() { return at<unsigned long long>(0); }
  std::int32_t* above() { return at<std::int32_t>(1); }
  std::int32_t* equal() { return at<std::int32_t>(2); }
  std::int32_t* equal_before() { return at<std::int32_t>(3); }

  /// out[0 .. n) = exclusive prefix sums of in[0 .. n), n <= rows + 1.
  void exclusive_scan(const std::int32_t* in, std::int32_t* out, index_t n) {
    std::size_t bytes = scan_bytes_;
    PEFT_CUDA_CHECK(
        cub::DeviceScan::ExclusiveSum(at<std::byte>(4), bytes, in, out, n, ctx_.stream()));
  }

 private:
  static std::size_t aligned(std::size_t bytes) { return (bytes + 255) / 256 * 256; }
  template <class E>
  E* at(int part) {
    return reinterpret_cast<E*>(static_cast<std::byte*>(memory_.data()) + offsets_[part]);
  }

  Context<Cuda>& ctx_;
  peft::detail::Allocation<Cuda> memory_;  // destroyed after the synchronisation above
  std::array<std::size_t, 5> offsets_{};
  std::size_t scan_bytes_ = 0;
};

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
  peft::detail::check_spmm(x, op_s.s, op, y);
  PEFT_CHECK_ARG(op == Op::T || (op_s.st.row_offsets != nullptr && op_s.st.nnz == op_s.s.nnz),
                 "spmm (X S) on the GPU needs the transpose Sᵀ in the operand");
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
/// (fp64 for double). 16-bit A and B are staged through fp32 in the workspace. With beta = 0 the
/// old values are not read; with an empty inner dimension (k = 0) values = beta values.
template <class TA, class TB, class V>
void sddmm(Context<Cuda>& ctx, double alpha, Op op_a, MatrixView<TA, Cuda> a, Op op_b,
           MatrixView<TB, Cuda> b, double beta, const CsrView<V, Cuda>& s) {
  static_assert(std::is_same_v<V, float> || std::is_same_v<V, double>,
                "sddmm on the GPU writes float or double values");
  const index_t k = peft::detail::check_sddmm(op_a, a, op_b, b, s).k;
  if (s.nnz == 0) return;
  // BLAS semantics: with beta = 0 the old values are not read (they may hold NaN). cuSPARSE
  // computes alpha (op(A) op(B)) ⊙ spy(C) + beta C, and 0 NaN is NaN: zero them first.
  if (beta == 0)
    PEFT_CUDA_CHECK(
        cudaMemsetAsync(s.values, 0, sizeof(V) * static_cast<std::size_t>(s.nnz), ctx.stream()));
  if (k == 0) {  // no products: values = beta values, as on the CPU (never hand cuSPARSE empty
                 // dense operands: zero-width descriptors with null data)
    if (beta != 0 && beta != 1) scale(ctx, beta, MatrixView<V, Cuda>(s.values, 1, s.nnz));
    return;
  }
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

/// dense(r, c) += alpha S(r, c) for every entry (one thread per entry; in double, as on the CPU).
template <class V, class T>
void add_sparse_to_dense(Context<Cuda>& ctx, double alpha, const CsrView<V, Cuda>& s,
                         MatrixView<T, Cuda> dense) {
  detail::check_csr_shape("add_sparse_to_dense", s, dense.rows(), dense.cols());
  if (s.nnz == 0) return;
  using VU = std::remove_const_t<V>;
  detail::add_sparse_to_dense_kernel<VU, T>
      <<<detail::grid_size(s.nnz), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          s.rows, s.nnz, s.row_offsets, s.col_indices, s.values, alpha, dense.data(),
          dense.stride());
  PEFT_CUDA_CHECK_LAUNCH();
}

/// dst[k] = src[index[k]] with conversion.
template <class TS, class TD>
void gather(Context<Cuda>& ctx, VectorView<TS, Cuda> src,
            VectorView<const std::int32_t, Cuda> index, VectorView<TD, Cuda> dst) {
  peft::detail::check_gather(index, dst);
  PEFT_CHECK_SHAPE(src.inc() == 1 && index.inc() == 1 && dst.inc() == 1,
                   "gather: vectors must be contiguous on the GPU");
  if (dst.empty()) return;
  using S = std::remove_const_t<TS>;
  detail::gather_kernel<S, TD>
      <<<detail::grid_size(dst.size()), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          src.data(), index.data(), dst.data(), dst.size());
  PEFT_CUDA_CHECK_LAUNCH();
}

/// dst += alpha src ⊙ src, in double (as on the CPU).
template <class TS, class TD>
void accumulate_squares(Context<Cuda>& ctx, double alpha, MatrixView<TS, Cuda> src,
                        MatrixView<TD, Cuda> dst) {
  detail::check_same_shape("accumulate_squares", src, dst);
  using S = std::remove_const_t<TS>;
  detail::for_each_element(ctx, src.rows(), src.cols(),
                           detail::AccumulateSquaresOp<S, TD>{src.data(), src.stride(), dst.data(),
                                                              dst.stride(), alpha});
}

/// The pattern of Sᵀ and the permutation from its entries to S's, by cusparseCsr2cscEx2 over an
/// index array (exact in double for any int32 entry count).
template <class V>
void csr_transpose_pattern(Context<Cuda>& ctx, const CsrView<V, Cuda>& s,
                           VectorView<std::int32_t, Cuda> t_row_offsets,
                           VectorView<std::int32_t, Cuda> t_col_indices,
                           VectorView<std::int32_t, Cuda> perm) {
  peft::detail::check_csr_transpose_outputs(s, t_row_offsets, t_col_indices, perm);
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
/// |score| (8 bits per pass, one small host read per pass) finds the k-th largest key and how
/// many of its ties are kept; per-row counts of the keys above and equal to it, scanned, give the
/// row offsets; a warp per row then writes the kept columns in order. Scratch is O(rows), in a
/// temporary allocation freed on return (the context's workspace is not used). Throws on
/// non-finite scores. Synchronises the context's stream.
template <class T>
void topk_pattern(Context<Cuda>& ctx, MatrixView<T, Cuda> scores, index_t k,
                  VectorView<std::int32_t, Cuda> row_offsets,
                  VectorView<std::int32_t, Cuda> col_indices) {
  using U = std::remove_const_t<T>;
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, double>,
                "topk_pattern on the GPU takes float or double scores");
  using Key = detail::key_t<U>;
  const index_t rows = scores.rows(), cols = scores.cols(), total = rows * cols;
  peft::detail::check_topk(k, rows, cols, row_offsets, col_indices);
  PEFT_CHECK_SHAPE(total <= INT32_MAX, "topk_pattern: ", total, " scores exceed int32 indices");
  detail::TopkScratch scratch(ctx, rows);
  auto* bins = scratch.bins();
  std::array<unsigned long long, 257> host{};

  // Find the k-th largest key digit by digit, from the most significant. The first pass also
  // counts the non-finite scores, so it runs for k = 0 too (the CPU primitive throws then).
  Key prefix = 0, prefix_mask = 0;
  index_t remaining = k;  // how many of the keys matching the prefix are still to be taken
  constexpr int kBits = int(sizeof(Key) * 8);
  for (int shift = kBits - 8; shift >= 0 && (k > 0 || shift == kBits - 8); shift -= 8) {
    PEFT_CUDA_CHECK(cudaMemsetAsync(bins, 0, sizeof(unsigned long long) * 257, ctx.stream()));
    if (total > 0) {
      detail::digit_histogram_kernel<U><<<std::min(detail::grid_size(total), 1024u),
                                          detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          scores.data(), scores.stride(), rows, cols, prefix, prefix_mask, shift, bins);
      PEFT_CUDA_CHECK_LAUNCH();
    }
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

  if (k == 0) {
    PEFT_CUDA_CHECK(
        cudaMemsetAsync(row_offsets.data(), 0, sizeof(std::int32_t) * (rows + 1), ctx.stream()));
    ctx.synchronize();
    return;
  }
  const unsigned row_grid = detail::grid_size(rows * 32);  // a warp per row
  detail::count_row_keys_kernel<U><<<row_grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
      scores.data(), scores.stride(), rows, cols, threshold, scratch.above(), scratch.equal());
  PEFT_CUDA_CHECK_LAUNCH();
  scratch.exclusive_scan(scratch.equal(), scratch.equal_before(), rows);
  detail::kept_per_row_kernel<>
      <<<detail::grid_size(rows + 1), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          rows, remaining, scratch.above(), scratch.equal(), scratch.equal_before(),
          scratch.above());
  PEFT_CUDA_CHECK_LAUNCH();
  scratch.exclusive_scan(scratch.above(), row_offsets.data(), rows + 1);
  detail::write_row_columns_kernel<U><<<row_grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
      scores.data(), scores.stride(), rows, cols, threshold, remaining, scratch.equal_before(),
      row_offsets.data(), col_indices.data());
  PEFT_CUDA_CHECK_LAUNCH();
  ctx.synchronize();  // before the scratch is freed, with errors reported
}

}  // namespace gpu
}  // namespace peft
