// The truncated SVD on the GPU (backend/cuda/svd.cuh) against the CPU's (backend/cpu/svd.hpp) on
// the same values: every dtype of W, f32 and f64 results, op = N and T, strided views (gaps left
// alone); reconstruction near the optimal rank-r error, determinism for a seed, and the same
// peft::Error as the CPU for every bad argument.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <Eigen/QR>

#include "cuda/reference.hpp"
#include "cuda/svd.hpp"

namespace peft::gpu::test {
namespace {

/// [m, n] with singular values sigma_i = decay^i and random singular vectors.
HostMatrix spectrum_matrix(index_t m, index_t n, double decay, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  const index_t k = std::min(m, n);
  auto orthonormal = [&](index_t rows) {
    Eigen::MatrixXd g(rows, k);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < k; ++j) g(i, j) = normal(gen);
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
    return Eigen::MatrixXd(qr.householderQ() * Eigen::MatrixXd::Identity(rows, k));
  };
  const Eigen::MatrixXd u = orthonormal(m), v = orthonormal(n);
  Eigen::VectorXd s(k);
  for (index_t i = 0; i < k; ++i) s(i) = std::pow(decay, double(i));
  const Eigen::MatrixXd w = u * s.asDiagonal() * v.transpose();
  HostMatrix out(m, n);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) out.view()(i, j) = w(i, j);
  return out;
}

HostMatrix transposed(HostView m) {
  HostMatrix t(m.cols(), m.rows());
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) t.view()(j, i) = m(i, j);
  return t;
}

/// The CPU's truncated_svd on the values w holds (already rounded to w_dtype), in `compute`.
SvdFactors cpu_svd(DType w_dtype, DType compute, Op op, HostView w, index_t r,
                   const SvdOptions& options) {
  return with_host_type(w_dtype, [&](auto w_tag) {
    using TW = typename decltype(w_tag)::type;
    const auto typed = to_typed<TW>(w);
    const index_t m = op == Op::N ? w.rows() : w.cols(), n = op == Op::N ? w.cols() : w.rows();
    auto run = [&](auto c_tag) {
      using C = typename decltype(c_tag)::type;
      HostCtx ctx;
      Matrix<C, Cpu> u(m, r), s(r, 1), vt(r, n);
      peft::cpu::truncated_svd(ctx, op, as_const(typed.view()), r, options, u.view(),
                               VectorView<C, Cpu>(s.data(), r), vt.view());
      return SvdFactors{to_double(as_const(u.view())), to_double(as_const(s.view())),
                        to_double(as_const(vt.view()))};
    };
    return compute == DType::f64 ? run(HostTag<double>{}) : run(HostTag<float>{});
  });
}

class CudaSvd : public CudaTest {};

// The same factors as the CPU, to the rounding of the compute type, for every input dtype.
TEST_F(CudaSvd, AgreesWithTheCpu) {
  constexpr index_t m = 70, n = 50, r = 8;
  const SvdOptions options{.oversampling = 6, .power_iterations = 3, .seed = 5};
  for (DType w_dtype : kAllTypes)
    for (DType compute : {DType::f32, DType::f64})
      for (Op op : {Op::N, Op::T})
        for (bool strided : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "W " << name(w_dtype) << " compute " << name(compute)
                       << (op == Op::T ? " op T" : " op N") << (strided ? " strided" : ""));
          const HostMatrix logical = spectrum_matrix(m, n, 0.8, 3);
          const HostMatrix stored =
              op == Op::N ? copy_of(logical.view()) : transposed(logical.view());
          const HostMatrix w = round_to(w_dtype, stored.view());
          bool gaps_untouched = false;
          const SvdFactors gpu =
              svd_on_device(w_dtype, compute, op, w.view(), r, options, strided, &gaps_untouched);
          const SvdFactors cpu = cpu_svd(w_dtype, compute, op, w.view(), r, options);
          const double tol = compute == DType::f64 ? 1e-10 : 1e-4;
          EXPECT_LT(relative_error(gpu.s.view(), cpu.s.view()), tol * 0.1);
          EXPECT_LT(relative_error(gpu.u.view(), cpu.u.view()), tol);
          EXPECT_LT(relative_error(gpu.vt.view(), cpu.vt.view()), tol);
          EXPECT_TRUE(gaps_untouched);
        }
}

// A larger matrix: U diag(S) Vt is within a hair of the optimal rank-r approximation.
TEST_F(CudaSvd, ReconstructionIsNearOptimal) {
  constexpr index_t m = 512, n = 384, r = 32;
  const HostMatrix w = round_to(DType::f32, spectrum_matrix(m, n, 0.9, 4).view());
  const SvdFactors f = svd_on_device(DType::f32, DType::f32, Op::N, w.view(), r, {});
  double error = 0, optimal = 0;
  for (index_t i = r; i < n; ++i) optimal += std::pow(0.9, 2.0 * double(i));
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double v = 0;
      for (index_t k = 0; k < r; ++k) v += f.u.view()(i, k) * f.s.view()(k, 0) * f.vt.view()(k, j);
      error += (w.view()(i, j) - v) * (w.view()(i, j) - v);
    }
  EXPECT_LT(std::sqrt(error), 1.01 * std::sqrt(optimal) + 1e-4);
}

TEST_F(CudaSvd, DeterministicForASeed) {
  const HostMatrix w = round_to(DType::bf16, spectrum_matrix(90, 64, 0.85, 6).view());
  const SvdOptions options{.oversampling = 4, .power_iterations = 2, .seed = 9};
  const SvdFactors a = svd_on_device(DType::bf16, DType::f32, Op::N, w.view(), 6, options);
  const SvdFactors b = svd_on_device(DType::bf16, DType::f32, Op::N, w.view(), 6, options);
  EXPECT_TRUE(bitwise_equal(a.u.view(), b.u.view()));
  EXPECT_TRUE(bitwise_equal(a.s.view(), b.s.view()));
  EXPECT_TRUE(bitwise_equal(a.vt.view(), b.vt.view()));
}

// Every bad argument throws the CPU's peft::Error, with the CPU's message.
TEST_F(CudaSvd, BadArgumentsThrowTheCpusErrors) {
  struct Bad {
    Op op;
    index_t w_rows, w_cols, r;
    SvdOptions options;
    index_t u_rows, u_cols, s_size, vt_rows, vt_cols;
  };
  const Bad cases[] = {
      {Op::N, 6, 4, 0, {}, 6, 0, 0, 0, 4},
      {Op::N, 6, 4, 5, {}, 6, 5, 5, 5, 4},
      {Op::N, 6, 4, 2, {.oversampling = -1}, 6, 2, 2, 2, 4},
      {Op::N, 6, 4, 2, {.power_iterations = -2}, 6, 2, 2, 2, 4},
      {Op::N, 6, 4, 2, {}, 2, 4, 2, 2, 4},
      {Op::N, 6, 4, 2, {}, 6, 2, 3, 2, 4},
      {Op::N, 6, 4, 2, {}, 6, 2, 2, 6, 2},
      {Op::N, 0, 4, 1, {}, 6, 2, 2, 2, 4},
      {Op::T, 6, 4, 2, {}, 6, 2, 2, 2, 4},
  };
  for (const Bad& b : cases) {
    std::string cpu_message;
    ErrorKind cpu_kind = ErrorKind::state;
    try {
      HostCtx ctx;
      Matrix<float, Cpu> w(b.w_rows, b.w_cols), u(b.u_rows, b.u_cols), s(1, b.s_size),
          vt(b.vt_rows, b.vt_cols);
      peft::cpu::truncated_svd(ctx, b.op, as_const(w.view()), b.r, b.options, u.view(),
                               VectorView<float, Cpu>(s.data(), b.s_size), vt.view());
      ADD_FAILURE() << "the CPU accepted a bad call";
    } catch (const Error& e) {
      cpu_message = e.what();
      cpu_kind = e.kind();
    }
    SCOPED_TRACE(cpu_message);
    expect_error(
        [&] {
          svd_on_device_with_shapes(b.op, b.w_rows, b.w_cols, b.r, b.options, b.u_rows, b.u_cols,
                                    b.s_size, b.vt_rows, b.vt_cols);
        },
        cpu_kind, {cpu_message});
  }
}

}  // namespace
}  // namespace peft::gpu::test
