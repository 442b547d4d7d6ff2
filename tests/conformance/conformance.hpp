#pragma once
// Shared pieces of the conformance suite: the (method, dtype) combinations, deterministic layers
// with a non-zero adapter contribution, and the adapter's own part of y and dx.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "cases.hpp"
#include "util/test_util.hpp"

namespace peft::test {

template <class Case, class T>
struct Combo {
  using case_type = Case;
  using value_type = T;
};

template <class List>
struct EveryDtype;
template <class... Cases>
struct EveryDtype<CaseList<Cases...>> {
  using type = ::testing::Types<Combo<Cases, double>..., Combo<Cases, float>...,
                                Combo<Cases, Eigen::bfloat16>...>;
};

/// Gives every parameter deterministic values in [-0.5, 0.5] (and a sparse part its mask), so
/// that the adapter's contribution is not zero whatever the method's init.
template <class Layer>
void randomise(Context<Cpu>& ctx, Layer& layer, std::uint32_t seed) {
  if constexpr (requires(CsrPattern p) { layer.set_mask(ctx, p); })
    layer.set_mask(ctx, random_mask_pattern(layer.out_features(), layer.in_features(),
                                            layer.sparse_capacity(), seed));
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-0.5, 0.5);
  for (auto& p : layer.parameters())
    for (index_t i = 0; i < p.value.rows(); ++i)
      for (index_t j = 0; j < p.value.cols(); ++j)
        p.value(i, j) = static_cast<typename Layer::param_type>(dist(gen));
  layer.parameters_updated(ctx);
}

/// dst's parameters = src's, by name (values converted), then parameters_updated.
template <class Dst, class Src>
void copy_parameters(Context<Cpu>& ctx, Dst& dst, Src& src) {
  auto from = src.parameters();
  for (auto& p : dst.parameters()) {
    auto it =
        std::find_if(from.begin(), from.end(), [&](const auto& q) { return q.name == p.name; });
    ASSERT_NE(it, from.end()) << p.name;
    copy(ctx, as_const(it->value), p.value);
  }
  dst.parameters_updated(ctx);
}

/// The frozen part of a layer's output, x W0ᵀ + b, in double.
template <class T>
Matrix<double, Cpu> base_output(MatrixView<const T, Cpu> x, MatrixView<const T, Cpu> w0,
                                bool fan_in_fan_out, MatrixView<const T, Cpu> bias) {
  auto y = naive_product(x, false, w0, !fan_in_fan_out);
  for (index_t i = 0; i < y.rows(); ++i)
    for (index_t j = 0; j < y.cols(); ++j) y.view()(i, j) += convert_value<double>(bias(0, j));
  return y;
}

/// a − b in double.
template <class TA>
Matrix<double, Cpu> minus(MatrixView<TA, Cpu> a, MatrixView<const double, Cpu> b) {
  Matrix<double, Cpu> d(a.rows(), a.cols());
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j)
      d.view()(i, j) = convert_value<double>(a(i, j)) - b(i, j);
  return d;
}

/// Tolerances by dtype: double, fp32, and 16-bit outputs (fp32 adapter gradients stay tight).
template <class T>
struct Tolerance {
  static constexpr double output = std::is_same_v<T, double>  ? 1e-12
                                   : std::is_same_v<T, float> ? 1e-5
                                                              : 2e-2;
  static constexpr double gradient = std::is_same_v<T, double> ? 1e-12 : 1e-5;
};

}  // namespace peft::test
