#pragma once
// The argument checks every backend's primitives make, written once: the CPU primitives
// (backend/cpu) and the CUDA ones (backend/cuda) call these, so both throw the same peft::Error
// with the same message for the same bad call. Backend-neutral: views, CSR views and random
// streams only, no math.

#include <cstdint>

#include "../core/backend.hpp"
#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../core/sparse.hpp"
#include "../core/view.hpp"

namespace peft::detail {

/// x and y have the same rows and columns.
template <class TX, class TY, class B>
void check_same_shape(const char* what, const MatrixView<TX, B>& x, const MatrixView<TY, B>& y) {
  PEFT_CHECK_SHAPE(x.rows() == y.rows() && x.cols() == y.cols(), what, ": shapes differ, ",
                   shape_string(x), " and ", shape_string(y));
}

/// Every one of `others` has the shape of `first`.
template <class B, class T0, class... Ts>
void check_same_shapes(const char* what, const MatrixView<T0, B>& first,
                       const MatrixView<Ts, B>&... others) {
  (check_same_shape(what, first, others), ...);
}

/// The shape of a product op(A) op(B): [m, k] times [k, n].
struct ProductShape {
  index_t m = 0, n = 0, k = 0;
};

/// The shape of op(A) op(B), after checking that the inner dimensions agree.
template <class TA, class TB, class B>
ProductShape product_shape(const char* what, Op op_a, const MatrixView<TA, B>& a, Op op_b,
                           const MatrixView<TB, B>& b) {
  const index_t m = op_a == Op::N ? a.rows() : a.cols();
  const index_t k = op_a == Op::N ? a.cols() : a.rows();
  const index_t kb = op_b == Op::N ? b.rows() : b.cols();
  const index_t n = op_b == Op::N ? b.cols() : b.rows();
  PEFT_CHECK_SHAPE(k == kb, what, ": op(A) is ", m, " x ", k, " but op(B) is ", kb, " x ", n,
                   " (inner dimensions differ)");
  return {m, n, k};
}

/// gemm: C = alpha op(A) op(B) + beta C needs C of op(A) op(B)'s shape.
template <class TA, class TB, class TC, class B>
ProductShape check_gemm(Op op_a, const MatrixView<TA, B>& a, Op op_b, const MatrixView<TB, B>& b,
                        const MatrixView<TC, B>& c) {
  const ProductShape s = product_shape("gemm", op_a, a, op_b, b);
  PEFT_CHECK_SHAPE(c.rows() == s.m && c.cols() == s.n, "gemm: C is ", shape_string(c),
                   ", op(A) op(B) is ", s.m, " x ", s.n);
  return s;
}

/// A CSR matrix of rows x cols.
template <class V, class B>
void check_csr_shape(const char* where, const CsrView<V, B>& s, index_t rows, index_t cols) {
  PEFT_CHECK_SHAPE(s.rows == rows && s.cols == cols, where, ": the sparse matrix is ", s.rows,
                   " x ", s.cols, ", expected ", rows, " x ", cols);
}

/// spmm: Y = alpha X op(S) + beta Y with S [out, in] (op = T: X [n, in], Y [n, out]; op = N:
/// X [n, out], Y [n, in]).
template <class TX, class V, class TY, class B>
void check_spmm(const MatrixView<TX, B>& x, const CsrView<V, B>& s, Op op,
                const MatrixView<TY, B>& y) {
  if (op == Op::T)
    check_csr_shape("spmm (X Sᵀ)", s, y.cols(), x.cols());
  else
    check_csr_shape("spmm (X S)", s, x.cols(), y.cols());
  PEFT_CHECK_SHAPE(y.rows() == x.rows(), "spmm: Y has ", y.rows(), " rows, X has ", x.rows());
}

/// sddmm: the pattern of S must have op(A) op(B)'s shape.
template <class TA, class TB, class V, class B>
ProductShape check_sddmm(Op op_a, const MatrixView<TA, B>& a, Op op_b, const MatrixView<TB, B>& b,
                         const CsrView<V, B>& s) {
  const ProductShape shape = product_shape("sddmm", op_a, a, op_b, b);
  check_csr_shape("sddmm", s, shape.m, shape.n);
  return shape;
}

/// dropout over a rows x cols matrix: p in [0, 1), a stream, and no more elements than one
/// stream numbers.
inline void check_dropout(double p, const RandomStream* stream, index_t rows, index_t cols) {
  PEFT_CHECK_ARG(p >= 0.0 && p < 1.0, "dropout: p is ", p, ", expected in [0, 1)");
  PEFT_CHECK_ARG(stream != nullptr, "dropout: null random stream");
  PEFT_CHECK_SHAPE(static_cast<std::uint64_t>(rows * cols) <= kMaxStreamElements,
                   "dropout: ", rows * cols, " elements exceed one random stream (",
                   kMaxStreamElements, ")");
}

/// broadcast_rows: one element of b per column of y.
template <class TB, class T, class B>
void check_broadcast_rows(const VectorView<TB, B>& b, const MatrixView<T, B>& y) {
  PEFT_CHECK_SHAPE(b.size() == y.cols(), "broadcast_rows: vector has ", b.size(),
                   " elements, matrix has ", y.cols(), " columns");
}

/// gather: one index per output.
template <class TI, class TD, class B>
void check_gather(const VectorView<TI, B>& index, const VectorView<TD, B>& dst) {
  PEFT_CHECK_SHAPE(index.size() == dst.size(), "gather: ", index.size(), " indices for ",
                   dst.size(), " outputs");
}

/// csr_transpose_pattern: room for Sᵀ's cols + 1 row offsets and nnz columns and permutation.
template <class V, class B>
void check_csr_transpose_outputs(const CsrView<V, B>& s,
                                 const VectorView<std::int32_t, B>& t_row_offsets,
                                 const VectorView<std::int32_t, B>& t_col_indices,
                                 const VectorView<std::int32_t, B>& perm) {
  PEFT_CHECK_SHAPE(
      t_row_offsets.size() == s.cols + 1 && t_col_indices.size() >= s.nnz && perm.size() >= s.nnz,
      "csr_transpose_pattern: output sizes do not fit a ", s.rows, " x ", s.cols, " matrix with ",
      s.nnz, " entries");
}

/// topk_pattern: k in [0, rows · cols] and room for rows + 1 offsets and k columns.
template <class B>
void check_topk(index_t k, index_t rows, index_t cols,
                const VectorView<std::int32_t, B>& row_offsets,
                const VectorView<std::int32_t, B>& col_indices) {
  PEFT_CHECK_ARG(k >= 0 && k <= rows * cols, "topk_pattern: k is ", k, ", expected in [0, ",
                 rows * cols, "]");
  PEFT_CHECK_SHAPE(row_offsets.size() == rows + 1 && col_indices.size() >= k,
                   "topk_pattern: output sizes do not fit ", rows, " rows and ", k, " entries");
}

}  // namespace peft::detail
