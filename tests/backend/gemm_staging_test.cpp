// The 16-bit gemm's fp32 staging (backend/cpu/dense.hpp): operands converted panel by panel
// along the inner dimension give the product of the whole fp32 copies (the former algorithm) to
// fp32 rounding; the scratch stays within gemm_workspace_bytes, far below a whole fp32 copy of a
// large operand; and once the workspace is warm a call allocates nothing at all.
//
// This file replaces the global operator new for backend_cpu_test (counting_new.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/Core>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#include "backend/counting_new.hpp"
#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::Cpu;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::Op;
using bf16 = Eigen::bfloat16;
template <class T>
using Operand = peft::primtest::Strided<T>;
using peft::primtest::to_double;

constexpr Op kOps[2] = {Op::N, Op::T};

/// A strided view's values as a contiguous fp32 matrix.
template <class T>
Matrix<float, Cpu> to_float(MatrixView<T, Cpu> v) {
  Matrix<float, Cpu> m(v.rows(), v.cols());
  for (index_t i = 0; i < v.rows(); ++i)
    for (index_t j = 0; j < v.cols(); ++j) m.view()(i, j) = float(to_double(v(i, j)));
  return m;
}

/// gemm on bf16 operands against the whole-operand staging it replaces: both operands (and C
/// when beta != 0) converted to fp32 in full, then one fp32 gemm.
template <class TC>
void check_against_whole_staging(Context<Cpu>& ctx, Op op_a, Op op_b, index_t m, index_t n,
                                 index_t k, double alpha, double beta, std::uint32_t seed) {
  std::mt19937 gen(seed);
  Operand<bf16> a(op_a == Op::N ? m : k, op_a == Op::N ? k : m, seed % 2 == 0, gen);
  Operand<bf16> b(op_b == Op::N ? k : n, op_b == Op::N ? n : k, seed % 3 == 0, gen);
  Operand<TC> c(m, n, seed % 2 == 1, gen, -7.0);
  const auto af = to_float(as_const(a.view)), bf = to_float(as_const(b.view));
  const auto c0 = to_float(as_const(c.view));
  auto expected = to_float(as_const(c.view));
  peft::cpu::gemm(ctx, op_a, op_b, alpha, as_const(af.view()), as_const(bf.view()), beta,
                  expected.view());
  peft::cpu::gemm(ctx, op_a, op_b, alpha, as_const(a.view), as_const(b.view), beta, c.view);

  // Panels only change the order of the fp32 additions: both results are within the standard
  // bound 2 (k + 4) u (|alpha| sum |a||b| + |beta c0|) of the exact value (a lost or repeated
  // panel is off by a whole panel's sum). A bf16 C adds its own rounding, 2^-8 relative.
  const double u = 0x1.0p-24, out = std::is_same_v<TC, float> ? 0.0 : 0x1.0p-8;
  auto at = [](const Matrix<float, Cpu>& x, Op op, index_t i, index_t l) {
    return double(op == Op::N ? x.view()(i, l) : x.view()(l, i));
  };
  int failures = 0;
  for (index_t i = 0; i < m && failures < 5; ++i)
    for (index_t j = 0; j < n && failures < 5; ++j) {
      double bound = std::abs(beta * to_double(c0.view()(i, j)));
      for (index_t l = 0; l < k; ++l)
        bound += std::abs(alpha * at(af, op_a, i, l) * at(bf, op_b, l, j));
      const double want = expected.view()(i, j), got = to_double(c.view(i, j));
      const double tol = (4.0 * double(k + 4) * u + out) * bound;
      if (!(std::abs(got - want) <= tol)) {
        ++failures;
        ADD_FAILURE() << "C(" << i << ", " << j << ") = " << got << ", whole staging gives " << want
                      << " (tolerance " << tol << "); m=" << m << " n=" << n << " k=" << k
                      << " opA=" << (op_a == Op::N ? "N" : "T")
                      << " opB=" << (op_b == Op::N ? "N" : "T") << " beta=" << beta;
      }
    }
  EXPECT_TRUE(c.gaps_untouched()) << "gemm wrote outside C's view";
}

TEST(GemmStaging, PanelsMatchWholeOperandStaging) {
  // k = 2500 is two full panels and a partial one; k = 1024 exactly one; k = 1025 one and one
  // element.
  std::uint32_t seed = 1;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const Op op_a : kOps)
      for (const Op op_b : kOps)
        for (const index_t k : {index_t{2500}, index_t{1024}, index_t{1025}}) {
          check_against_whole_staging<float>(ctx, op_a, op_b, 19, 37, k, 1.0, 0.0, seed++);
          check_against_whole_staging<float>(ctx, op_a, op_b, 23, 11, k, -0.5, 1.5, seed++);
          check_against_whole_staging<bf16>(ctx, op_a, op_b, 19, 37, k, 1.0, 0.0, seed++);
          check_against_whole_staging<bf16>(ctx, op_a, op_b, 23, 11, k, 0.75, -1.0, seed++);
        }
  }
}

TEST(GemmStaging, RowBlocksOfFewRowProductsMatchWholeOperandStaging) {
  // op(B) = Bᵀ with few rows in C (x W0ᵀ for a small batch): B is staged by blocks of whole rows
  // (here 118 + 118 + 64, and 256 + 256 + 8), op(A) whole.
  std::uint32_t seed = 100;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const Op op_a : kOps) {
      check_against_whole_staging<float>(ctx, op_a, Op::T, 8, 300, 2500, 1.0, 0.0, seed++);
      check_against_whole_staging<bf16>(ctx, op_a, Op::T, 8, 300, 2500, -0.5, 1.5, seed++);
      check_against_whole_staging<bf16>(ctx, op_a, Op::T, 1, 300, 1100, 1.0, 0.0, seed++);
    }
  }
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  check_against_whole_staging<bf16>(ctx, Op::N, Op::T, 40, 520, 1500, 1.0, 0.0, seed++);
  check_against_whole_staging<float>(ctx, Op::T, Op::T, 40, 520, 1500, 0.5, -1.0, seed++);
}

TEST(GemmStaging, ScratchIsBoundedByPanelsNotByTheOperands) {
  // y = x W0ᵀ for a bf16 W0 [512, 4096] and 8 rows: a whole fp32 copy of W0 alone is 8 MiB.
  const index_t rows = 8, out = 512, in = 4096;
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  std::mt19937 gen(3);
  Operand<bf16> x(rows, in, false, gen), w0(out, in, false, gen);
  Matrix<bf16, Cpu> y(rows, out);
  Matrix<float, Cpu> g(out, in);
  peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, as_const(x.view), as_const(w0.view), 0.0, y.view());
  const index_t forward =
      peft::cpu::gemm_workspace_bytes<bf16, bf16>(ctx, Op::N, Op::T, rows, out, in);
  EXPECT_LE(ctx.workspace().capacity(), std::size_t(forward));
  EXPECT_LT(forward, out * in * 4 / 3);
  // W0's gradient dyᵀ x (fp32 C [out, in], inner dimension rows): only the operands' panels.
  Operand<bf16> dy(rows, out, false, gen);
  peft::cpu::gemm(ctx, Op::T, Op::N, 1.0, as_const(dy.view), as_const(x.view), 0.0, g.view());
  const index_t grad = peft::cpu::gemm_workspace_bytes<bf16, float>(
      ctx, Op::T, Op::N, out, in, std::numeric_limits<index_t>::max());
  EXPECT_LE(ctx.workspace().capacity(), std::size_t(std::max(forward, grad)));
  // Nothing for fp32 and fp64.
  EXPECT_EQ((peft::cpu::gemm_workspace_bytes<float, float>(ctx, Op::N, Op::T, rows, out, in)), 0);
  EXPECT_EQ((peft::cpu::gemm_workspace_bytes<double, double>(ctx, Op::N, Op::N, rows, out, in)), 0);
}

TEST(GemmStaging, WarmCallsAllocateNothing) {
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  std::mt19937 gen(5);
  Operand<bf16> a(40, 2100, true, gen), b(30, 2100, false, gen), bn(2100, 30, true, gen);
  Operand<bf16> c(40, 30, true, gen, -7.0);
  Matrix<float, Cpu> cf(40, 30);
  auto run = [&] {
    peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, as_const(a.view), as_const(b.view), 0.5, c.view);
    peft::cpu::gemm(ctx, Op::N, Op::N, 1.0, as_const(a.view), as_const(bn.view), 0.0, cf.view());
    peft::cpu::gemm(ctx, Op::T, Op::T, 1.0, as_const(bn.view), as_const(a.view), 0.0,
                    MatrixView<float, Cpu>(cf.data(), 30, 40));
  };
  run();  // warm-up: the workspace grows to the peak of the staging
  const auto warm = ctx.workspace().allocations();
  long news = 0;
  {
    peft::test::CountNew count;
    run();
    run();
    news = count.count();
  }
  EXPECT_EQ(ctx.workspace().allocations(), warm);
#if defined(PEFT_GEMM_PROVIDER_ONEDNN)
  // oneDNN's dnnl_sgemm itself calls operator new on every call (README: "Choosing the GEMM
  // provider"); the staging's own scratch is the workspace's, checked above.
  EXPECT_GT(news, 0) << "dnnl_sgemm no longer allocates: drop this exception";
#else
  EXPECT_EQ(news, 0) << "operator new was called during warm 16-bit gemm calls";
#endif
}

std::vector<int>* volatile g_escape = nullptr;  // keeps the allocations below observable

TEST(CountNew, SeesAllocationsOnEveryThread) {  // the counter behind the tests above works
  long news = 0;
  {
    peft::test::CountNew count;
#pragma omp parallel num_threads(2)
    {
      auto* v = new std::vector<int>(5);  // two allocations: the vector and its elements
#pragma omp critical
      {
        g_escape = v;
        delete g_escape;
      }
    }
    news = count.count();
  }
  EXPECT_GE(news, 2);
}

}  // namespace
