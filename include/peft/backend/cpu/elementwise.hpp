#pragma once
// Element-wise primitives and reductions on the CPU: plain loops with OpenMP over rows.
// Every function takes strided views and checks shapes; reductions accumulate in double.

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>

#include "../../core/adamw_step.hpp"
#include "../../core/dtype.hpp"
#include "../../core/random.hpp"
#include "../checks.hpp"
#include "context.hpp"

namespace peft::cpu {
namespace detail {

// Loops shorter than this stay on one thread: waking threads costs more than they save.
inline constexpr index_t kParallelElements = index_t{1} << 15;

// The argument checks shared with the CUDA backend (backend/checks.hpp).
using peft::detail::check_same_shape;

}  // namespace detail

/// x = value.
template <class T>
void fill(Context<Cpu>& ctx, MatrixView<T, Cpu> x, double value) {
  const T v = convert_value<T>(value);
  const index_t rows = x.rows(), cols = x.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) x(i, j) = v;
}

/// x = alpha x.
template <class T>
void scale(Context<Cpu>& ctx, double alpha, MatrixView<T, Cpu> x) {
  const index_t rows = x.rows(), cols = x.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      x(i, j) = convert_value<T>(alpha * convert_value<double>(x(i, j)));
}

/// y = alpha x + y. x may have another element type (e.g. fp32 gradients into a 16-bit copy).
template <class TX, class TY>
void axpy(Context<Cpu>& ctx, double alpha, MatrixView<TX, Cpu> x, MatrixView<TY, Cpu> y) {
  detail::check_same_shape("axpy", x, y);
  const index_t rows = x.rows(), cols = x.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      y(i, j) = convert_value<std::remove_const_t<TY>>(alpha * convert_value<double>(x(i, j)) +
                                                       convert_value<double>(y(i, j)));
}

/// dst = src, converting the element type (fp32 parameters to their 16-bit GEMM copies).
template <class TS, class TD>
void copy(Context<Cpu>& ctx, MatrixView<TS, Cpu> src, MatrixView<TD, Cpu> dst) {
  detail::check_same_shape("copy", src, dst);
  const index_t rows = src.rows(), cols = src.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) dst(i, j) = convert_value<TD>(src(i, j));
}

/// Every row of y = b (the bias, before the GEMMs accumulate into y).
template <class TB, class T>
void broadcast_rows(Context<Cpu>& ctx, VectorView<TB, Cpu> b, MatrixView<T, Cpu> y) {
  peft::detail::check_broadcast_rows(b, y);
  const index_t rows = y.rows(), cols = y.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) y(i, j) = convert_value<T>(b[j]);
}

/// out = x ⊙ mask / (1 - p), the mask drawn from Philox: element (i, j) of the logical
/// rows x cols matrix is kept when stream.bits(i * cols + j) >= dropout_threshold(p). The
/// stream lives in backend memory (a layer's reserve), so backward regenerates the same mask.
/// x and out may be the same view. p must be in [0, 1).
template <class TX, class T>
void dropout(Context<Cpu>& ctx, const RandomStream* stream, double p, MatrixView<TX, Cpu> x,
             MatrixView<T, Cpu> out) {
  detail::check_same_shape("dropout", x, out);
  const index_t rows = x.rows(), cols = x.cols();
  peft::detail::check_dropout(p, stream, rows, cols);
  const RandomStream s = *stream;
  const std::uint32_t threshold = dropout_threshold(p);
  using S = accum_t<std::remove_const_t<T>>;  // double stays double
  const S keep_scale = S(1) / S(1.0 - p);     // PyTorch's x · (mask / (1 - p)), 1 - p in double
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements / 4)
  for (index_t i = 0; i < rows; ++i) {
    std::uint64_t flat = static_cast<std::uint64_t>(i * cols);
    PhiloxCounter block = s.block(flat / 4);
    for (index_t j = 0; j < cols; ++j, ++flat) {
      if (flat % 4 == 0) block = s.block(flat / 4);
      const bool keep = block.c[flat % 4] >= threshold;
      out(i, j) =
          keep ? convert_value<T>(convert_value<S>(x(i, j)) * keep_scale) : convert_value<T>(S(0));
    }
  }
}

/// Σ x ⊙ y, accumulated in double.
template <class TX, class TY>
double dot(Context<Cpu>& ctx, MatrixView<TX, Cpu> x, MatrixView<TY, Cpu> y) {
  detail::check_same_shape("dot", x, y);
  const index_t rows = x.rows(), cols = x.cols();
  double sum = 0;
#pragma omp parallel for num_threads(ctx.threads()) reduction(+ : sum) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      sum += convert_value<double>(x(i, j)) * convert_value<double>(y(i, j));
  return sum;
}

/// Frobenius norm, accumulated in double.
template <class T>
double norm(Context<Cpu>& ctx, MatrixView<T, Cpu> x) {
  return std::sqrt(dot(ctx, x, x));
}

/// True when no element is NaN or infinite.
template <class T>
bool all_finite(Context<Cpu>& ctx, MatrixView<T, Cpu> x) {
  const index_t rows = x.rows(), cols = x.cols();
  index_t bad = 0;
#pragma omp parallel for num_threads(ctx.threads()) reduction(+ : bad) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) bad += std::isfinite(convert_value<double>(x(i, j))) ? 0 : 1;
  return bad == 0;
}

/// One AdamW step (PyTorch semantics) on a parameter, its gradient and both moments:
///   p -= lr wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;
///   p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
template <class T>
void adamw_update(Context<Cpu>& ctx, const AdamWStep& h, MatrixView<T, Cpu> value,
                  MatrixView<const T, Cpu> grad, MatrixView<T, Cpu> m, MatrixView<T, Cpu> v) {
  static_assert(std::is_floating_point_v<T>, "adamw_update: parameters are float or double");
  detail::check_same_shape("adamw_update (grad)", value, grad);
  detail::check_same_shape("adamw_update (m)", value, m);
  detail::check_same_shape("adamw_update (v)", value, v);
  // Derived scalars are formed in double and rounded once, as PyTorch forms them in Python
  // floats: in fp32, 1 - float(0.999) is 1.3e-5 away (relative) from float(1 - 0.999).
  const T b1 = T(h.beta1), b2 = T(h.beta2), eps = T(h.eps);
  const T one_minus_b1 = T(1.0 - h.beta1), one_minus_b2 = T(1.0 - h.beta2);
  const T decay = T(1.0 - h.lr * h.weight_decay);
  const T step_size = T(h.lr / h.bias_correction1);
  const T sqrt_bc2 = T(std::sqrt(h.bias_correction2));
  const index_t rows = value.rows(), cols = value.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) {
      const T g = grad(i, j);
      T& mi = m(i, j);
      T& vi = v(i, j);
      mi = b1 * mi + one_minus_b1 * g;
      vi = b2 * vi + one_minus_b2 * g * g;
      value(i, j) = value(i, j) * decay - step_size * mi / (std::sqrt(vi) / sqrt_bc2 + eps);
    }
  }
}

/// The same update for several parameters (one call per parameter group).
template <class T>
void adamw_update(Context<Cpu>& ctx, const AdamWStep& h,
                  std::span<const AdamWTensors<T, Cpu>> tensors) {
  for (const auto& t : tensors) adamw_update(ctx, h, t.value, t.grad, t.m, t.v);
}

}  // namespace peft::cpu
