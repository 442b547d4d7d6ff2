// The skinny float GEMM kernels (backend/cpu/skinny_gemm.hpp), each instruction set this
// machine has, against a double-precision reference: every shape family (small k, small n as
// broadcasts and as dot products, few rows, outer products with either side small), odd sizes
// around the vector width and the tile heights, strided views whose gaps must stay untouched, alpha
// and beta (beta = 0 over a C full of NaN), the limit kSkinnyMax, thread counts that must not
// change a single bit, and no heap allocation.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#define PEFT_COUNTING_NEW_CLASS_ONLY  // gemm_staging_test.cpp defines the counting new
#include "backend/counting_new.hpp"
#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::Cpu;
using peft::CpuContextOptions;
using peft::index_t;
using peft::MatrixView;
using peft::Op;
using peft::cpu::detail::kSkinnyMax;
using peft::cpu::detail::skinny_gemm;
using peft::cpu::detail::skinny_isa_supported;
using peft::cpu::detail::SkinnyIsa;
using Operand = peft::primtest::Strided<float>;

/// The instruction sets to test: those this machine runs (none: the test says so and passes).
std::vector<SkinnyIsa> isas() {
  std::vector<SkinnyIsa> out;
  for (SkinnyIsa isa : {SkinnyIsa::avx2, SkinnyIsa::avx512})
    if (skinny_isa_supported(isa)) out.push_back(isa);
  return out;
}

const char* name(SkinnyIsa isa) {
  return isa == SkinnyIsa::avx512 ? "avx512" : "avx2";
}

struct Case {
  Op op_a, op_b;
  index_t m, n, k;
  float alpha, beta;
  bool strided;
};

std::string describe(const Case& c, SkinnyIsa isa) {
  return std::string(name(isa)) + " op_a=" + (c.op_a == Op::N ? "N" : "T") +
         " op_b=" + (c.op_b == Op::N ? "N" : "T") + " m=" + std::to_string(c.m) +
         " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta) +
         (c.strided ? " strided" : "");
}

/// Runs one case through the kernel of `isa` and checks every element of C against the double
/// reference to a bound proportional to the sum of |terms| (fp32 summation error), and that the
/// gaps of every strided operand kept their values. Returns false if the kernel declined.
bool check_case(const Case& c, SkinnyIsa isa, std::mt19937& gen, int threads = 2) {
  Context<Cpu> ctx(CpuContextOptions{threads});
  const index_t ar = c.op_a == Op::N ? c.m : c.k, ac = c.op_a == Op::N ? c.k : c.m;
  const index_t br = c.op_b == Op::N ? c.k : c.n, bc = c.op_b == Op::N ? c.n : c.k;
  Operand a(ar, ac, c.strided, gen), b(br, bc, c.strided, gen);
  Operand out(c.m, c.n, c.strided, gen, -7.0);
  std::vector<double> before(std::size_t(c.m * c.n));
  for (index_t i = 0; i < c.m; ++i)
    for (index_t j = 0; j < c.n; ++j) {
      if (c.beta == 0.0f) out.view(i, j) = std::nanf("");  // must not be read
      before[std::size_t(i * c.n + j)] = out.view(i, j);
    }
  if (!skinny_gemm(ctx, c.op_a, c.op_b, c.alpha, a.cview(), b.cview(), c.beta, out.view, c.k, isa))
    return false;
  const std::string what = describe(c, isa);
  double worst = 0;
  for (index_t i = 0; i < c.m; ++i)
    for (index_t j = 0; j < c.n; ++j) {
      double sum = 0, size = 0;
      for (index_t l = 0; l < c.k; ++l) {
        const double x = c.op_a == Op::N ? a.view(i, l) : a.view(l, i);
        const double y = c.op_b == Op::N ? b.view(l, j) : b.view(j, l);
        sum += x * y;
        size += std::abs(x * y);
      }
      const double old = before[std::size_t(i * c.n + j)];
      const double kept = c.beta == 0.0f ? 0.0 : c.beta * old;  // old is NaN when beta = 0
      const double expected = c.alpha * sum + kept;
      const double bound =
          4e-7 * double(c.k + 2) * (std::abs(c.alpha) * size + std::abs(kept)) + 1e-30;
      const double err = std::abs(double(out.view(i, j)) - expected);
      if (!(err <= bound)) {
        ADD_FAILURE() << what << ": C(" << i << ", " << j << ") = " << out.view(i, j)
                      << ", expected " << expected << " (bound " << bound << ")";
        return true;
      }
      worst = std::max(worst, err / bound);
    }
  EXPECT_TRUE(a.gaps_untouched() && b.gaps_untouched()) << what << ": an operand was written";
  EXPECT_TRUE(out.gaps_untouched()) << what << ": C was written outside its view";
  return true;
}

TEST(SkinnyGemm, EveryShapeFamilyAgainstDoubleReference) {
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(11);
  // Sizes around the vector widths (8, 16), the register tiles (3..16 rows, 48-float blocks)
  // and the small limit.
  const index_t smalls[] = {1, 3, 8, 13, 16, 17, 33, 64, 100, 128};
  const index_t larges[] = {1, 5, 16, 47, 49, 130, 300};
  for (SkinnyIsa isa : isas()) {
    int cases = 0;
    for (index_t s : smalls)
      for (index_t l : larges) {
        const index_t l2 = l + 7;
        const float alpha = (cases % 3 == 0) ? 1.0f : -0.75f;
        const float beta = cases % 4 == 0 ? 0.0f : cases % 4 == 1 ? 1.0f : 0.5f;
        const bool strided = cases % 2 == 1;
        // small_k: X [l, s] op(Y), op(Y) = [s, l2]
        for (Op ob : {Op::N, Op::T}) {
          EXPECT_TRUE(check_case({Op::N, ob, l, l2, s, alpha, beta, strided}, isa, gen));
          // small_n (k larger than the small limit, so small_k does not take it)
          EXPECT_TRUE(
              check_case({Op::N, ob, l, s, kSkinnyMax + l2, alpha, beta, strided}, isa, gen));
        }
        // few rows: C [s, l'] = X op(Y) with l' and the depth above the small limit
        if (s <= peft::cpu::detail::kDotsMax) {
          for (Op ob : {Op::N, Op::T})
            EXPECT_TRUE(check_case(
                {Op::N, ob, s, kSkinnyMax + l, kSkinnyMax + l2, alpha, beta, strided}, isa, gen));
        }
        // outer products, the small side A or B
        EXPECT_TRUE(
            check_case({Op::T, Op::N, s, kSkinnyMax + l, l2, alpha, beta, strided}, isa, gen));
        EXPECT_TRUE(
            check_case({Op::T, Op::N, kSkinnyMax + l, s, l2, alpha, beta, strided}, isa, gen));
        ++cases;
      }
  }
}

TEST(SkinnyGemm, LowRankShapesOfALayer) {
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(12);
  const index_t n = 67, in = 190, out = 150;
  for (SkinnyIsa isa : isas())
    for (index_t r : {4, 16, 24}) {
      EXPECT_TRUE(check_case({Op::N, Op::T, n, r, in, 1.0f, 0.0f, false}, isa, gen));   // x Aᵀ
      EXPECT_TRUE(check_case({Op::N, Op::T, n, out, r, 2.0f, 1.0f, false}, isa, gen));  // xa Bᵀ
      EXPECT_TRUE(check_case({Op::T, Op::N, out, r, n, 2.0f, 1.0f, false}, isa, gen));  // dB
      EXPECT_TRUE(check_case({Op::N, Op::N, n, r, out, 2.0f, 0.0f, false}, isa, gen));  // dxa
      EXPECT_TRUE(check_case({Op::T, Op::N, r, in, n, 1.0f, 1.0f, false}, isa, gen));   // dA
      EXPECT_TRUE(check_case({Op::N, Op::N, n, in, r, 1.0f, 1.0f, false}, isa, gen));   // dx
    }
}

TEST(SkinnyGemm, DeclinesShapesItDoesNotServe) {
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(13);
  const index_t big = kSkinnyMax + 1;
  for (SkinnyIsa isa : isas()) {
    // Every dimension above the limit, and the transposed-A shapes other than Aᵀ B.
    EXPECT_FALSE(check_case({Op::N, Op::N, big, big, big, 1.0f, 0.0f, false}, isa, gen));
    EXPECT_FALSE(check_case({Op::T, Op::T, 8, 8, 8, 1.0f, 0.0f, false}, isa, gen));
    EXPECT_FALSE(check_case({Op::T, Op::N, big, big, 8, 1.0f, 0.0f, false}, isa, gen));
  }
  // No instruction set: always declined, C untouched.
  Context<Cpu> ctx;
  Operand a(4, 4, false, gen), b(4, 4, false, gen), c(4, 4, false, gen);
  const float c00 = c.view(0, 0);
  EXPECT_FALSE(
      skinny_gemm(ctx, Op::N, Op::N, 1.0f, a.cview(), b.cview(), 0.0f, c.view, 4, SkinnyIsa::none));
  EXPECT_EQ(c.view(0, 0), c00);
}

TEST(SkinnyGemm, ThreadCountDoesNotChangeABit) {
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(14);
  // Large enough to run on several threads (above kSkinnyParallelFma).
  const index_t n = 300, in = 1100, r = 16;
  const std::tuple<Op, Op, index_t, index_t, index_t> shapes[] = {
      {Op::N, Op::T, n, r, in},  {Op::N, Op::T, n, in, r},      {Op::T, Op::N, in, r, n},
      {Op::N, Op::N, n, r, in},  {Op::T, Op::N, r, in, n},      {Op::N, Op::N, n, in, r},
      {Op::N, Op::N, n, 64, in}, {Op::N, Op::T, r, in, 2 * in}, {Op::N, Op::N, r, in, 2 * in}};
  for (SkinnyIsa isa : isas())
    for (const auto& [oa, ob, m, nn, k] : shapes) {
      const index_t ar = oa == Op::N ? m : k, ac = oa == Op::N ? k : m;
      const index_t br = ob == Op::N ? k : nn, bc = ob == Op::N ? nn : k;
      Operand a(ar, ac, false, gen), b(br, bc, false, gen);
      std::vector<std::vector<float>> results;
      for (int threads : {1, 2, 3}) {
        Context<Cpu> ctx(CpuContextOptions{threads});
        Operand c(m, nn, false, gen);
        ASSERT_TRUE(skinny_gemm(ctx, oa, ob, 0.5f, a.cview(), b.cview(), 0.0f, c.view, k, isa));
        results.emplace_back(c.view.data(), c.view.data() + m * nn);
      }
      EXPECT_EQ(results[0], results[1]) << name(isa) << " m=" << m << " n=" << nn << " k=" << k;
      EXPECT_EQ(results[0], results[2]) << name(isa) << " m=" << m << " n=" << nn << " k=" << k;
    }
}

TEST(SkinnyGemm, AllocatesNothing) {
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(15);
  Context<Cpu> ctx(CpuContextOptions{2});
  Operand x(200, 900, false, gen), a(16, 900, false, gen), xa(200, 16, false, gen);
  Operand dy(200, 700, false, gen), b(700, 16, false, gen), db(700, 16, false, gen);
  Operand y(200, 700, false, gen);
  for (SkinnyIsa isa : isas()) {
    // Warm up OpenMP's thread pool, then count.
    skinny_gemm(ctx, Op::N, Op::T, 1.0f, x.cview(), a.cview(), 0.0f, xa.view, 900, isa);
    peft::test::CountNew news;
    skinny_gemm(ctx, Op::N, Op::T, 1.0f, x.cview(), a.cview(), 0.0f, xa.view, 900, isa);
    skinny_gemm(ctx, Op::N, Op::T, 1.0f, xa.cview(), b.cview(), 0.0f, y.view, 16, isa);
    skinny_gemm(ctx, Op::T, Op::N, 1.0f, dy.cview(), xa.cview(), 1.0f, db.view, 200, isa);
    EXPECT_EQ(news.count(), 0) << name(isa);
  }
}

TEST(SkinnyGemm, TheLibraryGemmTakesItForFloat) {
  // peft::cpu::gemm routes an r-wide float product here: the same bits as a direct call.
  if (isas().empty()) GTEST_SKIP() << "this machine has neither AVX2 nor AVX-512";
  std::mt19937 gen(16);
  Context<Cpu> ctx(CpuContextOptions{2});
  Operand x(90, 300, false, gen), a(16, 300, false, gen), c1(90, 16, false, gen),
      c2(90, 16, false, gen);
  peft::cpu::gemm(ctx, Op::N, Op::T, 1.0, x.cview(), a.cview(), 0.0, c1.view);
  ASSERT_TRUE(skinny_gemm(ctx, Op::N, Op::T, 1.0f, x.cview(), a.cview(), 0.0f, c2.view, 300,
                          peft::cpu::detail::best_skinny_isa()));
  for (index_t i = 0; i < 90; ++i)
    for (index_t j = 0; j < 16; ++j) ASSERT_EQ(c1.view(i, j), c2.view(i, j));
}

}  // namespace
