#pragma once
// Helpers of the CPU primitive tests: views that live inside larger matrices (stride > cols)
// with a known value in the gaps, and a check on the kind and message of a peft::Error.

#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>

#include <peft/core/buffer.hpp>
#include <peft/core/dtype.hpp>
#include <peft/core/error.hpp>

namespace peft::primtest {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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

template <class T>
double to_double(T x) {
  return convert_value<double>(x);
}

/// A rows x cols view with random entries in [-1, 1), either contiguous or a block at (1, 2)
/// inside a (rows + 3) x (cols + 5) matrix whose other elements hold `gap`.
template <class T>
struct Strided {
  Matrix<T, Cpu> storage;
  MatrixView<T, Cpu> view;
  double gap = 0;

  Strided(index_t rows, index_t cols, bool strided, std::mt19937& gen, double gap_value = kNaN)
      : storage(rows + (strided ? 3 : 0), cols + (strided ? 5 : 0)), gap(gap_value) {
    view = strided ? storage.view().block(1, 2, rows, cols) : storage.view();
    auto all = storage.view();
    for (index_t i = 0; i < all.rows(); ++i)
      for (index_t j = 0; j < all.cols(); ++j) all(i, j) = convert_value<T>(gap);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) view(i, j) = convert_value<T>(dist(gen));
  }

  MatrixView<const T, Cpu> cview() const { return view; }

  void fill_view(double value) {
    for (index_t i = 0; i < view.rows(); ++i)
      for (index_t j = 0; j < view.cols(); ++j) view(i, j) = convert_value<T>(value);
  }

  /// True when every element outside the view still holds the gap value (NaN equals NaN).
  bool gaps_untouched() const {
    const auto all = storage.view();
    const index_t r0 =
        view.rows() == 0 || view.cols() == 0 ? 0 : (view.data() - all.data()) / all.cols();
    const index_t c0 =
        view.rows() == 0 || view.cols() == 0 ? 0 : (view.data() - all.data()) % all.cols();
    for (index_t i = 0; i < all.rows(); ++i)
      for (index_t j = 0; j < all.cols(); ++j) {
        const bool inside = i >= r0 && i < r0 + view.rows() && j >= c0 && j < c0 + view.cols();
        if (inside) continue;
        const double x = to_double(all(i, j));
        if (!(x == gap || (std::isnan(x) && std::isnan(gap)))) return false;
      }
    return true;
  }
};

}  // namespace peft::primtest
