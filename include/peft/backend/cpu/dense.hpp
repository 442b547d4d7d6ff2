#pragma once
// gemm on the CPU: C = alpha op(A) op(B) + beta C on row-major strided views, without copies.
// float products with one dimension up to 128 (r-wide) go to the skinny kernels
// (skinny_gemm.hpp); the rest of float and double to the gemm provider peft was built with
// (gemm_provider.hpp: OpenBLAS, oneDNN, BLIS or Eigen). 16-bit inputs are staged through fp32 in
// the Context's workspace so that they accumulate in fp32, as cuBLAS does on the GPU: panel by
// panel along the inner dimension (or, for x W0ᵀ with few rows, by blocks of W0's rows), so the
// scratch is at most (m + n) · 1024 floats however deep the product is (a frozen W0 is never copied
// whole), plus an fp32 C [m, n] when C is 16-bit.

#include <algorithm>
#include <type_traits>

#include <Eigen/Core>

#include "../../core/dtype.hpp"
#include "../checks.hpp"
#include "context.hpp"
#include "eigen_interop.hpp"
#include "gemm_provider.hpp"
#include "skinny_gemm.hpp"

namespace peft::cpu {
namespace detail {

/// Sends the Context's thread count to Eigen and the gemm provider (only when it changed).
inline void apply_threads(Context<Cpu>& ctx) {
  static thread_local int applied = -1;
  if (applied == ctx.threads()) return;
  applied = ctx.threads();
  Eigen::setNbThreads(ctx.threads());
  set_provider_threads(ctx.threads());
}

/// Depth of the fp32 panels the 16-bit gemm stages its operands in, along the inner dimension.
/// Deep enough that the BLAS (which blocks that dimension by about 256 itself) and the row
/// segments a panel reads from a transposed operand (2 KiB of bf16) stay efficient, and that few
/// panels mean few fork/joins; shallow enough that a panel of a 4096-wide operand (16 MiB) is a
/// quarter of its whole fp32 copy and mostly stays in the last-level cache until it is used.
inline constexpr index_t kStagingDepth = 1024;

/// A forward product x W0ᵀ with few rows in x stages W0 in blocks of whole rows instead (its
/// contiguous direction), with op(A) converted whole, when that fits in the panels' bytes.
inline constexpr index_t kStagingFewRows = 64;
inline constexpr index_t kStagingBlockRows = 256;

/// Bytes a workspace frame hands out for `count` floats.
inline index_t staged_bytes(index_t count) {
  constexpr index_t align = index_t(peft::detail::Workspace<Cpu>::alignment);
  return (count * index_t(sizeof(float)) + align - 1) / align * align;
}

/// The bytes of the fp32 panels of op(A) [m, k] and op(B) [k, n].
inline index_t staged_panel_bytes(index_t m, index_t n, index_t k) {
  const index_t depth = std::min(k, kStagingDepth);
  return staged_bytes(m * depth) + staged_bytes(depth * n);
}

/// Rows of B per block when op(B) = Bᵀ [k, n] is staged by whole rows of B (few rows m, k deeper
/// than one panel, and op(A) whole plus a block of at least min(64, n) rows within the panels'
/// bytes); 0 when the panels along k apply.
inline index_t staging_block_rows(Op op_b, index_t m, index_t n, index_t k) {
  if (op_b != Op::T || m > kStagingFewRows || k <= kStagingDepth) return 0;
  const index_t avail = staged_panel_bytes(m, n, k) - staged_bytes(m * k);
  if (avail <= 0) return 0;
  index_t rows = std::min({n, kStagingBlockRows, avail / (k * index_t(sizeof(float)))});
  while (rows > 0 && staged_bytes(rows * k) > avail) --rows;
  return rows >= std::min<index_t>(64, n) ? rows : 0;
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

/// Two conversions in one parallel region (one fork and one join per staged panel pair).
template <class S>
void convert_pair(Context<Cpu>& ctx, MatrixView<const S, Cpu> src1, MatrixView<float, Cpu> dst1,
                  MatrixView<const S, Cpu> src2, MatrixView<float, Cpu> dst2) {
  const index_t r1 = src1.rows(), c1 = src1.cols(), r2 = src2.rows(), c2 = src2.cols();
#pragma omp parallel num_threads(ctx.threads()) if (r1 * c1 + r2 * c2 > (1 << 16))
  {
#pragma omp for schedule(static) nowait
    for (index_t i = 0; i < r1; ++i)
      for (index_t j = 0; j < c1; ++j)
        dst1.data()[i * dst1.stride() + j] =
            convert_value<float>(src1.data()[i * src1.stride() + j]);
#pragma omp for schedule(static)
    for (index_t i = 0; i < r2; ++i)
      for (index_t j = 0; j < c2; ++j)
        dst2.data()[i * dst2.stride() + j] =
            convert_value<float>(src2.data()[i * src2.stride() + j]);
  }
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

  const peft::detail::ProductShape shape = peft::detail::check_gemm(op_a, a, op_b, b, c);
  const index_t m = shape.m, n = shape.n, k = shape.k;
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
    if constexpr (std::is_same_v<T, float>) {  // r-wide products: streamed, not packed
      if (detail::skinny_gemm(ctx, op_a, op_b, float(alpha), as_const(a), as_const(b), float(beta),
                              c, k))
        return;
    }
    detail::provider_gemm<T>(ctx.threads(), op_a, op_b, static_cast<T>(alpha), a, b,
                             static_cast<T>(beta), c, k);
  } else {
    // C = beta C + sum over panels p of alpha op(A)[:, p] op(B)[p, :], accumulated in fp32.
    typename peft::detail::Workspace<Cpu>::Frame frame(ctx.workspace());
    MatrixView<float, Cpu> acc;
    if constexpr (std::is_same_v<TC, float>) {
      acc = c;
    } else {
      acc = frame.matrix<float>(m, n);
      if (beta != 0) detail::convert<T, float>(ctx, as_const(c), acc);
    }
    const bool ta = op_a == Op::T, tb = op_b == Op::T;
    if (const index_t rows = detail::staging_block_rows(op_b, m, n, k); rows > 0) {
      // C[:, j..] = alpha op(A) B[j.., :]ᵀ + beta C[:, j..], B's rows read contiguously.
      const MatrixView<float, Cpu> af(frame.take<float>(m * k), ta ? k : m, ta ? m : k);
      float* const b_block = frame.take<float>(rows * k);
      detail::convert<T, float>(ctx, a, af);
      for (index_t j = 0; j < n; j += rows) {
        const index_t w = std::min(rows, n - j);
        const MatrixView<float, Cpu> bj(b_block, w, k);
        detail::convert<T, float>(ctx, b.block(j, 0, w, k), bj);
        gemm(ctx, op_a, Op::T, alpha, as_const(af), as_const(bj), beta, acc.block(0, j, m, w));
      }
      if constexpr (!std::is_same_v<TC, float>) detail::convert<float, T>(ctx, as_const(acc), c);
      return;
    }
    const index_t depth = std::min(k, detail::kStagingDepth);
    float* const a_panel = frame.take<float>(m * depth);
    float* const b_panel = frame.take<float>(depth * n);
    index_t p = 0;
    do {  // once with an empty panel when k = 0: then C = beta C
      const index_t w = std::min(depth, k - p);
      const MatrixView<float, Cpu> ap(a_panel, ta ? w : m, ta ? m : w);
      const MatrixView<float, Cpu> bp(b_panel, tb ? n : w, tb ? w : n);
      detail::convert_pair<T>(ctx, ta ? a.block(p, 0, w, m) : a.block(0, p, m, w), ap,
                              tb ? b.block(0, p, n, w) : b.block(p, 0, w, n), bp);
      gemm(ctx, op_a, op_b, alpha, as_const(ap), as_const(bp), p == 0 ? beta : 1.0, acc);
      p += w;
    } while (p < k);
    if constexpr (!std::is_same_v<TC, float>) detail::convert<float, T>(ctx, as_const(acc), c);
  }
}

/// Workspace bytes one gemm call takes for C [m, n] = op(A) op(B) with inner dimension k: the
/// fp32 staging of 16-bit operands (nothing for float and double). They grow with m and n, and
/// with k only up to the panel depth, so a call with at most m rows takes at most
/// gemm_workspace_bytes(m, ...), and k = INT64_MAX gives a bound for any k.
template <class TA, class TC>
index_t gemm_workspace_bytes(const Context<Cpu>&, Op op_a, Op op_b, index_t m, index_t n,
                             index_t k) {
  using T = std::remove_const_t<TA>;
  (void)op_a;
  if constexpr (!is_16bit_v<T>) {
    (void)op_b, (void)m, (void)n, (void)k;
    return 0;
  } else {
    // The row-block path of few-row products takes no more than the panels (it is chosen so).
    const index_t acc =
        std::is_same_v<std::remove_const_t<TC>, float> ? 0 : detail::staged_bytes(m * n);
    return acc + detail::staged_panel_bytes(m, n, k);
  }
}

}  // namespace peft::cpu
