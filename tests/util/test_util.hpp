#pragma once
// Shared helpers of the tests: deterministic random matrices and naive reference math.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <peft/peft.hpp>

namespace peft::test {

using HostCtx = Context<Cpu>;

template <class T>
Matrix<T, Cpu> random_matrix(index_t rows, index_t cols, std::uint32_t seed, double scale = 1.0) {
  Matrix<T, Cpu> m(rows, cols);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-scale, scale);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = convert_value<T>(dist(gen));
  return m;
}

/// A pattern of `nnz` entries at random positions of a rows x cols matrix (for sparse parts).
inline CsrPattern random_mask_pattern(index_t rows, index_t cols, index_t nnz, std::uint32_t seed) {
  std::vector<index_t> flat(static_cast<std::size_t>(rows * cols));
  std::iota(flat.begin(), flat.end(), 0);
  std::mt19937 gen(seed);
  std::shuffle(flat.begin(), flat.end(), gen);
  Matrix<std::uint8_t, Cpu> mask(rows, cols);
  for (index_t e = 0; e < nnz; ++e) mask.data()[flat[static_cast<std::size_t>(e)]] = 1;
  return CsrPattern::from_mask(as_const(mask.view()));
}

/// Copy of a view with element conversion into an owning matrix of type D.
template <class D, class S>
Matrix<D, Cpu> converted(MatrixView<S, Cpu> src) {
  Matrix<D, Cpu> m(src.rows(), src.cols());
  for (index_t i = 0; i < src.rows(); ++i)
    for (index_t j = 0; j < src.cols(); ++j) m.view()(i, j) = convert_value<D>(src(i, j));
  return m;
}

/// C = op(A) op(B) by triple loop in double.
template <class TA, class TB>
Matrix<double, Cpu> naive_product(MatrixView<TA, Cpu> a, bool ta, MatrixView<TB, Cpu> b, bool tb) {
  const index_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols();
  const index_t n = tb ? b.rows() : b.cols();
  Matrix<double, Cpu> c(m, n);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t l = 0; l < k; ++l)
        s += convert_value<double>(ta ? a(l, i) : a(i, l)) *
             convert_value<double>(tb ? b(j, l) : b(l, j));
      c.view()(i, j) = s;
    }
  return c;
}

/// ‖a − b‖_F / max(‖b‖_F, tiny), in double.
template <class TA, class TB>
double relative_error(MatrixView<TA, Cpu> a, MatrixView<TB, Cpu> b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  double num = 0, den = 0;
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j) {
      const double x = convert_value<double>(a(i, j)), y = convert_value<double>(b(i, j));
      num += (x - y) * (x - y);
      den += y * y;
    }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

template <class T>
bool bitwise_equal(MatrixView<T, Cpu> a, MatrixView<T, Cpu> b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j)
      if (std::memcmp(&a(i, j), &b(i, j), sizeof(T)) != 0) return false;
  return true;
}

/// Runs f and checks that it throws peft::Error of `kind` whose message contains every needle.
template <class F>
void expect_error(F&& f, ErrorKind kind, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected peft::Error, nothing was thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const auto& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << needle << "\"";
  }
}

}  // namespace peft::test
