#pragma once
// The host side of the CUDA tests: the fixture that skips without a device, host element types
// for each DType (Eigen's half and bfloat16 round to nearest even, as CUDA's conversions do),
// random test data rounded to a dtype, and comparisons.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <random>
#include <string>
#include <type_traits>
#include <utility>

#include <peft/peft.hpp>

#include "cuda/gpu.hpp"

namespace peft::gpu::test {

/// Every CUDA test derives from this: without a usable device the test is skipped (not
/// failed), with the reason, e.g. "no CUDA device: cudaGetDeviceCount returned
/// cudaErrorInsufficientDriver (35): ...".
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!device_available()) GTEST_SKIP() << "no CUDA device: " << unavailable_reason();
  }
};

using HostCtx = Context<Cpu>;

template <class T>
struct HostTag {
  using type = T;
};

/// Calls f(HostTag<T>{}) with the host element type of `t` (float, double, Eigen::half,
/// Eigen::bfloat16).
template <class F>
decltype(auto) with_host_type(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return std::forward<F>(f)(HostTag<float>{});
    case DType::f64:
      return std::forward<F>(f)(HostTag<double>{});
    case DType::f16:
      return std::forward<F>(f)(HostTag<Eigen::half>{});
    case DType::bf16:
      return std::forward<F>(f)(HostTag<Eigen::bfloat16>{});
  }
  throw Error(ErrorKind::invalid_argument, "unknown dtype");
}

inline constexpr DType kAllTypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16};

/// Unit roundoff of a dtype.
inline double unit_roundoff(DType t) {
  switch (t) {
    case DType::f32:
      return 0x1.0p-24;
    case DType::f64:
      return 0x1.0p-53;
    case DType::f16:
      return 0x1.0p-11;
    case DType::bf16:
      return 0x1.0p-8;
  }
  return 1;
}

/// Host matrix of element type T from doubles (through float for 16-bit T, like the device).
template <class T>
Matrix<T, Cpu> to_typed(HostView m) {
  Matrix<T, Cpu> out(m.rows(), m.cols());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.view()(i, j) = convert_value<T>(m(i, j));
  return out;
}

template <class T>
HostMatrix to_double(MatrixView<const T, Cpu> m) {
  HostMatrix out(m.rows(), m.cols());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.view()(i, j) = convert_value<double>(m(i, j));
  return out;
}

/// Every element rounded to `t` and back: the values a device matrix of that dtype holds.
inline HostMatrix round_to(DType t, HostView m) {
  return with_host_type(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto typed = to_typed<T>(m);
    return to_double(as_const(typed.view()));
  });
}

/// rows x cols uniform in [-scale, scale), rounded to `t`.
inline HostMatrix random_matrix(DType t, index_t rows, index_t cols, std::uint32_t seed,
                                double scale = 1.0) {
  HostMatrix m(rows, cols);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-scale, scale);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
  return round_to(t, as_const(m.view()));
}

inline HostMatrix filled(index_t rows, index_t cols, double value) {
  HostMatrix m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = value;
  return m;
}

inline HostMatrix copy_of(HostView m) {
  HostMatrix out(m.rows(), m.cols());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.view()(i, j) = m(i, j);
  return out;
}

/// a − b.
inline HostMatrix difference(HostView a, HostView b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  HostMatrix out(a.rows(), a.cols());
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j) out.view()(i, j) = a(i, j) - b(i, j);
  return out;
}

/// ‖a − b‖_F / ‖b‖_F (NaN anywhere gives NaN, which fails every bound).
inline double relative_error(HostView a, HostView b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  double num = 0, den = 0;
  for (index_t i = 0; i < a.rows(); ++i)
    for (index_t j = 0; j < a.cols(); ++j) {
      const double d = a(i, j) - b(i, j);
      num += d * d;
      den += b(i, j) * b(i, j);
    }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

/// Element-wise identity of the doubles (so, for values that came from one dtype, of the
/// dtype's bits: the conversion to double is exact and injective, signed zeros included).
/// Reports the first few differences.
inline ::testing::AssertionResult bitwise_equal(HostView got, HostView expected) {
  if (got.rows() != expected.rows() || got.cols() != expected.cols())
    return ::testing::AssertionFailure()
           << "shapes differ: " << shape_string(got) << " and " << shape_string(expected);
  auto failure = ::testing::AssertionFailure();
  int bad = 0;
  for (index_t i = 0; i < got.rows(); ++i)
    for (index_t j = 0; j < got.cols(); ++j) {
      const double g = got(i, j), e = expected(i, j);
      const bool same =
          std::memcmp(&g, &e, sizeof(double)) == 0 || (std::isnan(g) && std::isnan(e));
      if (!same && bad++ < 5) failure << "(" << i << ", " << j << "): " << g << " vs " << e << "; ";
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  return failure << bad << " of " << got.size() << " elements differ";
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

/// Shapes with odd sizes (1, 3, 17, 129) for the element-wise primitives.
inline constexpr std::pair<index_t, index_t> kShapes[] = {
    {1, 1}, {1, 129}, {129, 1}, {3, 17}, {17, 3}, {17, 129}, {129, 17}, {129, 129},
};

inline std::string describe(DType t, index_t rows, index_t cols, bool strided) {
  return peft::detail::concat(name(t), " ", rows, " x ", cols, strided ? " strided" : "");
}

}  // namespace peft::gpu::test
