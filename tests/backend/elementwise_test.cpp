// Element-wise primitives and reductions on the CPU (backend/cpu/elementwise.hpp): fill, scale,
// axpy, copy, broadcast_rows, dot, norm, all_finite and adamw_update, each on strided views
// (whose gaps must be neither read nor written), with shape checks.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::convert_value;
using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::VectorView;
using peft::primtest::expect_error;
using peft::primtest::kNaN;
using peft::primtest::Strided;
using peft::primtest::to_double;
using bf16 = Eigen::bfloat16;

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Shapes that cover odd sizes and, at 2 threads, the OpenMP path (> 2^15 elements).
struct Shape {
  index_t rows, cols;
};
constexpr Shape kShapes[] = {{1, 1}, {3, 17}, {33, 5}, {190, 181}};

template <class T>
class Elementwise : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, double, bf16>;
TYPED_TEST_SUITE(Elementwise, ElementTypes);

TYPED_TEST(Elementwise, Fill) {
  using T = TypeParam;
  std::mt19937 gen(1);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> x(rows, cols, true, gen);
      peft::cpu::fill(ctx, x.view, 0.1);
      const T expected = convert_value<T>(0.1);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) ASSERT_EQ(x.view(i, j), expected) << i << ", " << j;
      EXPECT_TRUE(x.gaps_untouched());
    }
  }
}

TYPED_TEST(Elementwise, Scale) {
  using T = TypeParam;
  std::mt19937 gen(2);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> x(rows, cols, true, gen);
      Matrix<double, Cpu> before(rows, cols);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) before.view()(i, j) = to_double(x.view(i, j));
      peft::cpu::scale(ctx, -2.5, x.view);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j)
          ASSERT_EQ(x.view(i, j), convert_value<T>(-2.5 * before.view()(i, j)));
      EXPECT_TRUE(x.gaps_untouched());
    }
  }
}

TYPED_TEST(Elementwise, AxpySameAndMixedTypes) {
  using T = TypeParam;
  std::mt19937 gen(3);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> x(rows, cols, true, gen);
      Strided<T> y(rows, cols, true, gen, -3.0);
      Strided<float> xf(rows, cols, false, gen);  // fp32 gradient into a T copy
      Matrix<double, Cpu> y0(rows, cols);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) y0.view()(i, j) = to_double(y.view(i, j));
      peft::cpu::axpy(ctx, 0.75, x.cview(), y.view);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) {
          const T expected = convert_value<T>(0.75 * to_double(x.view(i, j)) + y0.view()(i, j));
          ASSERT_EQ(y.view(i, j), expected);
          y0.view()(i, j) = to_double(expected);
        }
      peft::cpu::axpy(ctx, -1.25, xf.cview(), y.view);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j)
          ASSERT_EQ(y.view(i, j),
                    convert_value<T>(-1.25 * double(xf.view(i, j)) + y0.view()(i, j)));
      EXPECT_TRUE(y.gaps_untouched());
      EXPECT_TRUE(x.gaps_untouched());
    }
  }
}

template <class S, class D>
void check_copy(Context<Cpu>& ctx, index_t rows, index_t cols, std::mt19937& gen) {
  Strided<S> src(rows, cols, true, gen);
  Strided<D> dst(rows, cols, true, gen, 5.0);
  peft::cpu::copy(ctx, src.cview(), dst.view);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) ASSERT_EQ(dst.view(i, j), convert_value<D>(src.view(i, j)));
  EXPECT_TRUE(dst.gaps_untouched());
  EXPECT_TRUE(src.gaps_untouched());
}

TYPED_TEST(Elementwise, CopyWithConversions) {
  using T = TypeParam;
  std::mt19937 gen(4);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      check_copy<T, float>(ctx, rows, cols, gen);
      check_copy<T, double>(ctx, rows, cols, gen);
      check_copy<T, bf16>(ctx, rows, cols, gen);
      check_copy<float, T>(ctx, rows, cols, gen);
      check_copy<double, T>(ctx, rows, cols, gen);
    }
  }
}

TEST(Copy, ConversionValues) {
  Context<Cpu> ctx;
  std::vector<double> src = {1.0 + 0x1.0p-8, 1.0 + 0x1.8p-8, -0.1, 3.0e38, 1e-40, kInf};
  Matrix<bf16, Cpu> b(1, 6);
  Matrix<float, Cpu> f(1, 6);
  MatrixView<const double, Cpu> sv(src.data(), 1, 6);
  peft::cpu::copy(ctx, sv, b.view());
  peft::cpu::copy(ctx, sv, f.view());
  EXPECT_EQ(float(b.view()(0, 0)), 1.0f);  // ties to even
  EXPECT_EQ(float(b.view()(0, 1)), 1.0f + 0x1.0p-7f);
  EXPECT_EQ(float(b.view()(0, 2)), -0.10009765625f);  // nearest bf16 to -0.1
  EXPECT_EQ(f.view()(0, 2), -0.1f);
  EXPECT_EQ(f.view()(0, 3), 3.0e38f);
  EXPECT_TRUE(std::isinf(float(b.view()(0, 5))));
  Matrix<double, Cpu> back(1, 6);
  peft::cpu::copy(ctx, as_const(b.view()), back.view());
  EXPECT_EQ(back.view()(0, 1), 1.0 + 0x1.0p-7);
}

TYPED_TEST(Elementwise, BroadcastRows) {
  using T = TypeParam;
  std::mt19937 gen(5);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> y(rows, cols, true, gen, 9.0);
      // The bias as every other element of a buffer (increment 2), in float.
      std::vector<float> storage(2 * static_cast<size_t>(cols), 1e30f);
      for (index_t j = 0; j < cols; ++j) storage[2 * j] = static_cast<float>(j) * 0.37f - 1.0f;
      VectorView<const float, Cpu> b(storage.data(), cols, 2);
      peft::cpu::broadcast_rows(ctx, b, y.view);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) ASSERT_EQ(y.view(i, j), convert_value<T>(b[j]));
      EXPECT_TRUE(y.gaps_untouched());
    }
  }
}

TYPED_TEST(Elementwise, DotAndNorm) {
  using T = TypeParam;
  std::mt19937 gen(6);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> x(rows, cols, true, gen);  // NaN gaps: a read of the gap poisons the sum
      Strided<float> y(rows, cols, true, gen);
      double ref = 0, abs_sum = 0, sq = 0;
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) {
          const double p = to_double(x.view(i, j)) * double(y.view(i, j));
          ref += p;
          abs_sum += std::abs(p);
          sq += to_double(x.view(i, j)) * to_double(x.view(i, j));
        }
      const double tol = 1e-14 * static_cast<double>(rows * cols) * abs_sum;
      EXPECT_NEAR(peft::cpu::dot(ctx, x.cview(), y.cview()), ref, tol);
      EXPECT_NEAR(peft::cpu::dot(ctx, y.cview(), x.cview()), ref, tol);
      EXPECT_NEAR(peft::cpu::norm(ctx, x.cview()), std::sqrt(sq), 1e-12 * std::sqrt(sq));
    }
  }
}

TEST(Dot, AccumulatesInDouble) {
  // 1 + 2^-30 per element: a float accumulator would lose the small part entirely.
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 1});
  Matrix<float, Cpu> x(1, 4), ones(1, 4);
  peft::cpu::fill(ctx, ones.view(), 1.0);
  x.view()(0, 0) = 1.0f;
  x.view()(0, 1) = 0x1.0p-30f;
  x.view()(0, 2) = 0x1.0p-30f;
  x.view()(0, 3) = -1.0f;
  EXPECT_EQ(peft::cpu::dot(ctx, as_const(x.view()), as_const(ones.view())), 0x1.0p-29);
  EXPECT_EQ(peft::cpu::norm(ctx, as_const(Matrix<double, Cpu>(0, 3).view())), 0.0);
  Matrix<double, Cpu> v(2, 1);
  v.view()(0, 0) = 3.0;
  v.view()(1, 0) = -4.0;
  EXPECT_EQ(peft::cpu::norm(ctx, as_const(v.view())), 5.0);
}

TYPED_TEST(Elementwise, AllFinite) {
  using T = TypeParam;
  std::mt19937 gen(7);
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto [rows, cols] : kShapes) {
      Strided<T> x(rows, cols, true, gen, kNaN);  // NaN in the gaps must not count
      EXPECT_TRUE(peft::cpu::all_finite(ctx, x.cview()));
      for (const double bad : {kNaN, kInf, -kInf}) {
        const index_t i = rows - 1, j = cols / 2;
        const T saved = x.view(i, j);
        x.view(i, j) = convert_value<T>(bad);
        EXPECT_FALSE(peft::cpu::all_finite(ctx, x.cview())) << bad << " at " << i << ", " << j;
        x.view(i, j) = saved;
        x.view(0, 0) = convert_value<T>(bad);
        EXPECT_FALSE(peft::cpu::all_finite(ctx, x.cview())) << bad << " at 0, 0";
        x.view(0, 0) = convert_value<T>(0.5);
      }
      EXPECT_TRUE(peft::cpu::all_finite(ctx, x.cview()));
      // The largest finite values are finite.
      x.view(0, 0) = convert_value<T>(double(std::numeric_limits<float>::max()));
      EXPECT_EQ(peft::cpu::all_finite(ctx, x.cview()), (!std::is_same_v<T, bf16>))
          << "FLT_MAX rounds up to +inf in bfloat16 only";
    }
  }
  Context<Cpu> ctx;
  EXPECT_TRUE(peft::cpu::all_finite(ctx, MatrixView<const float, Cpu>()));
}

TEST(ShapeChecks, MismatchesThrowWithBothShapes) {
  Context<Cpu> ctx;
  Matrix<float, Cpu> a(3, 4), b(4, 3), c(3, 5);
  Matrix<double, Cpu> d(2, 4);
  expect_error([&] { peft::cpu::axpy(ctx, 1.0, as_const(a.view()), b.view()); }, ErrorKind::shape,
               {"axpy", "3 x 4", "4 x 3"});
  expect_error([&] { peft::cpu::copy(ctx, as_const(a.view()), d.view()); }, ErrorKind::shape,
               {"copy", "3 x 4", "2 x 4"});
  expect_error([&] { (void)peft::cpu::dot(ctx, as_const(a.view()), as_const(c.view())); },
               ErrorKind::shape, {"dot", "3 x 4", "3 x 5"});
  std::vector<float> bias(5);
  expect_error(
      [&] {
        peft::cpu::broadcast_rows(ctx, VectorView<const float, Cpu>(bias.data(), 5), a.view());
      },
      ErrorKind::shape, {"broadcast_rows", "5 elements", "4 columns"});
  // Nothing was written by the refused calls.
  EXPECT_EQ(b.view()(0, 0), 0.0f);
  EXPECT_EQ(d.view()(0, 0), 0.0);
  EXPECT_EQ(a.view()(0, 0), 0.0f);
}

// ---------------------------------------------------------------------------------------------
// adamw_update against PyTorch's AdamW (torch.optim.AdamW, single-tensor path), in double:
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay;
};

peft::AdamWStep make_step(const Hyper& hp, int t) {
  peft::AdamWStep h;
  h.lr = hp.lr;
  h.beta1 = hp.beta1;
  h.beta2 = hp.beta2;
  h.eps = hp.eps;
  h.weight_decay = hp.weight_decay;
  h.bias_correction1 = 1.0 - std::pow(hp.beta1, t);
  h.bias_correction2 = 1.0 - std::pow(hp.beta2, t);
  return h;
}

void reference_adamw(const peft::AdamWStep& h, double& p, double g, double& m, double& v) {
  // The step's scalars as the kernel sees them (AdamWStep may hold float or double).
  const double lr = h.lr, b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weight_decay;
  p *= 1.0 - lr * wd;
  m = b1 * m + (1.0 - b1) * g;
  v = b2 * v + (1.0 - b2) * g * g;
  const double denom = std::sqrt(v) / std::sqrt(double(h.bias_correction2)) + eps;
  p -= lr / double(h.bias_correction1) * m / denom;
}

TEST(AdamW, HandComputedSteps) {
  // Constants exact in binary so that the expected values are exact literals (from Python).
  const Hyper hp{0.125, 0.875, 1.0 - 0x1.0p-10, 0x1.0p-20, 0.0625};
  Context<Cpu> ctx;
  Matrix<double, Cpu> p(1, 1), g(1, 1), m(1, 1), v(1, 1);
  p.view()(0, 0) = 1.0;
  g.view()(0, 0) = 0.5;
  peft::cpu::adamw_update(ctx, make_step(hp, 1), p.view(), as_const(g.view()), m.view(), v.view());
  // p = 1 (1 - 1/128) - 1 * 0.0625 / (0.5 + 2^-20)
  EXPECT_NEAR(p.view()(0, 0), 0.8671877384181244, 1e-15);
  EXPECT_EQ(m.view()(0, 0), 0.0625);
  EXPECT_EQ(v.view()(0, 0), 0x1.0p-12);
  g.view()(0, 0) = -0.25;
  peft::cpu::adamw_update(ctx, make_step(hp, 2), p.view(), as_const(g.view()), m.view(), v.view());
  EXPECT_NEAR(p.view()(0, 0), 0.8287854984015005, 1e-15);
  EXPECT_EQ(m.view()(0, 0), 0.0234375);
  EXPECT_NEAR(v.view()(0, 0), 0.00030493736267089844, 1e-19);
}

template <class T>
void check_adamw(int threads, index_t rows, index_t cols, double tol) {
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
  std::mt19937 gen(static_cast<std::uint32_t>(rows * 31 + cols));
  Strided<T> p(rows, cols, true, gen), g(rows, cols, true, gen);
  Strided<T> m(rows, cols, true, gen, -1.0), v(rows, cols, true, gen, -2.0);
  m.fill_view(0.0);
  v.fill_view(0.0);
  Matrix<double, Cpu> rp(rows, cols), rm(rows, cols), rv(rows, cols);
  // Error scales that cancellation cannot shrink: |p0| + t lr, and m accumulated from |g|.
  Matrix<double, Cpu> p_scale(rows, cols), m_scale(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) rp.view()(i, j) = double(p.view(i, j));
  const Hyper hp{1e-3, 0.9, 0.999, 1e-8, 0.01};
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (int t = 1; t <= 4; ++t) {
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) g.view(i, j) = static_cast<T>(dist(gen));
    const peft::AdamWStep h = make_step(hp, t);
    peft::cpu::adamw_update(ctx, h, p.view, g.cview(), m.view, v.view);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) {
        if (t == 1) p_scale.view()(i, j) = std::abs(rp.view()(i, j)) + 4 * hp.lr;
        m_scale.view()(i, j) =
            hp.beta1 * m_scale.view()(i, j) + (1 - hp.beta1) * std::abs(double(g.view(i, j)));
        reference_adamw(h, rp.view()(i, j), double(g.view(i, j)), rm.view()(i, j), rv.view()(i, j));
      }
  }
  int failures = 0;
  for (index_t i = 0; i < rows && failures < 5; ++i)
    for (index_t j = 0; j < cols && failures < 5; ++j) {
      const double err_p = std::abs(double(p.view(i, j)) - rp.view()(i, j));
      const double err_m = std::abs(double(m.view(i, j)) - rm.view()(i, j));
      const double err_v = std::abs(double(v.view(i, j)) - rv.view()(i, j));
      if (!(err_p <= tol * p_scale.view()(i, j) && err_m <= tol * m_scale.view()(i, j) &&
            err_v <= tol * rv.view()(i, j))) {
        ++failures;
        ADD_FAILURE() << "(" << i << ", " << j << "): p " << double(p.view(i, j)) << " vs "
                      << rp.view()(i, j) << ", m " << double(m.view(i, j)) << " vs "
                      << rm.view()(i, j) << ", v " << double(v.view(i, j)) << " vs "
                      << rv.view()(i, j);
      }
    }
  EXPECT_TRUE(p.gaps_untouched());
  EXPECT_TRUE(m.gaps_untouched());
  EXPECT_TRUE(v.gaps_untouched());
  EXPECT_TRUE(g.gaps_untouched());
}

TEST(AdamW, MatchesPyTorchReferenceDouble) {
  for (const int threads : {1, 2})
    for (const auto [rows, cols] : kShapes) check_adamw<double>(threads, rows, cols, 1e-13);
}

TEST(AdamW, MatchesPyTorchReferenceFloat) {
  for (const int threads : {1, 2})
    for (const auto [rows, cols] : kShapes) check_adamw<float>(threads, rows, cols, 2e-6);
}

TEST(AdamW, ShapeMismatchThrows) {
  Context<Cpu> ctx;
  Matrix<float, Cpu> p(3, 4), g(3, 4), g_bad(4, 3), m(3, 4), m_bad(3, 5), v(3, 4), v_bad(2, 4);
  const peft::AdamWStep h = make_step({1e-3, 0.9, 0.999, 1e-8, 0.0}, 1);
  expect_error(
      [&] {
        peft::cpu::adamw_update(ctx, h, p.view(), as_const(g_bad.view()), m.view(), v.view());
      },
      ErrorKind::shape, {"adamw_update (grad)", "3 x 4", "4 x 3"});
  expect_error(
      [&] {
        peft::cpu::adamw_update(ctx, h, p.view(), as_const(g.view()), m_bad.view(), v.view());
      },
      ErrorKind::shape, {"adamw_update (m)", "3 x 5"});
  expect_error(
      [&] {
        peft::cpu::adamw_update(ctx, h, p.view(), as_const(g.view()), m.view(), v_bad.view());
      },
      ErrorKind::shape, {"adamw_update (v)", "2 x 4"});
}

}  // namespace
