// The CPU sparse primitives' scratch (backend/cpu/sparse.hpp): spmm, sddmm and
// csr_transpose_pattern take it from the Context's workspace, within what their
// *_workspace_bytes functions say, and allocate nothing once the workspace is warm (neither the
// workspace nor operator new); results on shapes large enough for the threaded paths match dense
// references. topk_pattern (a radix select) needs no scratch at all and matches a sort with the
// same tie rule.
//
// This file replaces the global operator new for sparse_test (tests/backend/counting_new.hpp).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "backend/counting_new.hpp"
#include "util/test_util.hpp"

namespace peft::test {
namespace {

CsrPattern random_pattern(index_t rows, index_t cols, double density, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution keep(density);
  Matrix<std::uint8_t, Cpu> mask(rows, cols);
  for (index_t i = 0; i < mask.size(); ++i) mask.data()[i] = keep(gen) ? 1 : 0;
  return CsrPattern::from_mask(as_const(mask.view()));
}

template <class V>
Matrix<double, Cpu> dense_of(const CsrView<V, Cpu>& s) {
  Matrix<double, Cpu> d(s.rows, s.cols);
  for (index_t r = 0; r < s.rows; ++r)
    for (index_t e = s.row_offsets[r]; e < s.row_offsets[r + 1]; ++e)
      d.view()(r, s.col_indices[e]) = convert_value<double>(s.values[e]);
  return d;
}

/// Runs `call` once to warm the workspace, then twice more, counting both kinds of allocation.
template <class F>
void expect_warm_calls_allocate_nothing(HostCtx& ctx, F&& call, const char* what) {
  call();
  const auto warm = ctx.workspace().allocations();
  long news = 0;
  {
    CountNew count;
    call();
    call();
    news = count.count();
  }
  EXPECT_EQ(ctx.workspace().allocations(), warm) << what << " grew the workspace once warm";
  EXPECT_EQ(news, 0) << what << " called operator new once warm";
}

// S [300, 200] at density 0.1 (about 6000 entries) times 64 rows: above the kernels' threading
// thresholds, so two threads split the work.
constexpr index_t kRows = 300, kCols = 200, kBatch = 64;

template <class T>
void check_spmm_scratch(Op op, double tolerance) {
  HostCtx ctx(CpuContextOptions{.threads = 2});
  const auto pattern = random_pattern(kRows, kCols, 0.1, 1);
  CsrMatrix<T, Cpu> s(kRows, kCols, pattern.nnz());
  s.set_pattern(ctx, pattern);
  std::mt19937 gen(2);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (index_t e = 0; e < s.nnz(); ++e) s.values().data()[e] = convert_value<T>(dist(gen));
  s.refresh_transpose(ctx);
  const index_t in = op == Op::T ? kCols : kRows, out = op == Op::T ? kRows : kCols;
  auto x = random_matrix<T>(kBatch, in, 3);
  Matrix<T, Cpu> y(kBatch, out);
  const auto& cs = s;
  SparseOperand<T, Cpu> operand{cs.view(), cs.transposed_view(), &s.cache()};

  HostCtx fresh(CpuContextOptions{.threads = 2});
  spmm(fresh, 1.0, as_const(x.view()), operand, op, 0.0, y.view());
  EXPECT_LE(fresh.workspace().capacity(), std::size_t(spmm_workspace_bytes<T>(fresh, op, out)));
  auto ref =
      naive_product(as_const(x.view()), false, as_const(dense_of(cs.view()).view()), op == Op::T);
  EXPECT_LT(relative_error(as_const(y.view()), as_const(ref.view())), tolerance);

  expect_warm_calls_allocate_nothing(
      ctx, [&] { spmm(ctx, 0.5, as_const(x.view()), operand, op, 1.0, y.view()); }, "spmm");
}

TEST(SparseScratch, SpmmTakesItsRowsFromTheWorkspace) {
  check_spmm_scratch<double>(Op::N, 1e-13);
  check_spmm_scratch<double>(Op::T, 1e-13);
  check_spmm_scratch<float>(Op::N, 1e-5);
  check_spmm_scratch<float>(Op::T, 1e-5);
  check_spmm_scratch<Eigen::bfloat16>(Op::N, 1e-2);
  HostCtx ctx(CpuContextOptions{.threads = 3});
  EXPECT_EQ(spmm_workspace_bytes<float>(ctx, Op::N, 100), 3 * 100 * 4 / 256 * 256 + 256);
  EXPECT_EQ(spmm_workspace_bytes<float>(ctx, Op::T, 100), 0);
}

template <class V, class T>
void check_sddmm_scratch(Op op_a, Op op_b, double tolerance) {
  HostCtx ctx(CpuContextOptions{.threads = 2});
  const auto pattern = random_pattern(kRows, kCols, 0.1, 4);
  CsrMatrix<V, Cpu> s(kRows, kCols, pattern.nnz());
  s.set_pattern(ctx, pattern);
  auto a = op_a == Op::N ? random_matrix<T>(kRows, kBatch, 5) : random_matrix<T>(kBatch, kRows, 5);
  auto b = op_b == Op::N ? random_matrix<T>(kBatch, kCols, 6) : random_matrix<T>(kCols, kBatch, 6);

  HostCtx fresh(CpuContextOptions{.threads = 2});
  sddmm(fresh, 1.0, op_a, as_const(a.view()), op_b, as_const(b.view()), 0.0, s.view());
  EXPECT_LE(fresh.workspace().capacity(),
            std::size_t(sddmm_workspace_bytes<V>(fresh, op_a, op_b, s.nnz())));
  auto prod = naive_product(as_const(a.view()), op_a == Op::T, as_const(b.view()), op_b == Op::T);
  double num = 0, den = 0;
  for (index_t r = 0; r < kRows; ++r)
    for (index_t e = pattern.row_offsets[r]; e < pattern.row_offsets[r + 1]; ++e) {
      const double want = prod.view()(r, pattern.col_indices[e]);
      const double got = convert_value<double>(s.values().data()[e]);
      num += (got - want) * (got - want);
      den += want * want;
    }
  EXPECT_LT(std::sqrt(num / den), tolerance);

  expect_warm_calls_allocate_nothing(
      ctx,
      [&] { sddmm(ctx, 1.0, op_a, as_const(a.view()), op_b, as_const(b.view()), 1.0, s.view()); },
      "sddmm");
}

TEST(SparseScratch, SddmmTakesItsSumsFromTheWorkspace) {
  check_sddmm_scratch<double, double>(Op::T, Op::N, 1e-13);  // RoSA's dS = (dyᵀ x) ⊙ mask
  check_sddmm_scratch<double, double>(Op::N, Op::T, 1e-13);
  check_sddmm_scratch<float, float>(Op::T, Op::N, 1e-5);
  check_sddmm_scratch<float, Eigen::bfloat16>(Op::T, Op::N, 1e-5);
  HostCtx ctx(CpuContextOptions{.threads = 2});
  EXPECT_EQ(sddmm_workspace_bytes<float>(ctx, Op::T, Op::N, 1000), 4096);
  EXPECT_EQ(sddmm_workspace_bytes<float>(ctx, Op::N, Op::N, 1000), 0);
}

TEST(SparseScratch, TransposePatternTakesItsCursorsFromTheWorkspace) {
  HostCtx ctx(CpuContextOptions{.threads = 2});
  const auto pattern = random_pattern(kRows, kCols, 0.1, 7);
  CsrMatrix<float, Cpu> s(kRows, kCols, pattern.nnz());
  s.set_pattern(ctx, pattern);
  Vector<std::int32_t, Cpu> offsets(kCols + 1), cols(s.nnz()), perm(s.nnz());
  HostCtx fresh;
  csr_transpose_pattern(fresh, std::as_const(s).view(), offsets.view(), cols.view(), perm.view());
  EXPECT_LE(fresh.workspace().capacity(), std::size_t(csr_transpose_workspace_bytes(fresh, kCols)));
  // The same pattern as the one CsrMatrix keeps for Sᵀ.
  const auto t = std::as_const(s).transposed_view();
  EXPECT_TRUE(std::equal(t.row_offsets, t.row_offsets + kCols + 1, offsets.data()));
  EXPECT_TRUE(std::equal(t.col_indices, t.col_indices + s.nnz(), cols.data()));
  expect_warm_calls_allocate_nothing(
      ctx,
      [&] {
        csr_transpose_pattern(ctx, std::as_const(s).view(), offsets.view(), cols.view(),
                              perm.view());
      },
      "csr_transpose_pattern");
}

/// The top k of |scores| by sorting (ties: smaller row-major index first), as CSR.
template <class T>
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> reference_topk(
    MatrixView<const T, Cpu> scores, index_t k) {
  const index_t rows = scores.rows(), cols = scores.cols();
  std::vector<std::pair<double, index_t>> keyed;
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      keyed.push_back({std::abs(convert_value<double>(scores(i, j))), i * cols + j});
  std::sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  std::vector<index_t> chosen;
  for (index_t e = 0; e < k; ++e) chosen.push_back(keyed[std::size_t(e)].second);
  std::sort(chosen.begin(), chosen.end());
  std::vector<std::int32_t> offsets(std::size_t(rows + 1)), col_indices;
  for (const index_t f : chosen) {
    ++offsets[std::size_t(f / cols + 1)];
    col_indices.push_back(std::int32_t(f % cols));
  }
  for (index_t r = 0; r < rows; ++r) offsets[std::size_t(r + 1)] += offsets[std::size_t(r)];
  return {offsets, col_indices};
}

template <class T>
void check_topk(index_t rows, index_t cols, int levels, std::uint32_t seed) {
  // levels > 0: values from a few magnitudes of both signs (many ties, also +0 and -0);
  // levels = 0: continuous values.
  HostCtx ctx;
  Matrix<T, Cpu> storage(rows + 2, cols + 3);
  auto scores = storage.view().block(1, 2, rows, cols);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  std::uniform_int_distribution<int> level(-levels, levels);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      scores(i, j) =
          convert_value<T>(levels > 0 ? (level(gen) == 0 && gen() % 2 ? -0.0 : level(gen) * 0.25)
                                      : dist(gen) * std::pow(2.0, int(gen() % 40) - 20));
  const index_t total = rows * cols;
  for (const index_t k : {index_t{0}, index_t{1}, total / 7, total / 2, total - 1, total}) {
    std::vector<std::int32_t> offsets(std::size_t(rows + 1), -1),
        col_indices(static_cast<std::size_t>(k));
    long news = 0;
    const auto workspace = ctx.workspace().allocations();
    {
      CountNew count;
      topk_pattern(ctx, as_const(scores), k,
                   VectorView<std::int32_t, Cpu>(offsets.data(), rows + 1),
                   VectorView<std::int32_t, Cpu>(col_indices.data(), k));
      news = count.count();
    }
    EXPECT_EQ(news, 0) << "topk_pattern called operator new";
    EXPECT_EQ(ctx.workspace().allocations(), workspace);
    const auto [want_offsets, want_cols] = reference_topk(as_const(scores), k);
    EXPECT_EQ(offsets, want_offsets) << "k = " << k << ", levels = " << levels;
    EXPECT_EQ(col_indices, want_cols) << "k = " << k << ", levels = " << levels;
  }
}

TEST(TopkPattern, RadixSelectMatchesASortWithTheSameTieRule) {
  std::uint32_t seed = 10;
  for (const int levels : {0, 1, 3, 40}) {
    check_topk<float>(37, 23, levels, seed++);
    check_topk<double>(19, 41, levels, seed++);
    check_topk<double>(1, 50, levels, seed++);
    check_topk<float>(50, 1, levels, seed++);
  }
}

TEST(TopkPattern, ExtremeMagnitudes) {
  HostCtx ctx;
  Matrix<double, Cpu> scores(2, 4);
  const double v[] = {std::numeric_limits<double>::denorm_min(),
                      -std::numeric_limits<double>::max(),
                      0.0,
                      1e-300,
                      -0.0,
                      std::numeric_limits<double>::max(),
                      1.0,
                      -std::numeric_limits<double>::denorm_min()};
  std::copy(std::begin(v), std::end(v), scores.data());
  for (index_t k = 0; k <= 8; ++k) {
    std::vector<std::int32_t> offsets(3), col_indices(static_cast<std::size_t>(k));
    topk_pattern(ctx, as_const(scores.view()), k, VectorView<std::int32_t, Cpu>(offsets.data(), 3),
                 VectorView<std::int32_t, Cpu>(col_indices.data(), k));
    const auto [want_offsets, want_cols] = reference_topk(as_const(scores.view()), k);
    EXPECT_EQ(offsets, want_offsets) << "k = " << k;
    EXPECT_EQ(col_indices, want_cols) << "k = " << k;
  }
}

}  // namespace
}  // namespace peft::test
