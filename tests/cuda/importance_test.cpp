// AdaLoRA's primitives on the GPU equal the CPU's bit for bit: importance_update (the EMAs of
// |p · ∇p| and of its deviation, and their product, in double rounded once) for parameters and
// statistics in f32 and f64, and multiply for every pair of element types, on odd and strided
// shapes; mismatched shapes throw.

#include <gtest/gtest.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/reference.hpp"
#include "cuda/sparse_reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaImportance : public CudaTest {};

/// The CPU primitive on the same values, as double.
struct Statistics {
  HostMatrix sensitivity, uncertainty, score;
};

template <class P, class S>
Statistics cpu_importance(double b1, double b2, HostView value, HostView grad, HostView sens,
                          HostView unc) {
  HostCtx ctx;
  const auto v = to_typed<P>(value), g = to_typed<P>(grad);
  auto s = to_typed<S>(sens), u = to_typed<S>(unc);
  Matrix<S, Cpu> score(value.rows(), value.cols());
  cpu::importance_update(ctx, b1, b2, as_const(v.view()), as_const(g.view()), s.view(), u.view(),
                         score.view());
  return {to_double(as_const(s.view())), to_double(as_const(u.view())),
          to_double(as_const(score.view()))};
}

TEST_F(CudaImportance, ImportanceUpdateMatchesCpuBitForBit) {
  std::uint32_t seed = 1;
  for (DType tp : {DType::f32, DType::f64})
    for (DType ts : {DType::f32, DType::f64})
      for (const auto& [rows, cols] : kShapes)
        for (bool strided : {false, true}) {
          SCOPED_TRACE(
              peft::detail::concat(describe(tp, rows, cols, strided), " stats ", name(ts)));
          const HostMatrix value = random_matrix(tp, rows, cols, ++seed);
          const HostMatrix grad = random_matrix(tp, rows, cols, ++seed);
          const HostMatrix sens = absolute(random_matrix(ts, rows, cols, ++seed).view());
          const HostMatrix unc = absolute(random_matrix(ts, rows, cols, ++seed).view());
          DeviceMatrix v_d(tp, value.view(), strided), g_d(tp, grad.view(), !strided);
          DeviceMatrix s_d(ts, sens.view(), strided), u_d(ts, unc.view(), strided);
          DeviceMatrix score_d(ts, rows, cols, !strided);
          importance_update(0.85, 0.9, v_d, g_d, s_d, u_d, score_d);
          const Statistics expected = with_host_type(tp, [&](auto p) {
            return with_host_type(ts, [&](auto s) {
              using P = typename decltype(p)::type;
              using S = typename decltype(s)::type;
              if constexpr (std::is_floating_point_v<P> && std::is_floating_point_v<S>)
                return cpu_importance<P, S>(0.85, 0.9, value.view(), grad.view(), sens.view(),
                                            unc.view());
              else
                return Statistics{};
            });
          });
          EXPECT_TRUE(bitwise_equal(s_d.download().view(), expected.sensitivity.view()));
          EXPECT_TRUE(bitwise_equal(u_d.download().view(), expected.uncertainty.view()));
          EXPECT_TRUE(bitwise_equal(score_d.download().view(), expected.score.view()));
          EXPECT_TRUE(s_d.gaps_untouched());
          EXPECT_TRUE(score_d.gaps_untouched());
          EXPECT_TRUE(g_d.gaps_untouched());
        }
}

TEST_F(CudaImportance, MultiplyMatchesCpuBitForBit) {
  std::uint32_t seed = 100;
  for (DType tx : kAllTypes)
    for (DType ty : kAllTypes)
      for (const auto& [rows, cols] : {std::pair<index_t, index_t>{1, 1}, {17, 3}, {129, 17}}) {
        SCOPED_TRACE(peft::detail::concat(describe(tx, rows, cols, true), " into ", name(ty)));
        const HostMatrix x = random_matrix(tx, rows, cols, ++seed);
        const HostMatrix y = random_matrix(ty, rows, cols, ++seed);
        DeviceMatrix x_d(tx, x.view(), true), y_d(ty, y.view(), false);
        multiply(x_d, y_d);
        const HostMatrix expected = with_host_type(tx, [&](auto hx) {
          return with_host_type(ty, [&](auto hy) {
            using TX = typename decltype(hx)::type;
            using TY = typename decltype(hy)::type;
            const auto xt = to_typed<TX>(x.view());
            auto yt = to_typed<TY>(y.view());
            HostCtx ctx;
            cpu::multiply(ctx, as_const(xt.view()), yt.view());
            return to_double(as_const(yt.view()));
          });
        });
        EXPECT_TRUE(bitwise_equal(y_d.download().view(), expected.view()));
        EXPECT_TRUE(x_d.gaps_untouched());
      }
}

TEST_F(CudaImportance, ShapeMismatchThrows) {
  DeviceMatrix v(DType::f32, 3, 4), g(DType::f32, 3, 4), s(DType::f32, 3, 4), u(DType::f32, 3, 4);
  DeviceMatrix bad(DType::f32, 4, 3);
  expect_error([&] { importance_update(0.85, 0.85, v, g, s, u, bad); }, ErrorKind::shape,
               {"importance_update: shapes differ", "3 x 4", "4 x 3"});
  expect_error([&] { multiply(v, bad); }, ErrorKind::shape, {"multiply: shapes differ"});
}

}  // namespace
}  // namespace peft::gpu::test
