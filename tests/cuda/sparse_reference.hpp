#pragma once
// The host side of the sparse CUDA tests: random CSR patterns (with empty rows and columns),
// host CSR matrices in double for the CPU primitives, and an element-wise error bound check.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/gpu_sparse.hpp"
#include "cuda/reference.hpp"

namespace peft::gpu::test {

/// A rows x cols pattern: each entry kept with probability `density`; with `empty`, the first
/// row, every fifth row and every seventh column (counted from 3) hold nothing.
inline CsrPattern random_pattern(index_t rows, index_t cols, double density, std::uint32_t seed,
                                 bool empty = true) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution keep(density);
  Matrix<std::uint8_t, Cpu> mask(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) {
      const bool forced_empty = empty && rows > 2 && cols > 2 && (i % 5 == 0 || j % 7 == 3);
      mask.view()(i, j) = keep(gen) && !forced_empty ? 1 : 0;
    }
  return CsrPattern::from_mask(as_const(mask.view()));
}

/// Exactly nnz entries of a rows x cols pattern, placed uniformly outside the empty rows
/// (every third row, counted from 1, when `empty` and there is room).
inline CsrPattern pattern_with(index_t rows, index_t cols, index_t nnz, std::uint32_t seed,
                               bool empty = true) {
  std::vector<index_t> flat;
  const bool skip = empty && (rows - (rows + 1) / 3) * cols >= nnz;
  for (index_t f = 0; f < rows * cols; ++f)
    if (!(skip && (f / cols) % 3 == 1)) flat.push_back(f);
  std::mt19937 gen(seed);
  std::shuffle(flat.begin(), flat.end(), gen);
  Matrix<std::uint8_t, Cpu> mask(rows, cols);
  for (index_t e = 0; e < nnz; ++e) mask.data()[flat[std::size_t(e)]] = 1;
  return CsrPattern::from_mask(as_const(mask.view()));
}

/// A CSR matrix on the host: a pattern and its values (1 x nnz) in double.
struct HostCsr {
  CsrPattern pattern;
  HostMatrix values;

  CsrView<const double, Cpu> view() const {
    return {pattern.rows,
            pattern.cols,
            pattern.nnz(),
            pattern.row_offsets.data(),
            pattern.col_indices.data(),
            values.data()};
  }

  /// Sᵀ, through the CPU primitives (csr_transpose_pattern, then gather of the values).
  HostCsr transposed() const {
    HostCtx ctx;
    const index_t nnz = pattern.nnz();
    HostCsr t{CsrPattern{pattern.cols, pattern.rows,
                         std::vector<std::int32_t>(std::size_t(pattern.cols + 1)),
                         std::vector<std::int32_t>(std::size_t(nnz))},
              HostMatrix(1, nnz)};
    std::vector<std::int32_t> perm(static_cast<std::size_t>(nnz));
    cpu::csr_transpose_pattern(
        ctx, view(), VectorView<std::int32_t, Cpu>(t.pattern.row_offsets.data(), pattern.cols + 1),
        VectorView<std::int32_t, Cpu>(t.pattern.col_indices.data(), nnz),
        VectorView<std::int32_t, Cpu>(perm.data(), nnz));
    cpu::gather(ctx, VectorView<const double, Cpu>(values.data(), nnz),
                VectorView<const std::int32_t, Cpu>(perm.data(), nnz),
                VectorView<double, Cpu>(t.values.data(), nnz));
    return t;
  }

  /// The same pattern with |values|.
  HostCsr absolute() const {
    HostCsr a{pattern, HostMatrix(1, pattern.nnz())};
    for (index_t e = 0; e < pattern.nnz(); ++e) a.values.data()[e] = std::abs(values.data()[e]);
    return a;
  }
};

/// A host CSR matrix with `pattern` and values uniform in [-scale, scale), rounded to `t`.
inline HostCsr random_csr(DType t, const CsrPattern& pattern, std::uint32_t seed,
                          double scale = 1.0) {
  return HostCsr{pattern, random_matrix(t, 1, pattern.nnz(), seed, scale)};
}

inline double frobenius_norm(HostView m) {
  double s = 0;
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) s += m(i, j) * m(i, j);
  return std::sqrt(s);
}

inline HostMatrix absolute(HostView m) {
  HostMatrix out(m.rows(), m.cols());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.view()(i, j) = std::abs(m(i, j));
  return out;
}

/// |got − expected| <= bound element by element (NaN fails); reports the first few misses.
inline void expect_within(HostView got, HostView expected, HostView bound, const char* what) {
  ASSERT_EQ(got.rows(), expected.rows()) << what;
  ASSERT_EQ(got.cols(), expected.cols()) << what;
  int bad = 0;
  for (index_t i = 0; i < got.rows(); ++i)
    for (index_t j = 0; j < got.cols(); ++j) {
      const double g = got(i, j), e = expected(i, j), b = bound(i, j);
      if (!(std::abs(g - e) <= b) && bad++ < 5)
        ADD_FAILURE() << what << "(" << i << ", " << j << ") = " << g << ", expected " << e
                      << " +- " << b;
    }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements outside the bound";
}

/// The spacing of a dtype's subnormals: a bound on the absolute error of rounding a tiny result.
inline double underflow(DType t) {
  switch (t) {
    case DType::f32:
      return 0x1.0p-149;
    case DType::f64:
      return 0x1.0p-1074;
    case DType::f16:
      return 0x1.0p-24;
    case DType::bf16:
      return 0x1.0p-133;
  }
  return 0;
}

/// Unit roundoff of the fp32 (fp64 for f64) accumulation of the GPU primitives.
inline double accumulation_roundoff(DType t) {
  return t == DType::f64 ? 0x1.0p-53 : 0x1.0p-24;
}

}  // namespace peft::gpu::test
