#pragma once
// CsrMatrix<V, B>: an owning CSR matrix with int32 indices whose storage is sized for a fixed
// capacity of entries, plus its transpose kept in step (Sᵀ's pattern and a permutation that maps
// its values to S's). CsrPattern: a validated host-side pattern (from a mask or user arrays).

#include <cstdint>
#include <vector>

#include "../core/buffer.hpp"
#include "../core/sparse.hpp"

namespace peft {

/// The structure of a CSR matrix on the host: row offsets [rows + 1] and sorted column indices.
struct CsrPattern {
  index_t rows = 0;
  index_t cols = 0;
  std::vector<std::int32_t> row_offsets;
  std::vector<std::int32_t> col_indices;

  index_t nnz() const { return static_cast<index_t>(col_indices.size()); }

  /// Throws peft::Error unless the arrays describe a valid CSR pattern: offsets start at 0, never
  /// decrease and end at nnz; columns are in range, sorted and unique within each row.
  void validate(const char* where = "CsrPattern") const {
    PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0, where, ": negative size ", rows, " x ", cols);
    PEFT_CHECK_SHAPE(rows <= INT32_MAX && cols <= INT32_MAX && nnz() <= INT32_MAX, where, ": ",
                     rows, " x ", cols, " with ", nnz(), " entries exceeds int32 indices");
    PEFT_CHECK_SHAPE(static_cast<index_t>(row_offsets.size()) == rows + 1, where, ": ",
                     row_offsets.size(), " row offsets for ", rows, " rows (expected rows + 1)");
    // Every offset is checked before any index is read: offsets that rise past nnz and fall
    // back would otherwise send the index loop beyond the end of col_indices.
    PEFT_CHECK_ARG(row_offsets.front() == 0, where, ": row_offsets[0] is ", row_offsets.front(),
                   ", expected 0");
    PEFT_CHECK_ARG(row_offsets.back() == nnz(), where, ": row_offsets[", rows, "] is ",
                   row_offsets.back(), ", expected nnz = ", nnz());
    for (index_t r = 0; r < rows; ++r)
      PEFT_CHECK_ARG(row_offsets[r] <= row_offsets[r + 1], where, ": row_offsets decrease at row ",
                     r, " (", row_offsets[r], " > ", row_offsets[r + 1], ")");
    for (index_t r = 0; r < rows; ++r) {
      const index_t first = row_offsets[r], last = row_offsets[r + 1];
      for (index_t e = first; e < last; ++e) {
        const index_t c = col_indices[e];
        PEFT_CHECK_ARG(c >= 0 && c < cols, where, ": column index ", c, " in row ", r,
                       " is outside [0, ", cols, ")");
        PEFT_CHECK_ARG(e == first || col_indices[e - 1] < c, where, ": column indices of row ", r,
                       " are not sorted and unique (", col_indices[e - 1], " then ", c, ")");
      }
    }
  }

  /// The pattern of the non-zero entries of a host mask, row by row.
  template <class M>
  static CsrPattern from_mask(MatrixView<M, Cpu> mask) {
    CsrPattern p{mask.rows(), mask.cols(), {}, {}};
    p.row_offsets.reserve(static_cast<std::size_t>(mask.rows() + 1));
    p.row_offsets.push_back(0);
    for (index_t i = 0; i < mask.rows(); ++i) {
      for (index_t j = 0; j < mask.cols(); ++j)
        if (mask(i, j) != M(0)) p.col_indices.push_back(static_cast<std::int32_t>(j));
      p.row_offsets.push_back(static_cast<std::int32_t>(p.col_indices.size()));
    }
    p.validate("CsrPattern::from_mask");
    return p;
  }
};

/// rows x cols CSR matrix with room for `capacity` entries. Values start at zero. The transpose
/// shares the values through a permutation: call refresh_transpose after changing values().
template <class V, class B>
class CsrMatrix {
 public:
  CsrMatrix() = default;
  CsrMatrix(index_t rows, index_t cols, index_t capacity)
      : rows_(rows), cols_(cols), capacity_(capacity) {
    PEFT_CHECK_SHAPE(rows >= 0 && cols >= 0 && rows <= INT32_MAX && cols <= INT32_MAX,
                     "CsrMatrix: size ", rows, " x ", cols,
                     " is negative or exceeds int32 indices");
    PEFT_CHECK_SHAPE(capacity >= 0 && capacity <= rows * cols && capacity <= INT32_MAX,
                     "CsrMatrix: capacity ", capacity, " is outside [0, ", rows * cols, "]");
    row_offsets_ = Vector<std::int32_t, B>(rows + 1);
    col_indices_ = Vector<std::int32_t, B>(capacity);
    values_ = Matrix<V, B>(1, capacity);
    t_row_offsets_ = Vector<std::int32_t, B>(cols + 1);
    t_col_indices_ = Vector<std::int32_t, B>(capacity);
    t_perm_ = Vector<std::int32_t, B>(capacity);
    t_values_ = Matrix<V, B>(1, capacity);
  }

  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  index_t capacity() const noexcept { return capacity_; }
  index_t nnz() const noexcept { return nnz_; }
  bool has_pattern() const noexcept { return has_pattern_; }

  /// Sets the pattern from a host pattern (validated), zeroes the values, builds the transpose.
  template <class Ctx>
  void set_pattern(Ctx& ctx, const CsrPattern& pattern) {
    pattern.validate("CsrMatrix::set_pattern");
    PEFT_CHECK_SHAPE(pattern.rows == rows_ && pattern.cols == cols_,
                     "CsrMatrix::set_pattern: pattern is ", pattern.rows, " x ", pattern.cols,
                     ", the matrix is ", rows_, " x ", cols_);
    PEFT_CHECK_SHAPE(pattern.nnz() <= capacity_, "CsrMatrix::set_pattern: pattern has ",
                     pattern.nnz(), " entries, the matrix has room for ", capacity_);
    upload(ctx, MatrixView<const std::int32_t, Cpu>(pattern.row_offsets.data(), 1, rows_ + 1),
           row_offsets_.view().as_row());
    if (pattern.nnz() > 0)
      upload(ctx, MatrixView<const std::int32_t, Cpu>(pattern.col_indices.data(), 1, pattern.nnz()),
             MatrixView<std::int32_t, B>(col_indices_.data(), 1, pattern.nnz()));
    finish_pattern(ctx, pattern.nnz());
  }

  /// Sets the pattern from arrays already in backend memory that the library built itself (e.g.
  /// by topk_pattern): trusted, not validated.
  template <class Ctx>
  void set_pattern_trusted(Ctx& ctx, index_t nnz) {
    PEFT_CHECK_SHAPE(nnz >= 0 && nnz <= capacity_, "CsrMatrix::set_pattern_trusted: ", nnz,
                     " entries, room for ", capacity_);
    finish_pattern(ctx, nnz);
  }

  /// Backend arrays a pattern builder writes before set_pattern_trusted.
  VectorView<std::int32_t, B> row_offsets_storage() noexcept { return row_offsets_.view(); }
  VectorView<std::int32_t, B> col_indices_storage() noexcept { return col_indices_.view(); }

  /// All `capacity` values as a 1 x capacity matrix (entries past nnz stay zero).
  MatrixView<V, B> values() noexcept { return values_.view(); }
  MatrixView<const V, B> values() const noexcept { return values_.view(); }

  /// Sᵀ's values = S's values through the permutation (after an optimizer step).
  template <class Ctx>
  void refresh_transpose(Ctx& ctx) {
    if (nnz_ == 0) return;
    gather(ctx, VectorView<const V, B>(values_.data(), nnz_),
           VectorView<const std::int32_t, B>(t_perm_.data(), nnz_),
           VectorView<V, B>(t_values_.data(), nnz_));
  }

  /// The permutation from Sᵀ's entries to S's (for other value arrays kept in step, e.g. 16-bit
  /// copies).
  VectorView<const std::int32_t, B> transpose_permutation() const noexcept {
    return {t_perm_.data(), nnz_};
  }

  CsrView<V, B> view() noexcept {
    return {rows_, cols_, nnz_, row_offsets_.data(), col_indices_.data(), values_.data()};
  }
  CsrView<const V, B> view() const noexcept {
    return {rows_, cols_, nnz_, row_offsets_.data(), col_indices_.data(), values_.data()};
  }
  /// Sᵀ with the given values (its own, or a copy in another type permuted the same way).
  template <class W>
  CsrView<W, B> transposed_view(W* values) const noexcept {
    return {cols_, rows_, nnz_, t_row_offsets_.data(), t_col_indices_.data(), values};
  }
  CsrView<const V, B> transposed_view() const noexcept { return transposed_view(t_values_.data()); }
  /// S with other values in the same pattern.
  template <class W>
  CsrView<W, B> view_with(W* values) const noexcept {
    return {rows_, cols_, nnz_, row_offsets_.data(), col_indices_.data(), values};
  }

  SparseCache<B>& cache() noexcept { return cache_; }

 private:
  template <class Ctx>
  void finish_pattern(Ctx& ctx, index_t nnz) {
    nnz_ = nnz;
    has_pattern_ = true;
    fill(ctx, values_.view(), 0.0);
    fill(ctx, t_values_.view(), 0.0);
    csr_transpose_pattern(ctx, view(), t_row_offsets_.view(), t_col_indices_.view(),
                          t_perm_.view());
    cache_ = SparseCache<B>();  // the pattern changed: descriptors and buffers are rebuilt
  }

  index_t rows_ = 0, cols_ = 0, capacity_ = 0, nnz_ = 0;
  bool has_pattern_ = false;
  Vector<std::int32_t, B> row_offsets_, col_indices_;
  Matrix<V, B> values_;
  Vector<std::int32_t, B> t_row_offsets_, t_col_indices_, t_perm_;
  Matrix<V, B> t_values_;
  SparseCache<B> cache_;
};

}  // namespace peft
