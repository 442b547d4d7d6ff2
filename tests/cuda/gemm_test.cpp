// peft::gpu::gemm against the CPU primitive: all four transpose combinations, alpha and beta,
// beta = 0 over a NaN-filled C, k = 0, odd and random shapes, strided views (blocks of larger
// device matrices whose NaN gaps poison any stray read), and float, double, __half and
// __nv_bfloat16 (16-bit inputs also with a float C).

#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

struct GemmTypes {
  DType ab;  // A and B
  DType c;
};

std::string label(const GemmTypes& t) {
  return std::string(name(t.ab)) + (t.ab == t.c ? "" : std::string("_") + name(t.c));
}

void PrintTo(const GemmTypes& t, std::ostream* os) {
  *os << label(t);
}

class CudaGemm : public CudaTest, public ::testing::WithParamInterface<GemmTypes> {};

HostMatrix absolute(HostView m) {
  HostMatrix out(m.rows(), m.cols());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.view()(i, j) = std::abs(m(i, j));
  return out;
}

const char* op_name(Op op) {
  return op == Op::N ? "N" : "T";
}

/// Runs the device gemm on values rounded to the dtypes and compares it with the CPU gemm in
/// double on the same values, element by element, within the standard bound
///   |c − ref| <= 4 (k + 4) u_acc (|alpha| |op(A)| |op(B)| + |beta| |C0|) + 2 u_out |ref|
/// (u_acc: fp32 accumulation, fp64 for double; u_out: the rounding of C). A wrong operand, a
/// wrong stride or a misread transpose is off by O(1) instead.
void check_gemm(const GemmTypes& t, Op op_a, Op op_b, index_t m, index_t n, index_t k, double alpha,
                double beta, bool strided, std::uint32_t seed) {
  SCOPED_TRACE(peft::detail::concat("gemm ", label(t), " ", op_name(op_a), op_name(op_b), " m=", m,
                                    " n=", n, " k=", k, " alpha=", alpha, " beta=", beta,
                                    strided ? " strided" : ""));
  const HostMatrix a = random_matrix(t.ab, op_a == Op::N ? m : k, op_a == Op::N ? k : m, seed);
  const HostMatrix b = random_matrix(t.ab, op_b == Op::N ? k : n, op_b == Op::N ? n : k, seed + 1);
  // beta = 0: C starts as NaN and must not be read.
  const HostMatrix c0 = beta == 0 ? filled(m, n, kNaN) : random_matrix(t.c, m, n, seed + 2);

  DeviceMatrix da(t.ab, a.view(), strided), db(t.ab, b.view(), strided);
  DeviceMatrix dc(t.c, c0.view(), strided);
  gemm(op_a, op_b, alpha, da, db, beta, dc);
  const HostMatrix got = dc.download();

  HostCtx ctx;
  HostMatrix ref = beta == 0 ? filled(m, n, 0.0) : copy_of(c0.view());
  cpu::gemm(ctx, op_a, op_b, alpha, a.view(), b.view(), beta, ref.view());
  HostMatrix bound = beta == 0 ? filled(m, n, 0.0) : absolute(c0.view());
  const HostMatrix abs_a = absolute(a.view()), abs_b = absolute(b.view());
  cpu::gemm(ctx, op_a, op_b, std::abs(alpha), abs_a.view(), abs_b.view(), std::abs(beta),
            bound.view());

  const double u_acc = t.ab == DType::f64 ? 0x1.0p-53 : 0x1.0p-24;
  const double u_out = unit_roundoff(t.c);
  int bad = 0;
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      const double g = got.view()(i, j), r = ref.view()(i, j);
      const double tol =
          4.0 * double(k + 4) * u_acc * bound.view()(i, j) + 2.0 * u_out * std::abs(r);
      if (!(std::abs(g - r) <= tol) && bad++ < 5)
        ADD_FAILURE() << "C(" << i << ", " << j << ") = " << g << ", expected " << r << " +- "
                      << tol;
    }
  EXPECT_EQ(bad, 0) << bad << " of " << m * n << " elements outside the bound";
  EXPECT_TRUE(da.gaps_untouched());
  EXPECT_TRUE(db.gaps_untouched());
  EXPECT_TRUE(dc.gaps_untouched()) << "gemm wrote outside C";
}

constexpr Op kOps[] = {Op::N, Op::T};

// (alpha, beta) pairs, all exact in every dtype (the device rounds alpha and beta to float).
constexpr std::pair<double, double> kScalars[] = {
    {1.0, 0.0}, {-0.75, 1.0}, {1.5, -0.5}, {0.5, 0.0}};

TEST_P(CudaGemm, OddShapesAllTransposesContiguousAndStrided) {
  const GemmTypes t = GetParam();
  // (m, n, k) from the odd sizes 1, 3, 17, 129.
  const std::tuple<index_t, index_t, index_t> shapes[] = {
      {1, 1, 1},    {3, 17, 129}, {17, 129, 3}, {129, 3, 17},
      {17, 17, 17}, {1, 129, 17}, {129, 1, 3},  {129, 129, 129},
  };
  std::uint32_t seed = 1;
  int s = 0;
  for (const auto& [m, n, k] : shapes)
    for (Op op_a : kOps)
      for (Op op_b : kOps)
        for (bool strided : {false, true}) {
          const auto [alpha, beta] = kScalars[s++ % 4];
          check_gemm(t, op_a, op_b, m, n, k, alpha, beta, strided, seed += 3);
        }
}

TEST_P(CudaGemm, RandomShapes) {
  const GemmTypes t = GetParam();
  std::mt19937 gen(7);
  std::uniform_int_distribution<index_t> size(1, 160);
  for (int trial = 0; trial < 24; ++trial) {
    const index_t m = size(gen), n = size(gen), k = size(gen);
    const auto [alpha, beta] = kScalars[trial % 4];
    check_gemm(t, kOps[trial % 2], kOps[(trial / 2) % 2], m, n, k, alpha, beta, trial % 3 == 0,
               static_cast<std::uint32_t>(100 + 3 * trial));
  }
}

TEST_P(CudaGemm, BetaZeroOverNaNDoesNotPropagate) {
  const GemmTypes t = GetParam();
  for (Op op_a : kOps)
    for (Op op_b : kOps)
      for (bool strided : {false, true}) {
        check_gemm(t, op_a, op_b, 17, 33, 9, 1.0, 0.0, strided, 500);
        // An explicit check besides the bound: every element finite.
        const HostMatrix a = random_matrix(t.ab, 17, 9, 1), b = random_matrix(t.ab, 9, 33, 2);
        DeviceMatrix da(t.ab, a.view(), strided), db(t.ab, b.view(), strided);
        DeviceMatrix dc(t.c, 17, 33, strided);  // all NaN
        gemm(Op::N, Op::N, 2.0, da, db, 0.0, dc);
        EXPECT_TRUE(all_finite(dc)) << "NaN of C propagated through beta = 0";
      }
}

TEST_P(CudaGemm, InnerDimensionZero) {
  // No products: C = beta C (zero for beta = 0, even over NaN), as the CPU gemm does.
  const GemmTypes t = GetParam();
  for (Op op_a : kOps)
    for (Op op_b : kOps)
      for (const double beta : {0.0, 0.5, 1.0}) {
        check_gemm(t, op_a, op_b, 3, 17, 0, 1.0, beta, false, 900);
        check_gemm(t, op_a, op_b, 3, 17, 0, 1.0, beta, true, 901);
      }
}

TEST_P(CudaGemm, EmptyOutputIsANoOp) {
  const GemmTypes t = GetParam();
  DeviceMatrix a(t.ab, filled(0, 5, 1.0).view()), b(t.ab, filled(5, 7, 1.0).view());
  DeviceMatrix c(t.c, 0, 7);
  gemm(Op::N, Op::N, 1.0, a, b, 0.0, c);
  EXPECT_EQ(c.download().size(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Types, CudaGemm,
    ::testing::Values(GemmTypes{DType::f32, DType::f32}, GemmTypes{DType::f64, DType::f64},
                      GemmTypes{DType::f16, DType::f16}, GemmTypes{DType::bf16, DType::bf16},
                      GemmTypes{DType::f16, DType::f32}, GemmTypes{DType::bf16, DType::f32}),
    [](const auto& info) { return label(info.param); });

}  // namespace
}  // namespace peft::gpu::test
