#pragma once
// Importance statistics for rank allocation (AdaLoRA) on the CPU, element-wise over a parameter
// and its gradient, in double and rounded once (as the GPU twin in backend/cuda/importance.cuh):
//   I = |p · g|,  Ī ← β1 Ī + (1 − β1) I,  Ū ← β2 Ū + (1 − β2) |I − Ī|,  score = Ī · Ū.

#include <cmath>
#include <type_traits>

#include "context.hpp"
#include "elementwise.hpp"

namespace peft::cpu {

template <class P, class S>
void importance_update(Context<Cpu>& ctx, double beta1, double beta2,
                       MatrixView<const P, Cpu> value, MatrixView<const P, Cpu> grad,
                       MatrixView<S, Cpu> sensitivity, MatrixView<S, Cpu> uncertainty,
                       MatrixView<S, Cpu> score) {
  peft::detail::check_same_shapes("importance_update", value, grad, sensitivity, uncertainty,
                                  score);
  const index_t rows = value.rows(), cols = value.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) {
      const double ipt = std::abs(double(value(i, j)) * double(grad(i, j)));
      const double avg = beta1 * double(sensitivity(i, j)) + (1.0 - beta1) * ipt;
      const double unc = beta2 * double(uncertainty(i, j)) + (1.0 - beta2) * std::abs(ipt - avg);
      sensitivity(i, j) = static_cast<S>(avg);
      uncertainty(i, j) = static_cast<S>(unc);
      score(i, j) = static_cast<S>(avg * unc);
    }
}

/// y = x ⊙ y (masks).
template <class TX, class TY>
void multiply(Context<Cpu>& ctx, MatrixView<TX, Cpu> x, MatrixView<TY, Cpu> y) {
  detail::check_same_shape("multiply", x, y);
  const index_t rows = x.rows(), cols = x.cols();
#pragma omp parallel for num_threads(ctx.threads()) if (rows * cols > detail::kParallelElements)
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      y(i, j) = convert_value<std::remove_const_t<TY>>(convert_value<double>(x(i, j)) *
                                                       convert_value<double>(y(i, j)));
}

}  // namespace peft::cpu
