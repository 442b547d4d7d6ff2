// The sparse primitives of peft::gpu against the CPU ones on the same (rounded) values:
// spmm (op T and N; float, double, __half, __nv_bfloat16) and its SparseCache across shapes,
// values and patterns; sddmm (all four transpose combinations; float and double values, 16-bit
// inputs staged through fp32); add_sparse_to_dense, gather and accumulate_squares (every pair
// of element types); csr_transpose_pattern (bit-identical pattern and permutation);
// topk_pattern (the identical pattern, ties included; k = 0 and k = all; non-finite scores
// throw). Random patterns with empty rows and columns, odd sizes, strided dense views (blocks of
// larger device matrices whose NaN gaps poison any stray read and show any stray write).
//
// Floating-point results are checked element by element within the standard bound
//   |got − ref| <= 4 (k + 4) u_acc (|alpha| |op(A)| |op(B)| + |beta| |C0|) + 2 u_out |ref|
// (u_acc: fp32 accumulation, fp64 for double; u_out: the rounding of the output), as in
// gemm_test.cpp; a wrong index, stride or transpose is off by O(1) instead.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/sparse_reference.hpp"

namespace peft::gpu::test {
namespace {

const char* op_name(Op op) {
  return op == Op::N ? "N" : "T";
}

/// `extra` more entries than the pattern holds, as far as the matrix has room.
index_t room(const CsrPattern& p, index_t extra) {
  return std::min(extra, p.rows * p.cols - p.nnz());
}

// (alpha, beta) pairs, exact in every dtype. beta = 0 runs over a NaN-filled output, which must
// not be read (the CPU primitives' and BLAS's convention).
constexpr std::pair<double, double> kScalars[] = {
    {1.0, 0.0}, {-0.75, 1.0}, {1.5, -0.5}, {0.5, 0.0}};

struct SparseShape {
  index_t n, rows, cols;  // n rows of the dense operand; S is rows x cols
  double density;
};

// Odd sizes, an empty S (density 0), a full one (density 1), and a larger one with many
// empty rows and columns.
constexpr SparseShape kSparseShapes[] = {
    {1, 1, 1, 1.0},    {3, 17, 129, 0.1}, {17, 129, 3, 0.3},    {129, 3, 17, 0.5},
    {17, 33, 65, 0.0}, {2, 5, 7, 1.0},    {65, 129, 257, 0.02},
};

// ---- spmm ------------------------------------------------------------------------------------

class CudaSpmm : public CudaTest, public ::testing::WithParamInterface<DType> {};

/// y = alpha x op(S) + beta y on the device, against the CPU spmm in double.
void check_spmm(DType t, DeviceCsr& ds, const HostCsr& s, Op op, index_t n, double alpha,
                double beta, bool strided, std::uint32_t seed) {
  SCOPED_TRACE(peft::detail::concat("spmm ", name(t), " op ", op_name(op), " n=", n, " S ",
                                    s.pattern.rows, " x ", s.pattern.cols, " nnz ", s.pattern.nnz(),
                                    " alpha=", alpha, " beta=", beta, strided ? " strided" : ""));
  const index_t in = op == Op::T ? s.pattern.cols : s.pattern.rows;
  const index_t out = op == Op::T ? s.pattern.rows : s.pattern.cols;
  const HostMatrix x = random_matrix(t, n, in, seed);
  const HostMatrix y0 = beta == 0 ? filled(n, out, kNaN) : random_matrix(t, n, out, seed + 1);
  DeviceMatrix dx(t, x.view(), strided), dy(t, y0.view(), strided);
  spmm(alpha, dx, ds, op, beta, dy);
  const HostMatrix got = dy.download();

  HostCtx ctx;
  SparseCache<Cpu> cache;
  const HostCsr st = s.transposed();
  HostMatrix ref = beta == 0 ? filled(n, out, 0.0) : copy_of(y0.view());
  cpu::spmm(ctx, alpha, x.view(), SparseOperand<double, Cpu>{s.view(), st.view(), &cache}, op, beta,
            ref.view());
  const HostCsr abs_s = s.absolute(), abs_st = st.absolute();
  const HostMatrix abs_x = absolute(x.view());
  HostMatrix bound = beta == 0 ? filled(n, out, 0.0) : absolute(y0.view());
  cpu::spmm(ctx, std::abs(alpha), abs_x.view(),
            SparseOperand<double, Cpu>{abs_s.view(), abs_st.view(), &cache}, op, std::abs(beta),
            bound.view());
  const double u_acc = accumulation_roundoff(t), u_out = unit_roundoff(t);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < out; ++j)
      bound.view()(i, j) = 4.0 * double(in + 4) * u_acc * bound.view()(i, j) +
                           2.0 * u_out * std::abs(ref.view()(i, j)) + underflow(t);
  expect_within(got.view(), ref.view(), bound.view(), "Y");
  EXPECT_TRUE(dy.gaps_untouched()) << "spmm wrote outside Y";
  EXPECT_TRUE(dx.gaps_untouched());
}

TEST_P(CudaSpmm, MatchesCpuOnRandomPatterns) {
  const DType t = GetParam();
  std::uint32_t seed = 10;
  int k = 0;
  for (const SparseShape& sh : kSparseShapes)
    for (Op op : {Op::T, Op::N})
      for (bool strided : {false, true}) {
        const HostCsr s = random_csr(t, random_pattern(sh.rows, sh.cols, sh.density, seed), seed);
        // Room for more entries than the pattern: values past nnz must not matter.
        DeviceCsr ds(t, s.pattern, s.values.view(), room(s.pattern, 2));
        const auto [alpha, beta] = kScalars[k++ % 4];
        check_spmm(t, ds, s, op, sh.n, alpha, beta, strided, seed += 7);
      }
}

TEST_P(CudaSpmm, CacheFollowsBatchStrideValuesAndPattern) {
  // One matrix, so one SparseCache, through calls that each invalidate something the cache
  // holds: the batch size and the leading dimensions (the SpMM preprocessing), the orientation,
  // the values (the descriptors point at them) and the pattern (set_pattern drops the cache).
  const DType t = GetParam();
  const index_t rows = 33, cols = 17;
  const CsrPattern p1 = random_pattern(rows, cols, 0.3, 1);
  HostCsr s = random_csr(t, p1, 2);
  DeviceCsr ds(t, rows, cols, rows * cols);
  ds.set_pattern(p1);
  ds.set_values(s.values.view());
  check_spmm(t, ds, s, Op::T, 17, 1.0, 1.0, false, 3);
  check_spmm(t, ds, s, Op::T, 17, 1.0, 1.0, false, 4);  // the same shape again: cached
  check_spmm(t, ds, s, Op::T, 5, 1.0, 1.0, true, 5);    // another batch and stride
  check_spmm(t, ds, s, Op::N, 5, -0.5, 0.0, true, 6);
  check_spmm(t, ds, s, Op::N, 40, 1.0, 1.0, false, 7);
  s = random_csr(t, p1, 8);  // new values, same arrays
  ds.set_values(s.values.view());
  check_spmm(t, ds, s, Op::T, 5, 1.0, 1.0, true, 9);
  check_spmm(t, ds, s, Op::N, 40, 1.0, 1.0, false, 10);
  s = random_csr(t, random_pattern(rows, cols, 0.6, 11), 12);  // a new pattern, more entries
  ds.set_pattern(s.pattern);
  ds.set_values(s.values.view());
  check_spmm(t, ds, s, Op::T, 5, 1.0, 1.0, true, 13);
  check_spmm(t, ds, s, Op::N, 40, 1.0, 1.0, false, 14);
  s = random_csr(t, CsrPattern{rows, cols, std::vector<std::int32_t>(rows + 1, 0), {}}, 15);
  ds.set_pattern(s.pattern);  // empty: y = beta y
  check_spmm(t, ds, s, Op::T, 5, 1.0, -0.5, true, 16);
  check_spmm(t, ds, s, Op::N, 5, 1.0, 0.0, false, 17);
}

TEST_P(CudaSpmm, CacheFollowsIndexArrays) {
  // One SparseCache and one value array (for S and one for Sᵀ), through matrices of one shape
  // and nnz whose index arrays differ: a descriptor keyed on the values pointer, shape and nnz
  // alone would keep multiplying by the first pattern (cuSPARSE lets only the values change
  // between SpMM preprocessing and compute).
  const DType t = GetParam();
  const index_t rows = 29, cols = 23, nnz = 97, n = 7;
  const CsrPattern p1 = pattern_with(rows, cols, nnz, 1);
  const CsrPattern p2 = pattern_with(rows, cols, nnz, 2, false);
  const CsrPattern p3 = pattern_with(rows, cols, nnz, 3);
  ASSERT_NE(p1.col_indices, p2.col_indices);
  ASSERT_NE(p1.col_indices, p3.col_indices);
  const HostCsr s1 = random_csr(t, p1, 4), s2 = random_csr(t, p2, 5), s3 = random_csr(t, p3, 6);
  const HostCsr s1t = s1.transposed(), s2t = s2.transposed(), s3t = s3.transposed();
  const CsrWithTranspose order[] = {
      {&s1.pattern, s1.values.view(), &s1t.pattern, s1t.values.view()},
      {&s2.pattern, s2.values.view(), &s2t.pattern, s2t.values.view()},
      {&s1.pattern, s1.values.view(), &s1t.pattern, s1t.values.view()},
      {&s3.pattern, s3.values.view(), &s3t.pattern, s3t.values.view()},
  };
  const HostCsr* expected_s[] = {&s1, &s2, &s1, &s3};
  for (Op op : {Op::T, Op::N}) {
    const index_t in = op == Op::T ? cols : rows, out = op == Op::T ? rows : cols;
    const HostMatrix x = random_matrix(t, n, in, 7);
    const HostMatrix y0 = random_matrix(t, n, out, 8);
    const double alpha = 1.0, beta = -0.5;
    const std::vector<HostMatrix> got =
        spmm_through_one_cache(t, order, op, alpha, x.view(), beta, y0.view());
    ASSERT_EQ(got.size(), std::size(order));
    for (std::size_t i = 0; i < got.size(); ++i) {
      SCOPED_TRACE(peft::detail::concat("call ", i, " op ", op_name(op)));
      HostCtx ctx;
      SparseCache<Cpu> cache;
      const HostCsr& s = *expected_s[i];
      const HostCsr st = s.transposed();
      HostMatrix ref = copy_of(y0.view());
      cpu::spmm(ctx, alpha, x.view(), SparseOperand<double, Cpu>{s.view(), st.view(), &cache}, op,
                beta, ref.view());
      const HostCsr abs_s = s.absolute(), abs_st = st.absolute();
      const HostMatrix abs_x = absolute(x.view());
      HostMatrix bound = absolute(y0.view());
      cpu::spmm(ctx, std::abs(alpha), abs_x.view(),
                SparseOperand<double, Cpu>{abs_s.view(), abs_st.view(), &cache}, op, std::abs(beta),
                bound.view());
      for (index_t e = 0; e < bound.size(); ++e)
        bound.data()[e] = 4.0 * double(in + 4) * accumulation_roundoff(t) * bound.data()[e] +
                          2.0 * unit_roundoff(t) * std::abs(ref.data()[e]) + underflow(t);
      expect_within(got[i].view(), ref.view(), bound.view(), "Y");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaSpmm, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(name(info.param)); });

// ---- sddmm -----------------------------------------------------------------------------------

struct SddmmTypes {
  DType ab;  // A and B
  DType v;   // the values of S
};

std::string label(const SddmmTypes& t) {
  return std::string(name(t.ab)) + "_into_" + name(t.v);
}

void PrintTo(const SddmmTypes& t, std::ostream* os) {
  *os << label(t);
}

class CudaSddmm : public CudaTest, public ::testing::WithParamInterface<SddmmTypes> {};

void check_sddmm(const SddmmTypes& t, Op op_a, Op op_b, index_t m, index_t k, index_t n,
                 double density, double alpha, double beta, bool strided, std::uint32_t seed) {
  SCOPED_TRACE(peft::detail::concat("sddmm ", label(t), " ", op_name(op_a), op_name(op_b), " m=", m,
                                    " k=", k, " n=", n, " density ", density, " alpha=", alpha,
                                    " beta=", beta, strided ? " strided" : ""));
  const HostMatrix a = random_matrix(t.ab, op_a == Op::N ? m : k, op_a == Op::N ? k : m, seed);
  const HostMatrix b = random_matrix(t.ab, op_b == Op::N ? k : n, op_b == Op::N ? n : k, seed + 1);
  const CsrPattern p = random_pattern(m, n, density, seed + 2);
  // beta = 0: S starts as NaN, which must not be read (cuSPARSE computes beta C even then, and
  // 0 NaN is NaN: the primitive zeroes the values first).
  const HostCsr s0 =
      beta == 0 ? HostCsr{p, filled(1, p.nnz(), kNaN)} : random_csr(t.v, p, seed + 3, 1.0);
  DeviceMatrix da(t.ab, a.view(), strided), db(t.ab, b.view(), strided);
  DeviceCsr ds(t.v, p, s0.values.view(), room(p, 3));
  sddmm(alpha, op_a, da, op_b, db, beta, ds);
  const HostMatrix all = ds.values();
  ASSERT_EQ(all.cols(), p.nnz() + room(p, 3));
  HostMatrix got(1, p.nnz());
  for (index_t e = 0; e < p.nnz(); ++e) got.data()[e] = all.data()[e];
  for (index_t e = p.nnz(); e < all.cols(); ++e)
    EXPECT_EQ(all.data()[e], 0.0) << "sddmm wrote past nnz, at " << e;

  HostCtx ctx;
  HostCsr ref{p, beta == 0 ? filled(1, p.nnz(), 0.0) : copy_of(s0.values.view())};
  cpu::sddmm(ctx, alpha, op_a, a.view(), op_b, b.view(), beta,
             CsrView<double, Cpu>{p.rows, p.cols, p.nnz(), p.row_offsets.data(),
                                  p.col_indices.data(), ref.values.data()});
  const HostMatrix abs_a = absolute(a.view()), abs_b = absolute(b.view());
  HostMatrix bound = beta == 0 ? filled(1, p.nnz(), 0.0) : absolute(s0.values.view());
  cpu::sddmm(ctx, std::abs(alpha), op_a, abs_a.view(), op_b, abs_b.view(), std::abs(beta),
             CsrView<double, Cpu>{p.rows, p.cols, p.nnz(), p.row_offsets.data(),
                                  p.col_indices.data(), bound.data()});
  const double u_acc = accumulation_roundoff(t.v), u_out = unit_roundoff(t.v);
  for (index_t e = 0; e < p.nnz(); ++e)
    bound.data()[e] = 4.0 * double(k + 4) * u_acc * bound.data()[e] +
                      2.0 * u_out * std::abs(ref.values.data()[e]) + underflow(t.v);
  expect_within(got.view(), ref.values.view(), bound.view(), "values(S)");
  EXPECT_TRUE(da.gaps_untouched());
  EXPECT_TRUE(db.gaps_untouched());
}

TEST_P(CudaSddmm, AllTransposesMatchCpu) {
  const SddmmTypes t = GetParam();
  // (m, k, n): S is m x n, the inner dimension k.
  // k = 0 is a batch without rows (dS of an empty batch): values = beta values.
  const std::tuple<index_t, index_t, index_t, double> shapes[] = {
      {1, 1, 1, 1.0},    {17, 3, 129, 0.2}, {129, 17, 3, 0.5},    {3, 129, 17, 0.3},
      {33, 65, 17, 0.0}, {5, 7, 9, 1.0},    {257, 40, 129, 0.03}, {17, 0, 33, 0.3},
  };
  std::uint32_t seed = 100;
  int s = 0;
  for (const auto& [m, k, n, density] : shapes)
    for (Op op_a : {Op::T, Op::N})
      for (Op op_b : {Op::N, Op::T})
        for (bool strided : {false, true}) {
          const auto [alpha, beta] = kScalars[s++ % 4];
          check_sddmm(t, op_a, op_b, m, k, n, density, alpha, beta, strided, seed += 5);
        }
}

TEST_P(CudaSddmm, RosaGradientAccumulates) {
  // RoSA's dS += (dyᵀ x) ⊙ mask, twice: op(A) = Aᵀ, op(B) = B, beta = 1.
  const SddmmTypes t = GetParam();
  check_sddmm(t, Op::T, Op::N, 65, 129, 33, 0.1, 1.0, 1.0, true, 7);
  check_sddmm(t, Op::T, Op::N, 65, 1, 33, 0.1, 1.0, 1.0, false, 8);
}

TEST_P(CudaSddmm, EmptyInnerDimensionScalesValues) {
  // k = 0 (Rosa::backward on a batch of 0 rows): no products, values = beta values, as on the
  // CPU; cuSPARSE must not see the zero-width dense operands (null data).
  const SddmmTypes t = GetParam();
  std::uint32_t seed = 150;
  for (Op op_a : {Op::T, Op::N})
    for (Op op_b : {Op::N, Op::T})
      for (const double beta : {0.0, 1.0, -0.75, 0.5})
        for (bool strided : {false, true})
          check_sddmm(t, op_a, op_b, 33, 0, 17, 0.3, 1.5, beta, strided, seed += 5);
}

TEST_P(CudaSddmm, BetaZeroOverwritesNaN) {
  // With beta = 0 the old values are not read: NaN in them (a fresh or poisoned gradient)
  // must not survive, in every transpose combination (RoSA's is Aᵀ B).
  const SddmmTypes t = GetParam();
  std::uint32_t seed = 170;
  for (Op op_a : {Op::T, Op::N})
    for (Op op_b : {Op::N, Op::T}) {
      check_sddmm(t, op_a, op_b, 65, 33, 129, 0.1, 1.0, 0.0, false, seed += 5);
      check_sddmm(t, op_a, op_b, 17, 1, 5, 1.0, -0.5, 0.0, true, seed += 5);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Types, CudaSddmm,
    ::testing::Values(SddmmTypes{DType::f32, DType::f32}, SddmmTypes{DType::f64, DType::f64},
                      SddmmTypes{DType::f16, DType::f32}, SddmmTypes{DType::bf16, DType::f32},
                      SddmmTypes{DType::f32, DType::f64}, SddmmTypes{DType::bf16, DType::f64}),
    [](const auto& info) { return label(info.param); });

// ---- add_sparse_to_dense, gather, accumulate_squares ------------------------------------------

using TypePair = std::tuple<DType, DType>;

std::string pair_label(const ::testing::TestParamInfo<TypePair>& info) {
  return std::string(name(std::get<0>(info.param))) + "_" + name(std::get<1>(info.param));
}

class CudaSparseHelpers : public CudaTest, public ::testing::WithParamInterface<TypePair> {};

TEST_P(CudaSparseHelpers, AddSparseToDenseMatchesCpu) {
  const auto [tv, tt] = GetParam();  // S's values, the dense matrix
  std::uint32_t seed = 200;
  for (const SparseShape& sh : kSparseShapes)
    for (bool transposed : {false, true})
      for (bool strided : {false, true}) {
        for (double alpha : {1.0, -2.0}) {
          SCOPED_TRACE(peft::detail::concat(
              "add_sparse_to_dense S ", name(tv), " ", sh.rows, " x ", sh.cols, " into ", name(tt),
              transposed ? " transposed" : "", " alpha=", alpha, strided ? " strided" : ""));
          seed += 2;
          const HostCsr s =
              random_csr(tv, random_pattern(sh.rows, sh.cols, sh.density, seed), seed + 1);
          const DeviceCsr ds(tv, s.pattern, s.values.view());
          const HostCsr op_s =
              transposed ? s.transposed() : HostCsr{s.pattern, copy_of(s.values.view())};
          const index_t rows = op_s.pattern.rows, cols = op_s.pattern.cols;
          const HostMatrix d0 = random_matrix(tt, rows, cols, ++seed);
          DeviceMatrix dd(tt, d0.view(), strided);
          add_sparse_to_dense(alpha, ds, transposed, dd);
          const HostMatrix got = dd.download();

          HostCtx ctx;
          HostMatrix ref = copy_of(d0.view());
          cpu::add_sparse_to_dense(ctx, alpha, op_s.view(), ref.view());
          // GPU: (d + alpha S) in float (double for a double matrix), rounded to the dtype.
          const double u_math = tt == DType::f64 ? 0x1.0p-53 : 0x1.0p-24;
          HostMatrix bound = absolute(d0.view());
          const HostCsr abs_s = op_s.absolute();
          cpu::add_sparse_to_dense(ctx, std::abs(alpha), abs_s.view(), bound.view());
          for (index_t i = 0; i < bound.size(); ++i)
            bound.data()[i] = 3.0 * (u_math + unit_roundoff(tt)) * bound.data()[i] + underflow(tt);
          // Entries outside the pattern keep their bits.
          Matrix<std::uint8_t, Cpu> in_pattern(rows, cols);
          for (index_t r = 0; r < rows; ++r)
            for (index_t e = op_s.pattern.row_offsets[r]; e < op_s.pattern.row_offsets[r + 1]; ++e)
              in_pattern.view()(r, op_s.pattern.col_indices[e]) = 1;
          for (index_t i = 0; i < rows; ++i)
            for (index_t j = 0; j < cols; ++j)
              if (in_pattern.view()(i, j) == 0) bound.view()(i, j) = 0.0;
          expect_within(got.view(), ref.view(), bound.view(), "dense");
          EXPECT_TRUE(dd.gaps_untouched()) << "add_sparse_to_dense wrote outside the matrix";
        }
      }
}

TEST_P(CudaSparseHelpers, GatherConvertsExactly) {
  const auto [ts, td] = GetParam();
  std::mt19937 gen(3);
  for (index_t m : {1, 7, 300}) {
    for (index_t k : {0, 1, 5, 1000}) {
      SCOPED_TRACE(peft::detail::concat("gather ", name(ts), " -> ", name(td), " m=", m, " k=", k));
      const HostMatrix src = random_matrix(ts, 1, m, std::uint32_t(m + k), 3.0);
      std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(m - 1));
      std::vector<std::int32_t> index(static_cast<std::size_t>(k));
      for (auto& i : index) i = pick(gen);  // repeats and any order
      const DeviceMatrix dsrc(ts, src.view(), true);
      DeviceMatrix ddst(td, 1, k, true);
      gather(dsrc, index, ddst);
      HostMatrix expected(1, k);
      for (index_t e = 0; e < k; ++e) expected.data()[e] = src.data()[index[std::size_t(e)]];
      EXPECT_TRUE(bitwise_equal(ddst.download().view(), round_to(td, expected.view()).view()));
      EXPECT_TRUE(ddst.gaps_untouched());
    }
  }
}

TEST_P(CudaSparseHelpers, AccumulateSquaresMatchesCpu) {
  const auto [ts, td] = GetParam();
  std::uint32_t seed = 300;
  for (const auto& [rows, cols] : kShapes)
    for (bool strided : {false, true}) {
      SCOPED_TRACE(describe(td, rows, cols, strided) + " += squares of " + name(ts));
      const HostMatrix src = random_matrix(ts, rows, cols, ++seed, 2.0);
      const HostMatrix d0 = random_matrix(td, rows, cols, ++seed);
      const DeviceMatrix dsrc(ts, src.view(), strided);
      DeviceMatrix ddst(td, d0.view(), strided);
      accumulate_squares(0.75, dsrc, ddst);
      accumulate_squares(-0.25, dsrc, ddst);
      HostCtx ctx;
      HostMatrix ref = copy_of(d0.view());
      cpu::accumulate_squares(ctx, 0.75, src.view(), ref.view());
      cpu::accumulate_squares(ctx, -0.25, src.view(), ref.view());
      // Per call: src converted to the math type of dst (float, or double), squared, scaled,
      // added and rounded to dst.
      const double u = (td == DType::f64 ? 0x1.0p-53 : 0x1.0p-24) + unit_roundoff(td);
      HostMatrix bound(rows, cols);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) {
          const double v = src.view()(i, j);
          bound.view()(i, j) = 8.0 * u * (std::abs(d0.view()(i, j)) + v * v) + underflow(td);
        }
      expect_within(ddst.download().view(), ref.view(), bound.view(), "dst");
      EXPECT_TRUE(ddst.gaps_untouched());
      EXPECT_TRUE(dsrc.gaps_untouched());
    }
}

TEST_P(CudaSparseHelpers, AccumulateSquaresAndAddSparseToDenseComputeInDoubleAsOnTheCpu) {
  // alpha = 0.1 is not a float: computed in float (alpha rounded, products rounded twice), the
  // results would differ from the CPU's (double, rounded once) in the last bit for a good share
  // of f32 elements, and RoSA masks built from accumulated squares could differ at near-ties.
  // Both compute in double: bit-identical results. The pattern clusters its entries in a few
  // full rows, as RoSA's masks do.
  const auto [ts, td] = GetParam();
  const double alpha = 0.1;
  const HostMatrix src = random_matrix(ts, 37, 129, 500, 3.0);
  const HostMatrix d0 = random_matrix(td, 37, 129, 501, 3.0);
  {
    SCOPED_TRACE(peft::detail::concat("accumulate_squares ", name(ts), " into ", name(td)));
    const DeviceMatrix dsrc(ts, src.view(), true);
    DeviceMatrix ddst(td, d0.view());
    accumulate_squares(alpha, dsrc, ddst);
    const HostMatrix expected = with_host_type(ts, [&](auto tag_s) {
      using TS = typename decltype(tag_s)::type;
      const auto s_typed = to_typed<TS>(src.view());
      return with_host_type(td, [&](auto tag_d) {
        using TD = typename decltype(tag_d)::type;
        auto d_typed = to_typed<TD>(d0.view());
        HostCtx ctx;
        cpu::accumulate_squares(ctx, alpha, as_const(s_typed.view()), d_typed.view());
        return to_double(as_const(d_typed.view()));
      });
    });
    EXPECT_TRUE(bitwise_equal(ddst.download().view(), expected.view()));
  }
  {
    SCOPED_TRACE(peft::detail::concat("add_sparse_to_dense ", name(ts), " into ", name(td)));
    Matrix<std::uint8_t, Cpu> mask(37, 129);
    for (index_t r : {3, 4, 30})  // three full rows, the others empty
      for (index_t c = 0; c < 129; ++c) mask.view()(r, c) = 1;
    const CsrPattern p = CsrPattern::from_mask(as_const(mask.view()));
    const HostCsr s = random_csr(ts, p, 502, 3.0);
    const DeviceCsr ds(ts, p, s.values.view());
    DeviceMatrix ddense(td, d0.view(), true);
    add_sparse_to_dense(alpha, ds, false, ddense);
    const HostMatrix expected = with_host_type(ts, [&](auto tag_s) {
      using TS = typename decltype(tag_s)::type;
      const auto v_typed = to_typed<TS>(s.values.view());
      return with_host_type(td, [&](auto tag_d) {
        using TD = typename decltype(tag_d)::type;
        auto d_typed = to_typed<TD>(d0.view());
        HostCtx ctx;
        const CsrView<const TS, Cpu> sv{
            p.rows, p.cols, p.nnz(), p.row_offsets.data(), p.col_indices.data(), v_typed.data()};
        cpu::add_sparse_to_dense(ctx, alpha, sv, d_typed.view());
        return to_double(as_const(d_typed.view()));
      });
    });
    EXPECT_TRUE(bitwise_equal(ddense.download().view(), expected.view()));
    EXPECT_TRUE(ddense.gaps_untouched());
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaSparseHelpers,
                         ::testing::Combine(::testing::ValuesIn(kAllTypes),
                                            ::testing::ValuesIn(kAllTypes)),
                         pair_label);

// ---- csr_transpose_pattern -------------------------------------------------------------------

class CudaSparsePatterns : public CudaTest {};

/// The CPU's transpose of a pattern: Sᵀ's pattern and the permutation.
PatternResult cpu_transpose(const CsrPattern& p) {
  HostCtx ctx;
  PatternResult r;
  r.pattern = CsrPattern{p.cols, p.rows, std::vector<std::int32_t>(std::size_t(p.cols + 1)),
                         std::vector<std::int32_t>(std::size_t(p.nnz()))};
  r.perm.resize(std::size_t(p.nnz()));
  const CsrView<const double, Cpu> view{
      p.rows, p.cols, p.nnz(), p.row_offsets.data(), p.col_indices.data(), nullptr};
  cpu::csr_transpose_pattern(
      ctx, view, VectorView<std::int32_t, Cpu>(r.pattern.row_offsets.data(), p.cols + 1),
      VectorView<std::int32_t, Cpu>(r.pattern.col_indices.data(), p.nnz()),
      VectorView<std::int32_t, Cpu>(r.perm.data(), p.nnz()));
  return r;
}

TEST_F(CudaSparsePatterns, TransposeIsBitIdenticalToCpu) {
  std::uint32_t seed = 400;
  const std::tuple<index_t, index_t, double> shapes[] = {
      {1, 1, 1.0},    {1, 1, 0.0},   {3, 17, 0.4},     {17, 3, 0.4},  {129, 17, 0.1},
      {17, 129, 0.1}, {40, 40, 1.0}, {300, 257, 0.05}, {1, 300, 0.5}, {300, 1, 0.5},
  };
  for (const auto& [rows, cols, density] : shapes)
    for (bool empty : {false, true}) {
      const CsrPattern p = random_pattern(rows, cols, density, ++seed, empty);
      SCOPED_TRACE(
          peft::detail::concat("transpose of ", rows, " x ", cols, " with ", p.nnz(), " entries"));
      const PatternResult got = csr_transpose_pattern(p);
      const PatternResult expected = cpu_transpose(p);
      EXPECT_EQ(got.pattern.row_offsets, expected.pattern.row_offsets);
      EXPECT_EQ(got.pattern.col_indices, expected.pattern.col_indices);
      EXPECT_EQ(got.perm, expected.perm);
      EXPECT_TRUE(got.tail_untouched) << "csr_transpose_pattern wrote past nnz";
      got.pattern.validate("the GPU's transpose");
    }
}

TEST_F(CudaSparsePatterns, DeviceCsrKeepsTheTransposeInStep) {
  // CsrMatrix<V, Cuda>: set_pattern builds Sᵀ on the device, refresh_transpose gathers the
  // values through the permutation (in every value type, 16-bit included).
  for (DType t : kAllTypes) {
    SCOPED_TRACE(name(t));
    const CsrPattern p = random_pattern(57, 31, 0.2, 7);
    const HostCsr s = random_csr(t, p, 8);
    DeviceCsr ds(t, p.rows, p.cols, p.nnz() + 4);
    ds.set_pattern(p);
    EXPECT_EQ(ds.nnz(), p.nnz());
    EXPECT_EQ(frobenius_norm(ds.values().view()), 0.0) << "set_pattern starts S at zero";
    ds.set_values(s.values.view());
    const PatternResult expected = cpu_transpose(p);
    const CsrPattern stored = ds.pattern();
    EXPECT_EQ(stored.row_offsets, p.row_offsets);
    EXPECT_EQ(stored.col_indices, p.col_indices);
    const CsrPattern t_pattern = ds.transposed_pattern();
    EXPECT_EQ(t_pattern.row_offsets, expected.pattern.row_offsets);
    EXPECT_EQ(t_pattern.col_indices, expected.pattern.col_indices);
    EXPECT_EQ(ds.transpose_permutation(), expected.perm);
    const HostCsr st = s.transposed();
    EXPECT_TRUE(bitwise_equal(ds.transposed_values().view(), st.values.view()));
  }
}

// ---- topk_pattern ----------------------------------------------------------------------------

/// The CPU's top-k pattern of `scores`.
CsrPattern cpu_topk(HostView scores, index_t k) {
  HostCtx ctx;
  CsrPattern p{scores.rows(), scores.cols(),
               std::vector<std::int32_t>(std::size_t(scores.rows() + 1)),
               std::vector<std::int32_t>(std::size_t(k))};
  cpu::topk_pattern(ctx, scores, k,
                    VectorView<std::int32_t, Cpu>(p.row_offsets.data(), scores.rows() + 1),
                    VectorView<std::int32_t, Cpu>(p.col_indices.data(), k));
  return p;
}

/// Scores drawn from a few magnitudes, both signs and signed zeros, so that most of them tie
/// with many others; plus (with `spread`) neighbours one ulp apart, subnormals and huge values,
/// which differ only in low bits or in the exponent.
HostMatrix tied_scores(DType t, index_t rows, index_t cols, std::uint32_t seed, bool spread) {
  std::mt19937 gen(seed);
  const double one_ulp_up =
      t == DType::f32 ? double(std::nextafter(1.0f, 2.0f)) : std::nextafter(1.0, 2.0);
  const double subnormal = t == DType::f32 ? double(std::numeric_limits<float>::denorm_min()) * 3
                                           : std::numeric_limits<double>::denorm_min() * 3;
  const double huge = t == DType::f32 ? 1e30 : 1e300;
  std::vector<double> levels = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 0.25};
  if (spread) levels.insert(levels.end(), {one_ulp_up, -one_ulp_up, subnormal, -huge, huge});
  std::uniform_int_distribution<std::size_t> pick(0, levels.size() - 1);
  HostMatrix m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = levels[pick(gen)];
  return m;
}

TEST_F(CudaSparsePatterns, TopkEqualsCpuWithTies) {
  std::uint32_t seed = 500;
  for (DType t : {DType::f32, DType::f64})
    for (const auto& [rows, cols] :
         {std::pair<index_t, index_t>{1, 1}, {3, 17}, {17, 3}, {129, 17}, {300, 301}, {1, 4000}})
      for (bool spread : {false, true})
        for (bool strided : {false, true}) {
          const HostMatrix scores = tied_scores(t, rows, cols, ++seed, spread);
          const DeviceMatrix ds(t, scores.view(), strided);
          const index_t total = rows * cols;
          for (index_t k : {index_t{0}, index_t{1}, total / 3, total / 2 + 1, total - 1, total}) {
            SCOPED_TRACE(peft::detail::concat("topk ", name(t), " ", rows, " x ", cols, " k=", k,
                                              spread ? " spread" : "", strided ? " strided" : ""));
            const PatternResult got = topk_pattern(ds, k);
            const CsrPattern expected = cpu_topk(scores.view(), k);
            EXPECT_EQ(got.pattern.row_offsets, expected.row_offsets);
            EXPECT_EQ(got.pattern.col_indices, expected.col_indices);
            EXPECT_TRUE(got.tail_untouched) << "topk_pattern wrote past k";
          }
          EXPECT_TRUE(ds.gaps_untouched());
        }
}

TEST_F(CudaSparsePatterns, TopkOfDistinctScoresIsTheLargest) {
  // Without ties: the k largest |score| exactly, whatever their digits (random doubles spread
  // over many exponents).
  std::mt19937 gen(9);
  std::uniform_real_distribution<double> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-60, 60);
  for (DType t : {DType::f32, DType::f64}) {
    HostMatrix raw(97, 131);
    for (index_t i = 0; i < raw.size(); ++i)
      raw.data()[i] = std::ldexp(mantissa(gen), exponent(gen));
    const HostMatrix scores = round_to(t, raw.view());
    const DeviceMatrix ds(t, scores.view());
    for (index_t k : {index_t{7}, index_t{97 * 131 / 100}, index_t{5000}}) {
      SCOPED_TRACE(peft::detail::concat("topk ", name(t), " k=", k));
      const PatternResult got = topk_pattern(ds, k);
      EXPECT_EQ(got.pattern.col_indices, cpu_topk(scores.view(), k).col_indices);
      EXPECT_EQ(got.pattern.row_offsets, cpu_topk(scores.view(), k).row_offsets);
    }
  }
}

TEST_F(CudaSparsePatterns, TopkRejectsNonFiniteScoresAndBadK) {
  for (DType t : {DType::f32, DType::f64})
    for (double bad : {kNaN, std::numeric_limits<double>::infinity(),
                       -std::numeric_limits<double>::infinity()}) {
      SCOPED_TRACE(peft::detail::concat(name(t), " with ", bad));
      HostMatrix scores = tied_scores(t, 17, 33, 4, true);
      scores.view()(16, 32) = bad;  // the very last element
      const DeviceMatrix ds(t, scores.view(), true);
      for (index_t k : {index_t{0}, index_t{3}, index_t{17 * 33}})
        expect_error([&] { (void)topk_pattern(ds, k); }, ErrorKind::numeric, {"not finite"});
    }
  const HostMatrix scores = tied_scores(DType::f32, 3, 4, 5, false);
  const DeviceMatrix ds(DType::f32, scores.view());
  expect_error([&] { (void)topk_pattern(ds, 13); }, ErrorKind::invalid_argument, {"k is 13"});
  expect_error([&] { (void)topk_pattern(ds, -1); }, ErrorKind::invalid_argument, {"k is -1"});
}

TEST_F(CudaSparsePatterns, TopkLeavesNoScratchInTheWorkspace) {
  // Building a mask is once per training: its scratch must not stay in the context's workspace,
  // which keeps its peak (20 bytes a score made ~0.9 GB for a 4096 x 11008 layer). Here 2M
  // scores: the workspace of a fresh context must still be empty afterwards.
  for (DType t : {DType::f32, DType::f64}) {
    SCOPED_TRACE(name(t));
    const HostMatrix scores = tied_scores(t, 1024, 2048, 77, true);
    const DeviceMatrix ds(t, scores.view());
    for (index_t k : {index_t{0}, index_t{1024 * 2048 / 100}}) {
      const WorkspaceUse use = topk_pattern_on_fresh_context(ds, k);
      EXPECT_EQ(use.capacity, 0u) << "k=" << k;
      EXPECT_EQ(use.allocations, 0u) << "k=" << k;
      const CsrPattern expected = cpu_topk(scores.view(), k);
      EXPECT_EQ(use.result.pattern.row_offsets, expected.row_offsets);
      EXPECT_EQ(use.result.pattern.col_indices, expected.col_indices);
    }
  }
}

TEST_F(CudaSparsePatterns, TopkOfClusteredScores) {
  // Large scores in a few rows and columns (RoSA's masks cluster), the rest tied: rows with all
  // their entries kept, rows with none, and ties split inside a row.
  for (DType t : {DType::f32, DType::f64}) {
    HostMatrix scores = filled(300, 517, 0.5);
    for (index_t c = 0; c < 517; ++c) {
      scores.view()(7, c) = 2.0 + double(c % 13);
      scores.view()(250, c) = -3.0;
    }
    for (index_t r = 0; r < 300; ++r) scores.view()(r, 100) = 1.0;
    const DeviceMatrix ds(t, scores.view(), true);
    for (index_t k : {index_t{1}, index_t{517}, index_t{2 * 517 + 5}, index_t{2 * 517 + 299},
                      index_t{2 * 517 + 299 + 1000}}) {
      SCOPED_TRACE(peft::detail::concat("topk ", name(t), " k=", k));
      const PatternResult got = topk_pattern(ds, k);
      const CsrPattern expected = cpu_topk(scores.view(), k);
      EXPECT_EQ(got.pattern.row_offsets, expected.row_offsets);
      EXPECT_EQ(got.pattern.col_indices, expected.col_indices);
      EXPECT_TRUE(got.tail_untouched);
    }
  }
}

TEST_F(CudaSparsePatterns, AddSparseToDenseIsParallelOverEntries) {
  // RoSA's masks cluster in few rows. One thread per row walks a full row of 2^20 entries alone
  // (hundreds of milliseconds); one thread per entry takes about as long for one full row as for
  // 2^20 rows of one entry each (S and Sᵀ of the same matrix).
  const index_t n = index_t{1} << 20;
  Matrix<std::uint8_t, Cpu> mask(1, n);
  for (index_t c = 0; c < n; ++c) mask.view()(0, c) = 1;
  const CsrPattern p = CsrPattern::from_mask(as_const(mask.view()));
  const DeviceCsr ds(DType::f32, p, random_matrix(DType::f32, 1, n, 1).view());
  DeviceMatrix one_row(DType::f32, filled(1, n, 0.0).view());
  DeviceMatrix one_column(DType::f32, filled(n, 1, 0.0).view());
  const double clustered_ms = time_add_sparse_to_dense_ms(1.0, ds, false, one_row, 5);
  const double spread_ms = time_add_sparse_to_dense_ms(1.0, ds, true, one_column, 5);
  EXPECT_LT(clustered_ms, 10.0 * spread_ms + 0.5)
      << "one full row took " << clustered_ms << " ms, one entry in each of " << n << " rows "
      << spread_ms << " ms";
  // And the sums are right: 6 calls each of S (and Sᵀ) added to zeros.
  const HostMatrix got_row = one_row.download(), got_column = one_column.download();
  const HostMatrix values = ds.values();
  int bad = 0;
  for (index_t c = 0; c < n; ++c) {
    const double expected = double(float(6.0 * values.data()[c]));
    const double tol = 8 * 0x1.0p-24 * std::abs(expected);
    if (!(std::abs(got_row.data()[c] - expected) <= tol) ||
        !(std::abs(got_column.data()[c] - expected) <= tol))
      ++bad;
  }
  EXPECT_EQ(bad, 0);
}

// ---- bad input -------------------------------------------------------------------------------

TEST_F(CudaSparsePatterns, ShapeMismatchesThrow) {
  const CsrPattern p{4, 5, {0, 1, 2, 3, 3}, {0, 1, 2}};
  DeviceCsr s(DType::f32, p, filled(1, 3, 1.0).view());
  DeviceMatrix x(DType::f32, 2, 4), y(DType::f32, 2, 4);
  expect_error([&] { spmm(1.0, x, s, Op::T, 0.0, y); }, ErrorKind::shape,
               {"spmm", "4 x 5", "expected 4 x 4"});
  DeviceMatrix y5(DType::f32, 3, 5);
  expect_error([&] { spmm(1.0, x, s, Op::N, 0.0, y5); }, ErrorKind::shape, {"spmm", "rows"});
  DeviceMatrix a(DType::f32, 6, 4), b(DType::f32, 7, 5);
  expect_error([&] { sddmm(1.0, Op::T, a, Op::N, b, 0.0, s); }, ErrorKind::shape,
               {"sddmm", "op(A) is 4 x 6", "op(B) is 7 x 5"});
  DeviceMatrix dense(DType::f32, 5, 4);
  expect_error([&] { add_sparse_to_dense(1.0, s, false, dense); }, ErrorKind::shape,
               {"add_sparse_to_dense", "4 x 5", "expected 5 x 4"});
  DeviceMatrix src(DType::f32, 2, 3), dst(DType::f32, 3, 2);
  expect_error([&] { accumulate_squares(1.0, src, dst); }, ErrorKind::shape,
               {"accumulate_squares", "2 x 3", "3 x 2"});
  DeviceMatrix row(DType::f32, 1, 3), out(DType::f32, 1, 2);
  const std::vector<std::int32_t> index{0, 1, 2};
  expect_error([&] { gather(row, index, out); }, ErrorKind::shape, {"gather", "3 indices"});
  expect_error(
      [&] {
        s.set_pattern(CsrPattern{5, 4, {0, 0, 0, 0, 0, 0}, {}});
      },
      ErrorKind::shape, {"pattern is 5 x 4", "4 x 5"});
}

}  // namespace
}  // namespace peft::gpu::test
