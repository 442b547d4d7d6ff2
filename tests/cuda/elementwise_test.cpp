// The element-wise primitives and reductions of the CUDA backend against the CPU primitives on
// the same values: fill, scale, axpy, copy (every pair of dtypes), broadcast_rows (increment 1
// and a strided column), dot, norm and all_finite (NaN, ±inf), on odd shapes, contiguous and as
// blocks of larger device matrices whose gaps hold NaN.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

class CudaElementwise : public CudaTest {};

/// The CPU primitive applied to a host copy of `values` in T's host type, as double.
template <class F>
HostMatrix on_cpu(DType t, HostView values, F&& f) {
  return with_host_type(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto m = to_typed<T>(values);
    HostCtx ctx;
    f(ctx, m.view());
    return to_double(as_const(m.view()));
  });
}

TEST_F(CudaElementwise, FillMatchesCpu) {
  for (DType t : kAllTypes)
    for (const auto& [rows, cols] : kShapes)
      for (bool strided : {false, true})
        for (const double value : {0.0, -0.3, 1e5}) {
          SCOPED_TRACE(describe(t, rows, cols, strided));
          DeviceMatrix x(t, rows, cols, strided);  // NaN everywhere
          fill(x, value);
          const HostMatrix expected = on_cpu(t, filled(rows, cols, kNaN).view(),
                                             [&](auto& ctx, auto v) { cpu::fill(ctx, v, value); });
          EXPECT_TRUE(bitwise_equal(x.download().view(), expected.view()));
          EXPECT_TRUE(x.gaps_untouched());
        }
}

TEST_F(CudaElementwise, ScaleMatchesCpu) {
  std::uint32_t seed = 10;
  for (DType t : kAllTypes)
    for (const auto& [rows, cols] : kShapes)
      for (bool strided : {false, true})
        for (const double alpha : {-1.25, 0.375, 0.0}) {
          SCOPED_TRACE(describe(t, rows, cols, strided));
          const HostMatrix values = random_matrix(t, rows, cols, ++seed);
          DeviceMatrix x(t, values.view(), strided);
          scale(alpha, x);
          // alpha has few significant bits: alpha x is exact before its one rounding to the
          // dtype on both sides, so the results agree bit for bit.
          const HostMatrix expected =
              on_cpu(t, values.view(), [&](auto& ctx, auto v) { cpu::scale(ctx, alpha, v); });
          EXPECT_TRUE(bitwise_equal(x.download().view(), expected.view()));
          EXPECT_TRUE(x.gaps_untouched());
        }
}

TEST_F(CudaElementwise, AxpyEveryPairOfTypesMatchesCpu) {
  std::uint32_t seed = 100;
  for (DType tx : kAllTypes)
    for (DType ty : kAllTypes)
      for (const auto& [rows, cols] : kShapes)
        for (bool strided : {false, true}) {
          SCOPED_TRACE(
              peft::detail::concat("x ", name(tx), ", y ", describe(ty, rows, cols, strided)));
          const double alpha = -1.25;
          const HostMatrix xv = random_matrix(tx, rows, cols, ++seed);
          const HostMatrix yv = random_matrix(ty, rows, cols, ++seed);
          DeviceMatrix x(tx, xv.view(), strided), y(ty, yv.view(), !strided);
          axpy(alpha, x, y);
          const HostMatrix got = y.download();
          const HostMatrix expected = with_host_type(tx, [&](auto tag) {
            using TX = typename decltype(tag)::type;
            const auto x_typed = to_typed<TX>(xv.view());
            return on_cpu(ty, yv.view(), [&](auto& ctx, auto v) {
              cpu::axpy(ctx, alpha, as_const(x_typed.view()), v);
            });
          });
          // Both compute in double and round once (ScaleAndAxpyComputeInDoubleAsOnTheCpu
          // checks the bits); this bound would also allow float arithmetic.
          const double u_math = ty == DType::f64 ? 0x1.0p-53 : 0x1.0p-24;
          const double u_out = unit_roundoff(ty);
          int bad = 0;
          for (index_t i = 0; i < rows; ++i)
            for (index_t j = 0; j < cols; ++j) {
              const double g = got.view()(i, j), e = expected.view()(i, j);
              const double mag = std::abs(alpha * xv.view()(i, j)) + std::abs(yv.view()(i, j));
              const double tol = 2 * u_out * std::abs(e) + 4 * u_math * mag;
              if (!(std::abs(g - e) <= tol) && bad++ < 3)
                ADD_FAILURE() << "(" << i << ", " << j << "): " << g << " vs " << e;
            }
          EXPECT_EQ(bad, 0);
          EXPECT_TRUE(x.gaps_untouched());
          EXPECT_TRUE(y.gaps_untouched());
        }
}

/// How many elements of y = alpha x + y (y = alpha x without y) computed in float, with alpha
/// rounded to float, differ from the same computed in double and rounded once to float.
int float_arithmetic_misses(double alpha, HostView x, const HostMatrix* y) {
  int misses = 0;
  for (index_t i = 0; i < x.rows(); ++i)
    for (index_t j = 0; j < x.cols(); ++j) {
      const float xf = float(x(i, j)), yf = y != nullptr ? float(y->view()(i, j)) : 0.0f;
      const volatile float product = float(alpha) * xf;  // no fused multiply-add
      const float in_float = y != nullptr ? product + yf : product;
      const float in_double =
          float(y != nullptr ? alpha * double(xf) + double(yf) : alpha * double(xf));
      misses += in_float != in_double ? 1 : 0;
    }
  return misses;
}

TEST_F(CudaElementwise, ScaleAndAxpyComputeInDoubleAsOnTheCpu) {
  // alpha = 0.1 and 1/3 are not floats. Computed in float, alpha is rounded and the product
  // rounded twice, so results differ from the CPU's (double, one rounding) in the last bit for
  // a good share of the elements, and masks built from them can differ at near-ties. Both must
  // compute in double: bit-identical results, in every dtype.
  std::uint32_t seed = 300;
  for (const double alpha : {0.1, 1.0 / 3.0})
    for (DType t : kAllTypes) {
      SCOPED_TRACE(peft::detail::concat("scale ", name(t), " alpha=", alpha));
      const HostMatrix values = random_matrix(t, 37, 129, ++seed, 3.0);
      DeviceMatrix x(t, values.view(), true);
      scale(alpha, x);
      const HostMatrix expected =
          on_cpu(t, values.view(), [&](auto& ctx, auto v) { cpu::scale(ctx, alpha, v); });
      EXPECT_TRUE(bitwise_equal(x.download().view(), expected.view()));
      EXPECT_TRUE(x.gaps_untouched());
      // The test can tell: float arithmetic misses on these values.
      if (t == DType::f32) {
        EXPECT_GT(float_arithmetic_misses(alpha, values.view(), nullptr), 0);
      }
    }
  for (const double alpha : {0.1, 1.0 / 3.0})
    for (DType tx : kAllTypes)
      for (DType ty : kAllTypes) {
        SCOPED_TRACE(peft::detail::concat("axpy x ", name(tx), " y ", name(ty), " alpha=", alpha));
        const HostMatrix xv = random_matrix(tx, 37, 129, ++seed, 3.0);
        const HostMatrix yv = random_matrix(ty, 37, 129, ++seed, 3.0);
        DeviceMatrix x(tx, xv.view(), true), y(ty, yv.view());
        axpy(alpha, x, y);
        const HostMatrix expected = with_host_type(tx, [&](auto tag) {
          using TX = typename decltype(tag)::type;
          const auto x_typed = to_typed<TX>(xv.view());
          return on_cpu(ty, yv.view(), [&](auto& ctx, auto v) {
            cpu::axpy(ctx, alpha, as_const(x_typed.view()), v);
          });
        });
        EXPECT_TRUE(bitwise_equal(y.download().view(), expected.view()));
        if (tx == DType::f32 && ty == DType::f32) {
          EXPECT_GT(float_arithmetic_misses(alpha, xv.view(), &yv), 0);
        }
      }
}

TEST_F(CudaElementwise, CopyEveryPairOfTypesMatchesCpuBitwise) {
  std::uint32_t seed = 200;
  for (DType ts : kAllTypes)
    for (DType td : kAllTypes)
      for (const auto& [rows, cols] : kShapes)
        for (bool strided : {false, true}) {
          SCOPED_TRACE(
              peft::detail::concat("src ", name(ts), ", dst ", describe(td, rows, cols, strided)));
          const HostMatrix values = random_matrix(ts, rows, cols, ++seed, 3.0);
          DeviceMatrix src(ts, values.view(), strided), dst(td, rows, cols, !strided);
          copy(src, dst);
          const HostMatrix expected = with_host_type(ts, [&](auto tag) {
            using TS = typename decltype(tag)::type;
            const auto s_typed = to_typed<TS>(values.view());
            return on_cpu(td, filled(rows, cols, kNaN).view(),
                          [&](auto& ctx, auto v) { cpu::copy(ctx, as_const(s_typed.view()), v); });
          });
          EXPECT_TRUE(bitwise_equal(dst.download().view(), expected.view()));
          EXPECT_TRUE(src.gaps_untouched());
          EXPECT_TRUE(dst.gaps_untouched());
        }
}

TEST_F(CudaElementwise, CopySpecialValuesMatchesCpuBitwise) {
  // Overflow to inf in half, subnormals, signed zero, rounding ties, inf and NaN.
  HostMatrix special(2, 8);
  const double values[16] = {
      -0.0, 65504.0, 70000.0, 1e-5, -1e-7, 1.0 + 0x1.0p-8, 1.0 + 0x1.8p-8, 3.0e38,
      kInf, -kInf,   kNaN,    0.1,  -2.5,  1e-30,          5.9e-8,         1.0 + 0x1.0p-11};
  for (index_t i = 0; i < 16; ++i) special.data()[i] = values[i];
  for (DType ts : {DType::f32, DType::f64})
    for (DType td : kAllTypes) {
      SCOPED_TRACE(peft::detail::concat(name(ts), " -> ", name(td)));
      const HostMatrix src_values = round_to(ts, special.view());
      DeviceMatrix src(ts, src_values.view()), dst(td, 2, 8);
      copy(src, dst);
      const HostMatrix expected = with_host_type(ts, [&](auto tag) {
        using TS = typename decltype(tag)::type;
        const auto s_typed = to_typed<TS>(src_values.view());
        return on_cpu(td, filled(2, 8, 0.0).view(),
                      [&](auto& ctx, auto v) { cpu::copy(ctx, as_const(s_typed.view()), v); });
      });
      EXPECT_TRUE(bitwise_equal(dst.download().view(), expected.view()));
    }
}

TEST_F(CudaElementwise, BroadcastRowsMatchesCpu) {
  std::uint32_t seed = 300;
  for (DType tb : kAllTypes)
    for (DType ty : kAllTypes)
      for (const auto& [rows, cols] : kShapes)
        for (bool column : {false, true}) {
          SCOPED_TRACE(peft::detail::concat("b ", name(tb), column ? " (strided column)" : "",
                                            ", y ", describe(ty, rows, cols, true)));
          const HostMatrix bv = random_matrix(tb, 1, cols, ++seed);
          // Column: b is column 0 of a cols x 1 block of a larger matrix (increment = stride).
          HostMatrix b_col(cols, 1);
          for (index_t j = 0; j < cols; ++j) b_col.view()(j, 0) = bv.view()(0, j);
          DeviceMatrix b =
              column ? DeviceMatrix(tb, b_col.view(), true) : DeviceMatrix(tb, bv.view(), false);
          DeviceMatrix y(ty, rows, cols, true);
          broadcast_rows(b, column, y);
          const HostMatrix expected = with_host_type(tb, [&](auto tag) {
            using TB = typename decltype(tag)::type;
            const auto b_typed = to_typed<TB>(bv.view());
            const VectorView<const TB, Cpu> vec(b_typed.data(), cols);
            return on_cpu(ty, filled(rows, cols, kNaN).view(),
                          [&](auto& ctx, auto v) { cpu::broadcast_rows(ctx, vec, v); });
          });
          EXPECT_TRUE(bitwise_equal(y.download().view(), expected.view()));
          EXPECT_TRUE(y.gaps_untouched());
          EXPECT_TRUE(b.gaps_untouched());
        }
}

TEST_F(CudaElementwise, DotAndNormMatchCpu) {
  std::uint32_t seed = 400;
  for (DType tx : kAllTypes)
    for (DType ty : kAllTypes)
      for (const auto& [rows, cols] : kShapes)
        for (bool strided : {false, true}) {
          SCOPED_TRACE(
              peft::detail::concat("x ", name(tx), ", y ", describe(ty, rows, cols, strided)));
          const HostMatrix xv = random_matrix(tx, rows, cols, ++seed);
          const HostMatrix yv = random_matrix(ty, rows, cols, ++seed);
          DeviceMatrix x(tx, xv.view(), strided), y(ty, yv.view(), strided);  // NaN gaps
          double abs_sum = 0;
          for (index_t i = 0; i < xv.size(); ++i) abs_sum += std::abs(xv.data()[i] * yv.data()[i]);
          HostCtx ctx;
          const double ref = with_host_type(tx, [&](auto a) {
            return with_host_type(ty, [&](auto b) {
              using TX = typename decltype(a)::type;
              using TY = typename decltype(b)::type;
              const auto xt = to_typed<TX>(xv.view());
              const auto yt = to_typed<TY>(yv.view());
              return cpu::dot(ctx, as_const(xt.view()), as_const(yt.view()));
            });
          });
          const double tol = 1e-14 * double(rows * cols) * abs_sum + 1e-300;
          EXPECT_NEAR(dot(x, y), ref, tol);
          EXPECT_NEAR(dot(y, x), ref, tol);
          const double ref_norm = with_host_type(tx, [&](auto a) {
            using TX = typename decltype(a)::type;
            const auto xt = to_typed<TX>(xv.view());
            return cpu::norm(ctx, as_const(xt.view()));
          });
          EXPECT_NEAR(norm(x), ref_norm, 1e-12 * ref_norm);
        }
}

TEST_F(CudaElementwise, DotOfEmptyIsZeroAndAllFiniteOfEmptyIsTrue) {
  for (DType t : kAllTypes) {
    DeviceMatrix x(t, 0, 5), y(t, 0, 5);
    EXPECT_EQ(dot(x, y), 0.0);
    EXPECT_EQ(norm(x), 0.0);
    EXPECT_TRUE(all_finite(x));
  }
}

TEST_F(CudaElementwise, AllFiniteFindsNaNAndInfAndIgnoresGaps) {
  std::mt19937 gen(5);
  std::uint32_t seed = 500;
  for (DType t : kAllTypes)
    for (const auto& [rows, cols] : kShapes)
      for (bool strided : {false, true}) {
        SCOPED_TRACE(describe(t, rows, cols, strided));
        const HostMatrix values = random_matrix(t, rows, cols, ++seed);
        // The gaps hold NaN: a view that is finite must say so.
        DeviceMatrix x(t, values.view(), strided);
        EXPECT_TRUE(all_finite(x));
        std::uniform_int_distribution<index_t> at(0, rows * cols - 1);
        for (const double bad : {kNaN, kInf, -kInf}) {
          HostMatrix poisoned = copy_of(values.view());
          poisoned.data()[at(gen)] = bad;
          x.upload(poisoned.view());
          const bool cpu_result = with_host_type(t, [&](auto tag) {
            using T = typename decltype(tag)::type;
            const auto typed = to_typed<T>(poisoned.view());
            HostCtx ctx;
            return cpu::all_finite(ctx, as_const(typed.view()));
          });
          EXPECT_FALSE(cpu_result);
          EXPECT_EQ(all_finite(x), cpu_result) << "with " << bad;
        }
        // The largest finite values are finite.
        HostMatrix big = copy_of(values.view());
        big.data()[0] = t == DType::f16 ? 65504.0 : 3.0e38;
        x.upload(big.view());
        EXPECT_TRUE(all_finite(x));
      }
}

}  // namespace
}  // namespace peft::gpu::test
