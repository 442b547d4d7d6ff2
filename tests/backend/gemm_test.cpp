// gemm on the CPU (backend/cpu/dense.hpp) against a naive triple loop in double: all transpose
// combinations, alpha and beta, odd and random shapes, k = 0, strided views for A, B and C, and
// float, double and Eigen::bfloat16 (with a bf16 or float C), on 1 and 2 threads.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::Op;
using bf16 = Eigen::bfloat16;

using peft::primtest::expect_error;
using peft::primtest::kNaN;
using peft::primtest::to_double;
template <class T>
using Operand = peft::primtest::Strided<T>;

/// op(X)(i, l) without materialising the transpose.
template <class T>
double at(MatrixView<T, Cpu> x, Op op, index_t i, index_t l) {
  return to_double(op == Op::N ? x(i, l) : x(l, i));
}

/// Machine epsilon of the accumulation and of the output rounding for one type pair.
template <class TA, class TC>
struct Precision {
  static constexpr double acc =
      std::is_same_v<TA, double> ? 0x1.0p-53 : 0x1.0p-24;  // float for float and bf16
  static constexpr double out = std::is_same_v<TC, bf16> ? 0x1.0p-8 : 0.0;
};

/// Runs gemm and compares with the naive product, element by element, against the standard
/// error bound: |c - ref| <= (2 (k + 4) u_acc + u_out) (|alpha| sum |a||b| + |beta| |c0|).
template <class TA, class TC>
void check_gemm(Context<Cpu>& ctx, Op op_a, Op op_b, index_t m, index_t n, index_t k, double alpha,
                double beta, bool strided, std::uint32_t seed, bool nan_c = false) {
  std::mt19937 gen(seed);
  Operand<TA> a(op_a == Op::N ? m : k, op_a == Op::N ? k : m, strided, gen);
  Operand<TA> b(op_b == Op::N ? k : n, op_b == Op::N ? n : k, strided, gen);
  Operand<TC> c(m, n, strided, gen, -7.0);
  if (nan_c) c.fill_view(kNaN);
  Matrix<double, Cpu> c0(m, n);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) c0.view()(i, j) = to_double(c.view(i, j));

  peft::cpu::gemm(ctx, op_a, op_b, alpha, peft::as_const(a.view), peft::as_const(b.view), beta,
                  c.view);

  const double tol =
      2.0 * static_cast<double>(k + 4) * Precision<TA, TC>::acc + Precision<TA, TC>::out;
  int failures = 0;
  for (index_t i = 0; i < m && failures < 5; ++i)
    for (index_t j = 0; j < n && failures < 5; ++j) {
      double ref = 0, bound = 0;
      for (index_t l = 0; l < k; ++l) {
        const double p = at(a.view, op_a, i, l) * at(b.view, op_b, l, j);
        ref += p;
        bound += std::abs(p);
      }
      ref *= alpha;
      bound *= std::abs(alpha);
      if (beta != 0) {
        ref += beta * c0.view()(i, j);
        bound += std::abs(beta * c0.view()(i, j));
      }
      const double got = to_double(c.view(i, j));
      if (!(std::abs(got - ref) <= tol * bound)) {
        ++failures;
        ADD_FAILURE() << "C(" << i << ", " << j << ") = " << got << ", expected " << ref
                      << " (tolerance " << tol * bound << "); m=" << m << " n=" << n << " k=" << k
                      << " opA=" << (op_a == Op::N ? "N" : "T")
                      << " opB=" << (op_b == Op::N ? "N" : "T") << " alpha=" << alpha
                      << " beta=" << beta << " strided=" << strided << " threads=" << ctx.threads();
      }
    }
  EXPECT_TRUE(c.gaps_untouched()) << "gemm wrote outside C's view";
}

template <class A, class C>
struct Types {
  using TA = A;
  using TC = C;
};

template <class P>
class Gemm : public ::testing::Test {};

using TypeConfigs = ::testing::Types<Types<float, float>, Types<double, double>, Types<bf16, bf16>,
                                     Types<bf16, float>>;

class TypeNames {
 public:
  template <class P>
  static std::string GetName(int) {
    using TA = typename P::TA;
    using TC = typename P::TC;
    auto name = [](auto tag) -> std::string {
      using T = decltype(tag);
      if (std::is_same_v<T, float>) return "float";
      if (std::is_same_v<T, double>) return "double";
      return "bf16";
    };
    return name(TA{}) + "_" + name(TC{});
  }
};
TYPED_TEST_SUITE(Gemm, TypeConfigs, TypeNames);

constexpr Op kOps[2] = {Op::N, Op::T};

TYPED_TEST(Gemm, OddShapesAllTransposesAlphaBetaStrided) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  const index_t sizes[] = {1, 3, 17, 33};
  const double alpha_beta[][2] = {{1.0, 0.0}, {-0.75, 1.0}, {0.5, -2.0}, {2.0, 0.5}};
  std::uint32_t seed = 1;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const Op op_a : kOps)
      for (const Op op_b : kOps)
        for (const index_t m : sizes)
          for (const index_t n : sizes)
            for (const index_t k : sizes) {
              const auto& ab = alpha_beta[seed % 4];
              check_gemm<TA, TC>(ctx, op_a, op_b, m, n, k, ab[0], ab[1], seed % 2 == 0, seed);
              ++seed;
            }
  }
}

TYPED_TEST(Gemm, RandomShapes) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  std::mt19937 gen(12345);
  std::uniform_int_distribution<int> size(1, 48);
  std::uniform_real_distribution<double> scalar(-2.0, 2.0);
  Context<Cpu> ctx1(peft::CpuContextOptions{.threads = 1});
  Context<Cpu> ctx2(peft::CpuContextOptions{.threads = 2});
  for (int trial = 0; trial < 60; ++trial) {
    const Op op_a = kOps[gen() % 2], op_b = kOps[gen() % 2];
    const index_t m = size(gen), n = size(gen), k = size(gen);
    const double alpha = scalar(gen), beta = trial % 3 == 0 ? 0.0 : scalar(gen);
    check_gemm<TA, TC>(trial % 2 ? ctx1 : ctx2, op_a, op_b, m, n, k, alpha, beta, trial % 4 < 2,
                       static_cast<std::uint32_t>(1000 + trial));
  }
}

// Large enough for the blocked kernels and the BLAS's own threads.
TYPED_TEST(Gemm, LargeShapes) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    check_gemm<TA, TC>(ctx, Op::N, Op::T, 130, 97, 257, 1.0, 0.0, false, 7);
    check_gemm<TA, TC>(ctx, Op::T, Op::N, 67, 140, 129, 0.5, 1.0, true, 8);
  }
}

TYPED_TEST(Gemm, BetaZeroIgnoresNaNInC) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  std::uint32_t seed = 50;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const Op op_a : kOps)
      for (const Op op_b : kOps)
        for (const bool strided : {false, true}) {
          check_gemm<TA, TC>(ctx, op_a, op_b, 17, 5, 33, 1.0, 0.0, strided, seed++, true);
          check_gemm<TA, TC>(ctx, op_a, op_b, 64, 48, 80, -1.5, 0.0, strided, seed++, true);
        }
  }
}

TYPED_TEST(Gemm, InnerDimensionZero) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  std::uint32_t seed = 90;
  for (const Op op_a : kOps)
    for (const Op op_b : kOps)
      for (const bool strided : {false, true}) {
        check_gemm<TA, TC>(ctx, op_a, op_b, 5, 7, 0, 1.0, 0.0, strided, seed++, true);  // C = 0
        check_gemm<TA, TC>(ctx, op_a, op_b, 5, 7, 0, 1.0, 0.5, strided, seed++);        // C *= b
        check_gemm<TA, TC>(ctx, op_a, op_b, 3, 4, 0, 2.0, 1.0, strided, seed++);        // as is
      }
}

TYPED_TEST(Gemm, EmptyOutputIsANoOp) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  Context<Cpu> ctx;
  Matrix<TA, Cpu> a(0, 4), b(4, 3);
  Matrix<TC, Cpu> c(0, 3);
  EXPECT_NO_THROW(peft::cpu::gemm(ctx, Op::N, Op::N, 1.0, peft::as_const(a.view()),
                                  peft::as_const(b.view()), 0.0, c.view()));
  Matrix<TA, Cpu> a2(3, 4), b2(4, 0);
  Matrix<TC, Cpu> c2(3, 0);
  EXPECT_NO_THROW(peft::cpu::gemm(ctx, Op::N, Op::N, 1.0, peft::as_const(a2.view()),
                                  peft::as_const(b2.view()), 0.0, c2.view()));
}

TYPED_TEST(Gemm, ShapeMismatchesThrow) {
  using TA = typename TypeParam::TA;
  using TC = typename TypeParam::TC;
  Context<Cpu> ctx;
  Matrix<TA, Cpu> a(3, 4), b(5, 2), b_ok(4, 2);
  Matrix<TC, Cpu> c(3, 2), c_bad(3, 3);
  const auto av = peft::as_const(a.view());
  expect_error(
      [&] { peft::cpu::gemm(ctx, Op::N, Op::N, 1.0, av, as_const(b.view()), 0.0, c.view()); },
      ErrorKind::shape, {"3 x 4", "5 x 2", "inner"});
  // With the transposes: op(A) = Aᵀ is 4 x 3, op(B) = Bᵀ is 2 x 5.
  expect_error(
      [&] { peft::cpu::gemm(ctx, Op::T, Op::T, 1.0, av, as_const(b.view()), 0.0, c.view()); },
      ErrorKind::shape, {"4 x 3", "2 x 5"});
  expect_error(
      [&] {
        peft::cpu::gemm(ctx, Op::N, Op::N, 1.0, av, as_const(b_ok.view()), 0.0, c_bad.view());
      },
      ErrorKind::shape, {"C is 3 x 3", "3 x 2"});
  expect_error(
      [&] { peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, av, as_const(b_ok.view()), 0.0, c.view()); },
      ErrorKind::shape, {"3 x 4", "2 x 4", "(inner dimensions differ)"});
}

TEST(GemmThreads, ContextThreadCountReachesEigen) {
  Context<Cpu> one(peft::CpuContextOptions{.threads = 1});
  Context<Cpu> two(peft::CpuContextOptions{.threads = 2});
  Matrix<float, Cpu> a(4, 4), b(4, 4), c(4, 4);
  peft::cpu::gemm(two, Op::N, Op::N, 1.0, as_const(a.view()), as_const(b.view()), 0.0, c.view());
  EXPECT_EQ(Eigen::nbThreads(), 2);
  peft::cpu::gemm(one, Op::N, Op::N, 1.0, as_const(a.view()), as_const(b.view()), 0.0, c.view());
  EXPECT_EQ(Eigen::nbThreads(), 1);
  two.set_threads(1);
  one.set_threads(2);
  peft::cpu::gemm(one, Op::N, Op::N, 1.0, as_const(a.view()), as_const(b.view()), 0.0, c.view());
  EXPECT_EQ(Eigen::nbThreads(), 2);
}

TEST(GemmThreads, ThreadCountsGiveTheSameResult) {
  std::mt19937 gen(3);
  Operand<float> a(150, 90, true, gen), b(90, 110, false, gen);
  Matrix<float, Cpu> c1(150, 110), c2(150, 110);
  Context<Cpu> one(peft::CpuContextOptions{.threads = 1});
  Context<Cpu> two(peft::CpuContextOptions{.threads = 2});
  peft::cpu::gemm(one, Op::N, Op::N, 1.0, as_const(a.view), as_const(b.view), 0.0, c1.view());
  peft::cpu::gemm(two, Op::N, Op::N, 1.0, as_const(a.view), as_const(b.view), 0.0, c2.view());
  double diff = 0, ref = 0;
  for (index_t i = 0; i < c1.size(); ++i) {
    diff = std::max(diff, std::abs(double(c1.data()[i]) - double(c2.data()[i])));
    ref = std::max(ref, std::abs(double(c1.data()[i])));
  }
  EXPECT_LE(diff, 1e-5 * ref);
}

TEST(GemmWorkspace, SixteenBitStagingAllocatesNothingOnceWarm) {
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  std::mt19937 gen(11);
  Operand<bf16> a(40, 24, true, gen), b(30, 24, false, gen);
  Operand<bf16> c(40, 30, true, gen, -7.0);
  Matrix<float, Cpu> cf(40, 30);
  auto run = [&] {
    peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, as_const(a.view), as_const(b.view), 0.5, c.view);
    peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, as_const(a.view), as_const(b.view), 0.0, cf.view());
  };
  run();
  const auto warm = ctx.workspace().allocations();
  EXPECT_GT(warm, 0u);  // the staging buffers come from the workspace
  run();
  run();
  EXPECT_EQ(ctx.workspace().allocations(), warm);
  EXPECT_TRUE(c.gaps_untouched());
}

}  // namespace
