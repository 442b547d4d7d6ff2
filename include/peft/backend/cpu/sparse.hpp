#pragma once
// Sparse primitives on the CPU: plain loops over CSR rows with OpenMP (row-major activations make
// both products row-local, so no Eigen sparse types are needed), a transposition by counting
// sort, and the deterministic top-k used to build RoSA masks. Scratch comes from the Context's
// workspace (the *_workspace_bytes functions say how much), so once the workspace is warm no call
// allocates.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../../core/dtype.hpp"
#include "../../core/sparse.hpp"
#include "../../core/view.hpp"
#include "../checks.hpp"
#include "context.hpp"

namespace peft {

template <>
class SparseCache<Cpu> {};

namespace cpu {
namespace detail {

// The argument checks shared with the CUDA backend (backend/checks.hpp).
using peft::detail::check_csr_shape;
using peft::detail::check_same_shape;

/// sddmm for op(A) = Aᵀ, op(B) = B (RoSA's dyᵀ x): the entries are split between threads, and
/// each thread streams over the rows l of A and B, adding A(l, r) B(l, c) to its entries. Rows of
/// A and B are read contiguously and stay in cache; rows of S without entries cost nothing.
template <class TA, class TB, class V>
void sddmm_rows_streamed(Context<Cpu>& ctx, double alpha, MatrixView<TA, Cpu> a,
                         MatrixView<TB, Cpu> b, double beta, const CsrView<V, Cpu>& s) {
  using Acc = accum_t<V>;
  const index_t k = a.rows();
  typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
  Acc* const sums = frame.take<Acc>(s.nnz);  // one sum per entry; each thread owns a range
#pragma omp parallel num_threads(ctx.threads()) if (s.nnz * k > (index_t{1} << 16))
  {
    int threads = 1, id = 0;
#if defined(_OPENMP)
    threads = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    const index_t e0 = s.nnz * id / threads, e1 = s.nnz * (id + 1) / threads;
    if (e0 < e1) {
      Acc* const sum = sums + e0;
      std::fill(sum, sum + (e1 - e0), Acc(0));
      // The rows of S that hold entries e0 .. e1 - 1.
      const index_t r0 =
          std::upper_bound(s.row_offsets, s.row_offsets + s.rows + 1, e0) - s.row_offsets - 1;
      for (index_t l = 0; l < k; ++l) {
        const TA* a_row = a.data() + l * a.stride();
        const TB* b_row = b.data() + l * b.stride();
        for (index_t r = r0; r < s.rows && s.row_offsets[r] < e1; ++r) {
          const Acc ar = convert_value<Acc>(a_row[r]);
          if (ar == Acc(0)) continue;
          const index_t first = std::max<index_t>(s.row_offsets[r], e0);
          const index_t last = std::min<index_t>(s.row_offsets[r + 1], e1);
          for (index_t e = first; e < last; ++e)
            sum[e - e0] += ar * convert_value<Acc>(b_row[s.col_indices[e]]);
        }
      }
      for (index_t e = e0; e < e1; ++e) {
        const Acc old =
            beta == 0 ? Acc(0) : static_cast<Acc>(beta) * convert_value<Acc>(s.values[e]);
        s.values[e] = convert_value<V>(static_cast<Acc>(alpha) * sum[e - e0] + old);
      }
    }
  }
}

/// Bytes a frame hands out for `count` elements of `size` bytes (rounded to its alignment).
inline index_t scratch_bytes(index_t count, std::size_t size) {
  constexpr index_t align = index_t(peft::detail::Workspace<Cpu>::alignment);
  return (count * index_t(size) + align - 1) / align * align;
}

}  // namespace detail

/// Workspace bytes one spmm call takes: for op = N, one row of Y (y_cols values) per thread in
/// the accumulation type; nothing for op = T.
template <class TY>
index_t spmm_workspace_bytes(const Context<Cpu>& ctx, Op op, index_t y_cols) {
  using A = accum_t<std::remove_const_t<TY>>;
  return op == Op::N ? detail::scratch_bytes(index_t(ctx.threads()) * y_cols, sizeof(A)) : 0;
}

/// Workspace bytes one sddmm call takes: for op(A) = Aᵀ, op(B) = B, one sum per entry of S in
/// the accumulation type; nothing otherwise.
template <class V>
index_t sddmm_workspace_bytes(const Context<Cpu>&, Op op_a, Op op_b, index_t nnz) {
  using Acc = accum_t<std::remove_const_t<V>>;
  return op_a == Op::T && op_b == Op::N ? detail::scratch_bytes(nnz, sizeof(Acc)) : 0;
}

/// Workspace bytes one csr_transpose_pattern call takes for S with `cols` columns.
inline index_t csr_transpose_workspace_bytes(const Context<Cpu>&, index_t cols) {
  return detail::scratch_bytes(cols, sizeof(std::int32_t));
}

/// Y = alpha X op(S) + beta Y for row-major X and Y and CSR S. The RoSA forward is op = T
/// (y += x Sᵀ: each output element gathers one sparse row); op = N (dx += dy S) scatters each
/// sparse row into a row of Y, reading S's rows directly, so the CPU does not need Sᵀ.
template <class TX, class V, class TY>
void spmm(Context<Cpu>& ctx, double alpha, MatrixView<TX, Cpu> x, const SparseOperand<V, Cpu>& op_s,
          Op op, double beta, MatrixView<TY, Cpu> y) {
  const auto& s = op_s.s;
  const index_t n = x.rows();
  peft::detail::check_spmm(x, s, op, y);
  using A = accum_t<std::remove_const_t<TY>>;
  const A a = static_cast<A>(alpha), b = static_cast<A>(beta);
  typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
  // op = N: one output row in the accumulation type per thread (a team has at most threads()).
  A* const rows = op == Op::N ? frame.take<A>(index_t(ctx.threads()) * y.cols()) : nullptr;
#pragma omp parallel num_threads(ctx.threads()) if (n * s.nnz > (index_t{1} << 16))
  {
    int id = 0;
#if defined(_OPENMP)
    id = omp_get_thread_num();
#endif
    A* const row = rows == nullptr ? nullptr : rows + index_t(id) * y.cols();
#pragma omp for schedule(static)
    for (index_t i = 0; i < n; ++i) {
      const TX* xi = x.data() + i * x.stride();
      TY* yi = y.data() + i * y.stride();
      if (op == Op::T) {
        for (index_t r = 0; r < s.rows; ++r) {
          A sum = 0;
          for (index_t k = s.row_offsets[r]; k < s.row_offsets[r + 1]; ++k)
            sum += convert_value<A>(s.values[k]) * convert_value<A>(xi[s.col_indices[k]]);
          const A old = b == A(0) ? A(0) : b * convert_value<A>(yi[r]);
          yi[r] = convert_value<std::remove_const_t<TY>>(a * sum + old);
        }
      } else {
        std::fill(row, row + y.cols(), A(0));
        for (index_t r = 0; r < s.rows; ++r) {
          const A xr = convert_value<A>(xi[r]);
          if (xr == A(0)) continue;
          for (index_t k = s.row_offsets[r]; k < s.row_offsets[r + 1]; ++k)
            row[s.col_indices[k]] += convert_value<A>(s.values[k]) * xr;
        }
        for (index_t c = 0; c < y.cols(); ++c) {
          const A old = b == A(0) ? A(0) : b * convert_value<A>(yi[c]);
          yi[c] = convert_value<std::remove_const_t<TY>>(a * row[c] + old);
        }
      }
    }
  }
}

/// values(S) = alpha (op(A) op(B)) ⊙ pattern(S) + beta values(S): the sampled dense-dense product.
/// RoSA's dS = (dyᵀ x) ⊙ mask is sddmm(ctx, 1, Op::T, dy, Op::N, x, 1, dS). Rows of S without
/// entries cost nothing (RoSA masks cluster in few rows). For op(A) = Aᵀ the loop runs over the
/// rows of A and B so that both are read row by row.
template <class TA, class TB, class V>
void sddmm(Context<Cpu>& ctx, double alpha, Op op_a, MatrixView<TA, Cpu> a, Op op_b,
           MatrixView<TB, Cpu> b, double beta, const CsrView<V, Cpu>& s) {
  static_assert(!std::is_const_v<V>, "sddmm writes the values of S");
  const index_t k = peft::detail::check_sddmm(op_a, a, op_b, b, s).k;
  using Acc = accum_t<V>;
  if (op_a == Op::T && op_b == Op::N) {
    detail::sddmm_rows_streamed(ctx, alpha, a, b, beta, s);
    return;
  }
  auto a_at = [&](index_t i, index_t l) {
    return convert_value<Acc>(op_a == Op::N ? a.data()[i * a.stride() + l]
                                            : a.data()[l * a.stride() + i]);
  };
  auto b_at = [&](index_t l, index_t j) {
    return convert_value<Acc>(op_b == Op::N ? b.data()[l * b.stride() + j]
                                            : b.data()[j * b.stride() + l]);
  };
#pragma omp parallel for num_threads(ctx.threads()) \
    schedule(dynamic, 16) if (s.nnz * k > (index_t{1} << 16))
  for (index_t r = 0; r < s.rows; ++r) {
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e) {
      Acc sum = 0;
      const index_t c = s.col_indices[e];
      for (index_t l = 0; l < k; ++l) sum += a_at(r, l) * b_at(l, c);
      const Acc old = beta == 0 ? Acc(0) : static_cast<Acc>(beta) * convert_value<Acc>(s.values[e]);
      s.values[e] = convert_value<V>(static_cast<Acc>(alpha) * sum + old);
    }
  }
}

/// dense(r, c) += alpha S(r, c) for every entry: adds S into a dense copy of W0 (RoSA's dense_add
/// forward), or into W0 itself (merge).
template <class V, class T>
void add_sparse_to_dense(Context<Cpu>& ctx, double alpha, const CsrView<V, Cpu>& s,
                         MatrixView<T, Cpu> dense) {
  detail::check_csr_shape("add_sparse_to_dense", s, dense.rows(), dense.cols());
#pragma omp parallel for num_threads(ctx.threads()) if (s.nnz > (index_t{1} << 16))
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e) {
      T& d = dense(r, s.col_indices[e]);
      d = convert_value<T>(convert_value<double>(d) + alpha * convert_value<double>(s.values[e]));
    }
}

/// dst[k] = src[index[k]] with conversion: keeps the values of Sᵀ (and 16-bit copies) in step with
/// the values of S.
template <class TS, class TD>
void gather(Context<Cpu>& ctx, VectorView<TS, Cpu> src, VectorView<const std::int32_t, Cpu> index,
            VectorView<TD, Cpu> dst) {
  peft::detail::check_gather(index, dst);
  const index_t n = dst.size();
#pragma omp parallel for num_threads(ctx.threads()) if (n > (index_t{1} << 16))
  for (index_t k = 0; k < n; ++k) dst[k] = convert_value<std::remove_const_t<TD>>(src[index[k]]);
}

/// The pattern of Sᵀ from the pattern of S, and perm with values(Sᵀ)[k] = values(S)[perm[k]]
/// (a counting sort by column; entries within a column stay sorted by row).
template <class V>
void csr_transpose_pattern(Context<Cpu>& ctx, const CsrView<V, Cpu>& s,
                           VectorView<std::int32_t, Cpu> t_row_offsets,
                           VectorView<std::int32_t, Cpu> t_col_indices,
                           VectorView<std::int32_t, Cpu> perm) {
  peft::detail::check_csr_transpose_outputs(s, t_row_offsets, t_col_indices, perm);
  for (index_t c = 0; c <= s.cols; ++c) t_row_offsets[c] = 0;
  for (index_t e = 0; e < s.nnz; ++e) ++t_row_offsets[s.col_indices[e] + 1];
  for (index_t c = 0; c < s.cols; ++c) t_row_offsets[c + 1] += t_row_offsets[c];
  typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
  std::int32_t* const next = frame.take<std::int32_t>(s.cols);  // next free slot per column
  for (index_t c = 0; c < s.cols; ++c) next[c] = t_row_offsets[c];
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e) {
      const std::int32_t slot = next[s.col_indices[e]]++;
      t_col_indices[slot] = static_cast<std::int32_t>(r);
      perm[slot] = static_cast<std::int32_t>(e);
    }
}

/// dst += alpha src ⊙ src (RoSA's mean-of-squares gradient accumulation).
template <class TS, class TD>
void accumulate_squares(Context<Cpu>& ctx, double alpha, MatrixView<TS, Cpu> src,
                        MatrixView<TD, Cpu> dst) {
  detail::check_same_shape("accumulate_squares", src, dst);
  const index_t rows = src.rows(), cols = src.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > (index_t{1} << 15))
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) {
      const double v = convert_value<double>(src(i, j));
      dst(i, j) = convert_value<TD>(convert_value<double>(dst(i, j)) + alpha * v * v);
    }
}

/// The k entries of largest |score| as a CSR pattern (sorted columns per row), ties broken by
/// the smaller flat index (row-major), so the result is deterministic. row_offsets has rows + 1
/// elements, col_indices k. A radix select on the bits of |score| as a double (monotonic for
/// non-negative values) finds the k-th largest key in at most eight passes of 256 bins, stopping
/// once the bits found so far single out exactly the keys still missing; one more pass keeps the
/// larger keys and the first ties in row-major order. No scratch beyond the stack.
template <class T>
void topk_pattern(Context<Cpu>&, MatrixView<T, Cpu> scores, index_t k,
                  VectorView<std::int32_t, Cpu> row_offsets,
                  VectorView<std::int32_t, Cpu> col_indices) {
  const index_t rows = scores.rows(), cols = scores.cols();
  peft::detail::check_topk(k, rows, cols, row_offsets, col_indices);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      PEFT_CHECK(std::isfinite(convert_value<double>(scores(i, j))), ErrorKind::numeric,
                 "topk_pattern: score (", i, ", ", j, ") is not finite");
  auto key = [&](index_t i, index_t j) {
    return std::bit_cast<std::uint64_t>(std::abs(convert_value<double>(scores(i, j))));
  };
  for (index_t r = 0; r <= rows; ++r) row_offsets[r] = 0;
  if (k == 0) return;

  // The threshold, 8 bits at a time from the top. Invariant: the keys whose bits under `known`
  // are above `prefix` are in the top k, and `ties` more come from those equal to `prefix` there
  // (at least `ties` of them exist).
  std::uint64_t prefix = 0, known = 0;
  index_t ties = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    std::array<index_t, 256> count{};
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) {
        const std::uint64_t v = key(i, j);
        if ((v & known) == prefix) ++count[(v >> shift) & 0xFF];
      }
    std::size_t digit = 255;
    for (; digit > 0 && count[digit] < ties; --digit) ties -= count[digit];
    prefix |= std::uint64_t(digit) << shift;
    known |= std::uint64_t(0xFF) << shift;
    if (count[digit] == ties) break;  // every key left under this prefix is in the top k
  }

  index_t e = 0;
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) {
      const std::uint64_t v = key(i, j) & known;
      if (v > prefix || (v == prefix && ties > 0)) {
        if (v == prefix) --ties;
        col_indices[e++] = static_cast<std::int32_t>(j);
      }
    }
    row_offsets[i + 1] = static_cast<std::int32_t>(e);
  }
}

}  // namespace cpu
}  // namespace peft
