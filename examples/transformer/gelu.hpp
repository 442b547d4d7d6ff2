#pragma once
// GELU, exact (nn.GELU()'s default): gelu(u) = u Φ(u), with Φ the standard normal CDF;
// gelu'(u) = Φ(u) + u φ(u).

#include <cmath>
#include <numbers>

#include "common.hpp"

namespace tfm {

template <class T>
void gelu_forward(CView<T> u, View<T> g) {
  for (index_t i = 0; i < u.rows(); ++i)
    for (index_t j = 0; j < u.cols(); ++j) {
      const double x = double(u(i, j));
      g(i, j) = T(0.5 * x * (1.0 + std::erf(x * std::numbers::sqrt2 / 2)));
    }
}

// du = dg · gelu'(u), written (not accumulated).
template <class T>
void gelu_backward(CView<T> u, CView<T> dg, View<T> du) {
  const double inv_sqrt_2pi = 0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2;
  for (index_t i = 0; i < u.rows(); ++i)
    for (index_t j = 0; j < u.cols(); ++j) {
      const double x = double(u(i, j));
      const double cdf = 0.5 * (1.0 + std::erf(x * std::numbers::sqrt2 / 2));
      const double pdf = inv_sqrt_2pi * std::exp(-0.5 * x * x);
      du(i, j) = T(double(dg(i, j)) * (cdf + x * pdf));
    }
}

}  // namespace tfm
