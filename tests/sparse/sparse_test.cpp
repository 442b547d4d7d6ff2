// CSR storage and the CPU sparse primitives against dense references.

#include <gtest/gtest.h>

#include <random>
#include <utility>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

/// A random pattern with about `density` of the entries, plus its dense 0/1 mask.
CsrPattern random_pattern(index_t rows, index_t cols, double density, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution keep(density);
  Matrix<std::uint8_t, Cpu> mask(rows, cols);
  for (index_t i = 0; i < mask.size(); ++i) mask.data()[i] = keep(gen) ? 1 : 0;
  return CsrPattern::from_mask(as_const(mask.view()));
}

/// S as a dense double matrix.
template <class V>
Matrix<double, Cpu> dense_of(const CsrView<V, Cpu>& s) {
  Matrix<double, Cpu> d(s.rows, s.cols);
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e)
      d.view()(r, s.col_indices[e]) = convert_value<double>(s.values[e]);
  return d;
}

template <class V>
void randomise_values(CsrMatrix<V, Cpu>& s, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t e = 0; e < s.nnz(); ++e) s.values().data()[e] = convert_value<V>(dist(gen));
}

TEST(CsrPattern, ValidationNamesTheProblem) {
  CsrPattern ok{2, 3, {0, 1, 3}, {2, 0, 1}};
  ok.validate();
  auto bad = ok;
  bad.row_offsets = {0, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::shape, {"2 row offsets for 2 rows"});
  bad = ok;
  bad.row_offsets = {1, 1, 3};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument, {"row_offsets[0] is 1"});
  bad = ok;
  bad.row_offsets = {0, 2, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument,
               {"row_offsets[2] is 1", "nnz = 3"});
  bad = ok;
  bad.row_offsets = {0, 3, 3};
  bad.col_indices = {2, 0, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument, {"not sorted", "row 0"});
  bad = ok;
  bad.col_indices = {2, 1, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument, {"not sorted and unique"});
  bad = ok;
  bad.col_indices = {3, 0, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument,
               {"column index 3 in row 0", "[0, 3)"});
  bad = ok;
  bad.col_indices = {-1, 0, 1};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument, {"column index -1"});
}

TEST(CsrPattern, OffsetsAreCheckedBeforeAnyIndexIsRead) {
  // Row 0 claims entries [0, 2) and row 1 goes back to 1: the offsets are refused before the
  // unsorted indices of row 0 are looked at.
  CsrPattern bad{3, 8, {0, 2, 1, 2}, {5, 3}};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument,
               {"row_offsets decrease at row 1", "(2 > 1)"});
  // Row 0 claims a million entries of two: reading them would run far past the end of
  // col_indices (a heap overflow under ASan, garbage otherwise).
  bad = CsrPattern{2, 8, {0, 1000000, 2}, {0, 1}};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument,
               {"row_offsets decrease at row 1", "(1000000 > 2)"});
  bad = CsrPattern{3, 8, {0, -5, 1, 2}, {0, 1}};
  expect_error([&] { bad.validate(); }, ErrorKind::invalid_argument,
               {"row_offsets decrease at row 0", "(0 > -5)"});
}

TEST(CsrMatrix, TransposeKeepsValuesInStep) {
  HostCtx ctx;
  const auto pattern = random_pattern(13, 9, 0.3, 1);
  CsrMatrix<double, Cpu> s(13, 9, pattern.nnz() + 5);
  s.set_pattern(ctx, pattern);
  EXPECT_EQ(s.nnz(), pattern.nnz());
  randomise_values(s, 2);
  s.refresh_transpose(ctx);
  auto d = dense_of(std::as_const(s).view());
  auto dt = dense_of(s.transposed_view());
  for (index_t i = 0; i < 13; ++i)
    for (index_t j = 0; j < 9; ++j) EXPECT_EQ(d.view()(i, j), dt.view()(j, i));
  expect_error([&] { s.set_pattern(ctx, random_pattern(9, 13, 0.3, 1)); }, ErrorKind::shape,
               {"pattern is 9 x 13", "13 x 9"});
  CsrMatrix<double, Cpu> small(13, 9, 2);
  expect_error([&] { small.set_pattern(ctx, pattern); }, ErrorKind::shape, {"room for 2"});
  expect_error([] { CsrMatrix<double, Cpu>(3, 3, 10); }, ErrorKind::shape, {"capacity 10"});
}

template <class TX>
void check_spmm(Op op, double tolerance) {
  HostCtx ctx;
  const index_t n = 7, rows = 11, cols = 17;  // S is rows x cols
  const auto pattern = random_pattern(rows, cols, 0.2, 3);
  CsrMatrix<TX, Cpu> s(rows, cols, pattern.nnz());
  s.set_pattern(ctx, pattern);
  randomise_values(s, 4);
  s.refresh_transpose(ctx);
  const index_t in = op == Op::T ? cols : rows, out = op == Op::T ? rows : cols;
  // Strided X and Y inside larger buffers.
  auto big_x = random_matrix<TX>(n, in + 3, 5);
  auto big_y = random_matrix<TX>(n + 2, out + 4, 6);
  auto x = big_x.view().block(0, 2, n, in);
  auto y = big_y.view().block(1, 1, n, out);
  auto y0 = converted<double>(as_const(y));
  const auto& cs = s;
  SparseOperand<TX, Cpu> operand{cs.view(), cs.transposed_view(), &s.cache()};
  spmm(ctx, 0.5, as_const(x), operand, op, 2.0, y);
  auto ds = dense_of(cs.view());
  auto ref = naive_product(as_const(x), false, as_const(ds.view()), op == Op::T);
  for (index_t i = 0; i < ref.size(); ++i) {
    const index_t r = i / out, c = i % out;
    ref.view()(r, c) = 0.5 * ref.view()(r, c) + 2.0 * y0.view()(r, c);
  }
  EXPECT_LT(relative_error(as_const(y), as_const(ref.view())), tolerance);
  EXPECT_EQ(big_y.view()(0, 0),
            convert_value<TX>(converted<double>(as_const(big_y.view())).view()(0, 0)));
}

TEST(Spmm, MatchesDenseProduct) {
  check_spmm<double>(Op::T, 1e-14);
  check_spmm<double>(Op::N, 1e-14);
  check_spmm<float>(Op::T, 1e-6);
  check_spmm<float>(Op::N, 1e-6);
  check_spmm<Eigen::bfloat16>(Op::T, 1e-2);
  check_spmm<Eigen::bfloat16>(Op::N, 1e-2);
}

TEST(Spmm, ShapeMismatchThrows) {
  HostCtx ctx;
  CsrMatrix<float, Cpu> s(4, 5, 3);
  s.set_pattern(ctx, CsrPattern{4, 5, {0, 1, 2, 3, 3}, {0, 1, 2}});
  Matrix<float, Cpu> x(2, 4), y(2, 4);
  const auto& cs = s;
  SparseOperand<float, Cpu> operand{cs.view(), cs.transposed_view(), &s.cache()};
  expect_error([&] { spmm(ctx, 1.0, as_const(x.view()), operand, Op::T, 0.0, y.view()); },
               ErrorKind::shape, {"spmm", "4 x 5", "expected 4 x 4"});
}

TEST(Sddmm, MatchesMaskedDenseProduct) {
  HostCtx ctx;
  const index_t m = 9, k = 6, n = 14;
  const auto pattern = random_pattern(m, n, 0.25, 7);
  for (Op op_a : {Op::N, Op::T})
    for (Op op_b : {Op::N, Op::T}) {
      auto a = op_a == Op::N ? random_matrix<double>(m, k, 8) : random_matrix<double>(k, m, 8);
      auto b = op_b == Op::N ? random_matrix<double>(k, n, 9) : random_matrix<double>(n, k, 9);
      CsrMatrix<double, Cpu> s(m, n, pattern.nnz());
      s.set_pattern(ctx, pattern);
      randomise_values(s, 10);
      auto before = dense_of(std::as_const(s).view());
      sddmm(ctx, 0.5, op_a, as_const(a.view()), op_b, as_const(b.view()), 3.0, s.view());
      auto prod =
          naive_product(as_const(a.view()), op_a == Op::T, as_const(b.view()), op_b == Op::T);
      auto after = dense_of(std::as_const(s).view());
      for (index_t r = 0; r < m; ++r)
        for (index_t e = pattern.row_offsets[r]; e < pattern.row_offsets[r + 1]; ++e) {
          const index_t c = pattern.col_indices[e];
          EXPECT_NEAR(after.view()(r, c), 0.5 * prod.view()(r, c) + 3.0 * before.view()(r, c),
                      1e-12);
        }
    }
}

TEST(Sddmm, Bfloat16InputsAccumulateInFloat) {
  HostCtx ctx;
  const index_t m = 8, k = 64, n = 10;
  const auto pattern = random_pattern(m, n, 0.4, 11);
  auto a = random_matrix<Eigen::bfloat16>(k, m, 12);
  auto b = random_matrix<Eigen::bfloat16>(k, n, 13);
  CsrMatrix<float, Cpu> s(m, n, pattern.nnz());
  s.set_pattern(ctx, pattern);
  sddmm(ctx, 1.0, Op::T, as_const(a.view()), Op::N, as_const(b.view()), 0.0, s.view());
  auto prod = naive_product(as_const(a.view()), true, as_const(b.view()), false);
  for (index_t r = 0; r < m; ++r)
    for (index_t e = pattern.row_offsets[r]; e < pattern.row_offsets[r + 1]; ++e)
      EXPECT_NEAR(s.values().data()[e], prod.view()(r, pattern.col_indices[e]), 1e-4);
}

TEST(TopkPattern, PicksTheLargestMagnitudesWithDeterministicTies) {
  HostCtx ctx;
  // |scores|: 5 is largest, then the three 3s (ties: smaller row-major index first), then 2.
  Matrix<double, Cpu> scores(3, 4);
  const double v[] = {0, -3, 1,  2,  //
                      3, 0,  -5, 0,  //
                      0, 3,  0,  -1};
  std::copy(std::begin(v), std::end(v), scores.data());
  std::vector<std::int32_t> offsets(4), cols(3);
  topk_pattern(ctx, as_const(scores.view()), 3, VectorView<std::int32_t, Cpu>(offsets.data(), 4),
               VectorView<std::int32_t, Cpu>(cols.data(), 3));
  // Chosen: (1,2)=5, (0,1)=3, (1,0)=3; (2,1)=3 loses the tie.
  EXPECT_EQ(offsets, (std::vector<std::int32_t>{0, 1, 3, 3}));
  EXPECT_EQ(cols, (std::vector<std::int32_t>{1, 0, 2}));
  std::vector<std::int32_t> all_cols(12), all_offsets(4);
  topk_pattern(ctx, as_const(scores.view()), 12,
               VectorView<std::int32_t, Cpu>(all_offsets.data(), 4),
               VectorView<std::int32_t, Cpu>(all_cols.data(), 12));
  EXPECT_EQ(all_offsets, (std::vector<std::int32_t>{0, 4, 8, 12}));
  expect_error(
      [&] {
        topk_pattern(ctx, as_const(scores.view()), 13,
                     VectorView<std::int32_t, Cpu>(all_offsets.data(), 4),
                     VectorView<std::int32_t, Cpu>(all_cols.data(), 12));
      },
      ErrorKind::invalid_argument, {"k is 13"});
  scores.data()[5] = std::nan("");
  expect_error(
      [&] {
        topk_pattern(ctx, as_const(scores.view()), 3,
                     VectorView<std::int32_t, Cpu>(offsets.data(), 4),
                     VectorView<std::int32_t, Cpu>(cols.data(), 3));
      },
      ErrorKind::numeric, {"(1, 1) is not finite"});
}

TEST(SparseHelpers, AddToDenseGatherAndSquares) {
  HostCtx ctx;
  const auto pattern = random_pattern(5, 6, 0.5, 14);
  CsrMatrix<double, Cpu> s(5, 6, pattern.nnz());
  s.set_pattern(ctx, pattern);
  randomise_values(s, 15);
  auto dense = random_matrix<double>(5, 6, 16);
  auto before = converted<double>(as_const(dense.view()));
  add_sparse_to_dense(ctx, -2.0, std::as_const(s).view(), dense.view());
  auto ds = dense_of(std::as_const(s).view());
  for (index_t i = 0; i < dense.size(); ++i)
    EXPECT_NEAR(dense.data()[i], before.data()[i] - 2.0 * ds.data()[i], 1e-15);

  std::vector<float> src{1, 2, 3, 4};
  std::vector<std::int32_t> idx{3, 0, 0};
  std::vector<double> dst(3);
  gather(ctx, VectorView<const float, Cpu>(src.data(), 4),
         VectorView<const std::int32_t, Cpu>(idx.data(), 3),
         VectorView<double, Cpu>(dst.data(), 3));
  EXPECT_EQ(dst, (std::vector<double>{4, 1, 1}));

  auto g = random_matrix<double>(3, 4, 17);
  Matrix<double, Cpu> acc(3, 4);
  accumulate_squares(ctx, 0.5, as_const(g.view()), acc.view());
  accumulate_squares(ctx, 0.5, as_const(g.view()), acc.view());
  for (index_t i = 0; i < acc.size(); ++i)
    EXPECT_NEAR(acc.data()[i], g.data()[i] * g.data()[i], 1e-15);
}

}  // namespace
}  // namespace peft::test
