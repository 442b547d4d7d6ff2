#pragma once
// The truncated SVD primitive (LoRA-XS's frozen factors), what both backends share: its options,
// its argument checks, the Philox Gaussian sketch and the sign rule. The algorithms are in
// backend/cpu/svd.hpp (Eigen's QR and SVD) and backend/cuda/svd.cuh (cuBLAS and cuSOLVER).
//
//   truncated_svd(ctx, [op,] W, r, options, U [m, r], S [r], Vt [r, n]):  op(W) ≈ U diag(S) Vt
//
// where op(W) is [m, n]. A randomized range finder with subspace (power) iterations (Halko,
// Martinsson and Tropp 2011, algorithms 4.4 and 5.1): a Gaussian sketch Ω [n, l] of
// l = min(r + oversampling, m, n) columns, Y = op(W) Ω, q times Q = orth(Y), Y = op(W) orth(op(W)ᵀ
// Q), then Q = orth(Y) [m, l], B = Qᵀ op(W) [l, n] and the exact SVD of B through a QR of Bᵀ
// (Bᵀ = Q₂ R₂, R₂ = U_a Σ V_aᵀ, so op(W) ≈ (Q V_a) Σ (Q₂ U_a)ᵀ), truncated to r. Every
// orthonormalisation is a Householder QR. When l reaches min(m, n) the range is found exactly
// and the result is the exact SVD up to rounding.
//
// Deterministic for a seed: the sketch is drawn on the host from Philox (entry (i, j) of Ωᵀ is
// normal_from_stream(stream, i n + j) of stream (seed, stream_id 0, purpose init, step
// kSvdSketchStep)), so both backends start from the same sketch. Signs follow one rule on both
// backends (scikit-learn's svd_flip): the entry of largest magnitude of every column of U is
// positive (the first one on a tie), and the row of Vt follows. Outputs are computed in their
// own type C (float or double); W of another type (16-bit, or float for a double result) is
// converted to C first. U, S and Vt must not overlap W.

#include <algorithm>
#include <cstdint>

#include "../core/backend.hpp"
#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../core/view.hpp"

namespace peft {

/// Options of truncated_svd.
struct SvdOptions {
  /// Extra sketch columns p beyond r: the sketch has min(r + p, m, n) columns.
  index_t oversampling = 10;
  /// Subspace iterations q: 2q + 2 products with W in all. More iterations sharpen a slowly
  /// decaying spectrum (a pretrained weight's); 0 is the plain range finder. 10 is what the
  /// LoRA-XS reference gave scikit-learn's TruncatedSVD (n_iter).
  index_t power_iterations = 10;
  /// Seed of the Philox Gaussian sketch.
  std::uint64_t seed = 0;
};

namespace detail {

/// The sketch's Philox step (with purpose init and stream_id 0): "SVD" in ASCII, far from the
/// steps that layers use for their own init streams.
inline constexpr std::uint32_t kSvdSketchStep = 0x00535644u;

/// The sizes of one truncated SVD: op(W) is [m, n], the sketch has l columns.
struct SvdShape {
  index_t m = 0, n = 0, r = 0, l = 0;
};

/// Checks the arguments of truncated_svd; returns its sizes. `who` names the call in messages.
template <class TW, class TU, class TS, class TV, class B>
SvdShape check_truncated_svd(const char* who, Op op_w, const MatrixView<TW, B>& w, index_t r,
                             const SvdOptions& options, const MatrixView<TU, B>& u,
                             const VectorView<TS, B>& s, const MatrixView<TV, B>& vt) {
  const index_t m = op_w == Op::N ? w.rows() : w.cols();
  const index_t n = op_w == Op::N ? w.cols() : w.rows();
  PEFT_CHECK_SHAPE(m > 0 && n > 0, who, ": W is ", shape_string(w),
                   ", expected a non-empty matrix");
  PEFT_CHECK_ARG(r >= 1 && r <= std::min(m, n), who, ": r is ", r, ", expected 1 to min(", m, ", ",
                 n, ") = ", std::min(m, n), " (the rank of a ", m, " x ", n, " matrix)");
  PEFT_CHECK_ARG(options.oversampling >= 0, who, ": oversampling is ", options.oversampling,
                 ", expected >= 0");
  PEFT_CHECK_ARG(options.power_iterations >= 0, who, ": power_iterations is ",
                 options.power_iterations, ", expected >= 0");
  PEFT_CHECK_SHAPE(u.rows() == m && u.cols() == r, who, ": U is ", shape_string(u), ", expected ",
                   m, " x ", r, " (rows of op(W) x r)");
  PEFT_CHECK_SHAPE(s.size() == r, who, ": S has ", s.size(), " elements, expected r = ", r);
  PEFT_CHECK_SHAPE(vt.rows() == r && vt.cols() == n, who, ": Vt is ", shape_string(vt),
                   ", expected ", r, " x ", n, " (r x columns of op(W))");
  const index_t l = std::min({r + std::min(options.oversampling, std::min(m, n)), m, n});
  PEFT_CHECK_SHAPE(std::uint64_t(l) * std::uint64_t(n) <= kMaxStreamElements, who,
                   ": the sketch of ", l, " x ", n, " entries exceeds one random stream (",
                   kMaxStreamElements, " entries)");
  return {m, n, r, l};
}

/// The sketch Ωᵀ [l, n] (row-major, host memory): entry (i, j) is the normal number
/// normal_from_stream(stream, i n + j), whatever the backend.
template <class C>
void fill_svd_sketch(MatrixView<C, Cpu> omega_t, std::uint64_t seed) {
  const RandomStream stream = make_stream(seed, 0, RandomPurpose::init, kSvdSketchStep);
  const index_t n = omega_t.cols();
  for (index_t i = 0; i < omega_t.rows(); ++i)
    for (index_t j = 0; j < n; ++j)
      omega_t(i, j) = static_cast<C>(normal_from_stream(stream, std::uint64_t(i * n + j)));
}

}  // namespace detail
}  // namespace peft
