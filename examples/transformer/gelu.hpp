#pragma once
// GELU, exact (nn.GELU()'s default): gelu(u) = u Φ(u), with Φ the standard normal CDF;
// gelu'(u) = Φ(u) + u φ(u).

#include <cmath>
#include <numbers>

#include "common.hpp"

namespace tfm {

// Computed in T (erff for float: twice as fast as erf, and float is what is stored).
template <class T>
void gelu_forward(Ctx& ctx, CView<T> u, View<T> g) {
  const T half_sqrt2 = T(std::numbers::sqrt2 / 2);
#pragma omp parallel for num_threads(ctx.threads()) if (u.size() > 8192)
  for (index_t i = 0; i < u.rows(); ++i)
    for (index_t j = 0; j < u.cols(); ++j) {
      const T x = u(i, j);
      g(i, j) = T(0.5) * x * (T(1) + std::erf(x * half_sqrt2));
    }
}

// du = dg · gelu'(u), written (not accumulated).
template <class T>
void gelu_backward(Ctx& ctx, CView<T> u, CView<T> dg, View<T> du) {
  const T inv_sqrt_2pi = T(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
  const T half_sqrt2 = T(std::numbers::sqrt2 / 2);
#pragma omp parallel for num_threads(ctx.threads()) if (u.size() > 8192)
  for (index_t i = 0; i < u.rows(); ++i)
    for (index_t j = 0; j < u.cols(); ++j) {
      const T x = u(i, j);
      const T cdf = T(0.5) * (T(1) + std::erf(x * half_sqrt2));
      const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x * x);
      du(i, j) = dg(i, j) * (cdf + x * pdf);
    }
}

}  // namespace tfm
