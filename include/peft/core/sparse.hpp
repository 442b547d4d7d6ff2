#pragma once
// Vocabulary of sparse matrices shared by the backends: a non-owning CSR view and the operand
// the sparse primitives take. The owning CsrMatrix lives in sparse/csr.hpp.

#include <cstdint>

#include "backend.hpp"
#include "config.hpp"

namespace peft {

/// rows x cols CSR matrix with int32 indices: row r holds the entries
/// row_offsets[r] .. row_offsets[r + 1] - 1, with sorted column indices and values.
template <class V, class B>
struct CsrView {
  index_t rows = 0;
  index_t cols = 0;
  index_t nnz = 0;
  const std::int32_t* row_offsets = nullptr;
  const std::int32_t* col_indices = nullptr;
  V* values = nullptr;
};

/// The same view with read-only values.
template <class V, class B>
CsrView<const V, B> as_const(const CsrView<V, B>& s) {
  return {s.rows, s.cols, s.nnz, s.row_offsets, s.col_indices, s.values};
}

/// Per-matrix state a backend keeps between calls (cuSPARSE descriptors and buffers on the GPU;
/// nothing on the CPU). Specialised in backend/<name>/sparse.
template <class B>
class SparseCache;

/// What the sparse primitives take: S, its transpose Sᵀ as a second CSR matrix (kept in step by
/// the owner, for products with S untransposed), and the backend's cache for this matrix.
template <class V, class B>
struct SparseOperand {
  CsrView<const V, B> s;
  CsrView<const V, B> st;
  SparseCache<B>* cache = nullptr;
};

}  // namespace peft
