// truncated_svd on the CPU (backend/cpu/svd.hpp): reconstruction of matrices of known spectrum
// against the optimal rank-r error (Eckart-Young), orthonormal factors, agreement with Eigen's
// exact SVD on small matrices, the sign rule, op = T, strided views, 16-bit and float inputs,
// determinism for a seed, and every bad argument.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::Op;
using peft::SvdOptions;
using peft::Vector;
using peft::VectorView;
using peft::primtest::expect_error;
using bf16 = Eigen::bfloat16;
using Dense = Eigen::MatrixXd;

/// A matrix with orthonormal columns, [rows, cols], from the QR of a Gaussian matrix.
Dense random_orthonormal(index_t rows, index_t cols, std::mt19937& gen) {
  std::normal_distribution<double> normal;
  Dense g(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) g(i, j) = normal(gen);
  Eigen::HouseholderQR<Dense> qr(g);
  return qr.householderQ() * Dense::Identity(rows, cols);
}

/// U0 diag(sigma) V0ᵀ [m, n] with random orthonormal U0 and V0.
Dense with_spectrum(index_t m, index_t n, const std::vector<double>& sigma, std::uint32_t seed) {
  std::mt19937 gen(seed);
  const auto k = static_cast<index_t>(sigma.size());
  const Dense u0 = random_orthonormal(m, k, gen), v0 = random_orthonormal(n, k, gen);
  Eigen::VectorXd s(k);
  for (index_t i = 0; i < k; ++i) s(i) = sigma[static_cast<std::size_t>(i)];
  return u0 * s.asDiagonal() * v0.transpose();
}

template <class T>
Matrix<T, Cpu> to_matrix(const Dense& d) {
  Matrix<T, Cpu> m(d.rows(), d.cols());
  for (index_t i = 0; i < d.rows(); ++i)
    for (index_t j = 0; j < d.cols(); ++j) m.view()(i, j) = peft::convert_value<T>(d(i, j));
  return m;
}

template <class T>
Dense to_dense(MatrixView<T, Cpu> v) {
  Dense d(v.rows(), v.cols());
  for (index_t i = 0; i < v.rows(); ++i)
    for (index_t j = 0; j < v.cols(); ++j) d(i, j) = peft::convert_value<double>(v(i, j));
  return d;
}

/// The three outputs of one truncated SVD.
template <class C>
struct Result {
  Matrix<C, Cpu> u, vt;
  Vector<C, Cpu> s;
  Result(index_t m, index_t n, index_t r) : u(m, r), vt(r, n), s(r) {}

  Dense reconstruction() const {
    Dense s_diag = Dense::Zero(s.size(), s.size());
    for (index_t i = 0; i < s.size(); ++i) s_diag(i, i) = s.data()[i];
    return to_dense(u.view()) * s_diag * to_dense(vt.view());
  }
};

template <class C, class TW>
Result<C> svd_of(Context<Cpu>& ctx, MatrixView<TW, Cpu> w, index_t r, const SvdOptions& options,
                 Op op = Op::N) {
  const index_t m = op == Op::N ? w.rows() : w.cols(), n = op == Op::N ? w.cols() : w.rows();
  Result<C> out(m, n, r);
  peft::cpu::truncated_svd(ctx, op, w, r, options, out.u.view(), out.s.view(), out.vt.view());
  return out;
}

/// ‖sum over the rows of X of the outer products‖: max |X Xᵀ − I|.
double orthonormality_error(const Dense& rows) {
  return (rows * rows.transpose() - Dense::Identity(rows.rows(), rows.rows()))
      .cwiseAbs()
      .maxCoeff();
}

double optimal_error(const std::vector<double>& sigma, std::size_t r) {
  double e = 0;
  for (std::size_t i = r; i < sigma.size(); ++i) e += sigma[i] * sigma[i];
  return std::sqrt(e);
}

template <class C>
constexpr double eps() {
  return std::is_same_v<C, double> ? 1e-15 : 1e-7;
}

template <class C>
class TruncatedSvd : public ::testing::Test {
 protected:
  Context<Cpu> ctx;
};
using ComputeTypes = ::testing::Types<double, float>;
TYPED_TEST_SUITE(TruncatedSvd, ComputeTypes);

// Geometric and slowly (harmonically) decaying spectra: the error of the rank-r result is within
// a few percent of the optimal rank-r error, factors are orthonormal, singular values accurate.
TYPED_TEST(TruncatedSvd, KnownSpectrumReconstructionIsNearOptimal) {
  using C = TypeParam;
  constexpr index_t m = 300, n = 200, r = 20;
  for (bool harmonic : {false, true}) {
    SCOPED_TRACE(harmonic ? "sigma_i = 1 / (1 + i)" : "sigma_i = 0.8^i");
    std::vector<double> sigma(n);
    for (index_t i = 0; i < n; ++i)
      sigma[std::size_t(i)] = harmonic ? 1.0 / double(1 + i) : std::pow(0.8, double(i));
    const Dense w = with_spectrum(m, n, sigma, 7);
    const auto wm = to_matrix<C>(w);
    const auto result = svd_of<C>(this->ctx, as_const(wm.view()), r, {.power_iterations = 4});

    const double optimal = optimal_error(sigma, r);
    const double error = (w - result.reconstruction()).norm();
    EXPECT_LT(error, (harmonic ? 1.05 : 1.001) * optimal + 100 * eps<C>() * w.norm())
        << "optimal " << optimal;
    EXPECT_GE(error, optimal - 100 * eps<C>() * w.norm()) << "no rank-r matrix beats the optimum";
    EXPECT_LT(orthonormality_error(to_dense(result.u.view()).transpose()), 100 * eps<C>());
    EXPECT_LT(orthonormality_error(to_dense(result.vt.view())), 100 * eps<C>());
    for (index_t i = 0; i < r; ++i) {
      EXPECT_LT(result.s.data()[i], sigma[std::size_t(i)] * (1 + 100 * eps<C>())) << i;
      EXPECT_GT(result.s.data()[i], sigma[std::size_t(i)] * (harmonic ? 0.97 : 0.9999)) << i;
      if (i > 0) {
        EXPECT_LE(result.s.data()[i], result.s.data()[i - 1]) << "descending";
      }
    }
  }
}

// Without power iterations on a slowly decaying spectrum the range finder alone is worse, and
// iterations bring it back towards the optimum.
TYPED_TEST(TruncatedSvd, PowerIterationsImproveASlowlyDecayingSpectrum) {
  using C = TypeParam;
  constexpr index_t m = 200, n = 150, r = 10;
  std::vector<double> sigma(n);
  for (index_t i = 0; i < n; ++i) sigma[std::size_t(i)] = 1.0 / std::sqrt(double(1 + i));
  const Dense w = with_spectrum(m, n, sigma, 3);
  const auto wm = to_matrix<C>(w);
  double previous = 1e300;
  for (index_t q : {0, 2, 6}) {
    const auto result =
        svd_of<C>(this->ctx, as_const(wm.view()), r, {.oversampling = 5, .power_iterations = q});
    const double error = (w - result.reconstruction()).norm();
    EXPECT_LT(error, previous) << "q = " << q;
    previous = error;
  }
  EXPECT_LT(previous, 1.02 * optimal_error(sigma, r));
}

/// Applies the sign rule of backend/svd.hpp to an exact SVD's U [m, k] and V [n, k].
void flip_like_the_library(Dense& u, Dense& v) {
  for (index_t j = 0; j < u.cols(); ++j) {
    index_t best = 0;
    for (index_t i = 1; i < u.rows(); ++i)
      if (std::abs(u(i, j)) > std::abs(u(best, j))) best = i;
    if (u(best, j) < 0) {
      u.col(j) *= -1;
      v.col(j) *= -1;
    }
  }
}

// Small matrices, where the sketch spans the whole range (l = min(m, n)) or the spectrum has a
// clear gap: the same singular values and, after the sign rule, the same vectors as Eigen's
// exact JacobiSVD and BDCSVD.
TYPED_TEST(TruncatedSvd, AgreesWithEigensExactSvdOnSmallMatrices) {
  using C = TypeParam;
  const double tol = std::is_same_v<C, double> ? 1e-11 : 2e-5;
  struct Shape {
    index_t m, n, r, oversampling, q;
  };
  std::mt19937 gen(5);
  std::uniform_real_distribution<double> uniform(-1, 1);
  for (const Shape& sh : {Shape{9, 7, 4, 10, 0}, Shape{7, 9, 7, 10, 1}, Shape{5, 5, 1, 10, 2},
                          Shape{12, 3, 2, 10, 0}, Shape{1, 6, 1, 10, 0}, Shape{6, 1, 1, 0, 3}}) {
    SCOPED_TRACE(testing::Message() << sh.m << " x " << sh.n << " r " << sh.r);
    Dense w(sh.m, sh.n);
    for (index_t i = 0; i < sh.m; ++i)
      for (index_t j = 0; j < sh.n; ++j) w(i, j) = uniform(gen);
    const auto wm = to_matrix<C>(w);
    const Dense wc = to_dense(as_const(wm.view()));  // the same values as the input
    const auto result = svd_of<C>(this->ctx, as_const(wm.view()), sh.r,
                                  {.oversampling = sh.oversampling, .power_iterations = sh.q});

    Eigen::JacobiSVD<Dense> jacobi(wc, Eigen::ComputeThinU | Eigen::ComputeThinV);
    Eigen::BDCSVD<Dense> bdc(wc, Eigen::ComputeThinU | Eigen::ComputeThinV);
    Dense u = jacobi.matrixU().leftCols(sh.r), v = jacobi.matrixV().leftCols(sh.r);
    flip_like_the_library(u, v);
    for (index_t i = 0; i < sh.r; ++i) {
      EXPECT_NEAR(result.s.data()[i], jacobi.singularValues()(i), tol * jacobi.singularValues()(0));
      EXPECT_NEAR(result.s.data()[i], bdc.singularValues()(i), tol * bdc.singularValues()(0));
    }
    EXPECT_LT((to_dense(result.u.view()) - u).cwiseAbs().maxCoeff(), tol * 10);
    EXPECT_LT((to_dense(result.vt.view()) - v.transpose()).cwiseAbs().maxCoeff(), tol * 10);
  }
  // A sketch narrower than the matrix, with a clear gap after r.
  std::vector<double> sigma = {5, 4, 3, 0.01, 0.005, 0.002, 0.001};
  const Dense w = with_spectrum(40, 30, sigma, 9);
  const auto wm = to_matrix<C>(w);
  const auto result =
      svd_of<C>(this->ctx, as_const(wm.view()), 3, {.oversampling = 2, .power_iterations = 3});
  Eigen::JacobiSVD<Dense> exact(to_dense(as_const(wm.view())),
                                Eigen::ComputeThinU | Eigen::ComputeThinV);
  Dense u = exact.matrixU().leftCols(3), v = exact.matrixV().leftCols(3);
  flip_like_the_library(u, v);
  EXPECT_LT((to_dense(result.u.view()) - u).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_LT((to_dense(result.vt.view()) - v.transpose()).cwiseAbs().maxCoeff(), 1e-4);
}

// The entry of largest magnitude of every column of U is positive.
TYPED_TEST(TruncatedSvd, SignRuleHolds) {
  using C = TypeParam;
  std::mt19937 gen(2);
  std::normal_distribution<double> normal;
  Dense w(30, 20);
  for (index_t i = 0; i < w.rows(); ++i)
    for (index_t j = 0; j < w.cols(); ++j) w(i, j) = normal(gen);
  const auto wm = to_matrix<C>(w);
  for (std::uint64_t seed : {0, 1, 2}) {
    const auto result = svd_of<C>(this->ctx, as_const(wm.view()), 8, {.seed = seed});
    const Dense u = to_dense(result.u.view());
    for (index_t j = 0; j < u.cols(); ++j) {
      index_t best = 0;
      for (index_t i = 1; i < u.rows(); ++i)
        if (std::abs(u(i, j)) > std::abs(u(best, j))) best = i;
      EXPECT_GT(u(best, j), 0) << "column " << j << " seed " << seed;
    }
  }
}

// op = T on W [n, m] equals op = N on a transposed copy, with strided U, Vt and W and an S of
// increment 2 (the gaps stay untouched).
TYPED_TEST(TruncatedSvd, TransposedOperandAndStridedViews) {
  using C = TypeParam;
  const double tol = std::is_same_v<C, double> ? 1e-10 : 1e-4;
  constexpr index_t m = 50, n = 35, r = 6;
  std::vector<double> sigma(n);
  for (index_t i = 0; i < n; ++i) sigma[std::size_t(i)] = std::pow(0.7, double(i));
  const Dense w = with_spectrum(m, n, sigma, 4);
  const auto wm = to_matrix<C>(w);
  const Dense wt_dense = w.transpose();
  Matrix<C, Cpu> wt_storage(n + 3, m + 5);
  const auto wt = wt_storage.view().block(1, 2, n, m);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < m; ++j) wt(i, j) = wm.view()(j, i);

  const auto plain = svd_of<C>(this->ctx, as_const(wm.view()), r, {});
  Matrix<C, Cpu> u_storage(m + 2, r + 3), vt_storage(r + 1, n + 4);
  Vector<C, Cpu> s_storage(2 * r);
  const auto u = u_storage.view().block(1, 1, m, r);
  const auto vt = vt_storage.view().block(1, 2, r, n);
  const VectorView<C, Cpu> s(s_storage.data(), r, 2);
  peft::cpu::truncated_svd(this->ctx, Op::T, as_const(wt), r, {}, u, s, vt);

  EXPECT_LT((to_dense(as_const(u)) - to_dense(plain.u.view())).cwiseAbs().maxCoeff(), tol);
  EXPECT_LT((to_dense(as_const(vt)) - to_dense(plain.vt.view())).cwiseAbs().maxCoeff(), tol);
  for (index_t i = 0; i < r; ++i) {
    EXPECT_NEAR(s[i], plain.s.data()[i], tol * sigma[0]);
    EXPECT_EQ(s_storage.data()[2 * i + 1], C(0)) << "gap of S written";
  }
  for (index_t i = 0; i < u_storage.rows(); ++i)
    for (index_t j = 0; j < u_storage.cols(); ++j)
      if (i < 1 || i > m || j < 1 || j > r) {
        EXPECT_EQ(u_storage.view()(i, j), C(0));
      }
  for (index_t i = 0; i < vt_storage.rows(); ++i)
    for (index_t j = 0; j < vt_storage.cols(); ++j)
      if (i < 1 || j < 2 || j >= n + 2) {
        EXPECT_EQ(vt_storage.view()(i, j), C(0));
      }
}

template <class C>
bool bitwise_equal(const Result<C>& a, const Result<C>& b) {
  const auto same = [](const C* x, const C* y, index_t count) {
    return std::memcmp(x, y, sizeof(C) * std::size_t(count)) == 0;
  };
  return same(a.u.data(), b.u.data(), a.u.size()) && same(a.vt.data(), b.vt.data(), a.vt.size()) &&
         same(a.s.data(), b.s.data(), a.s.size());
}

// The same seed gives the same bits; another seed another sketch, as accurate.
TYPED_TEST(TruncatedSvd, DeterministicForASeed) {
  using C = TypeParam;
  constexpr index_t m = 64, n = 48, r = 5;
  std::vector<double> sigma(n);
  for (index_t i = 0; i < n; ++i) sigma[std::size_t(i)] = 1.0 / double(1 + i);
  const auto wm = to_matrix<C>(with_spectrum(m, n, sigma, 1));
  const SvdOptions options{.oversampling = 3, .power_iterations = 2, .seed = 42};
  const auto a = svd_of<C>(this->ctx, as_const(wm.view()), r, options);
  const auto b = svd_of<C>(this->ctx, as_const(wm.view()), r, options);
  EXPECT_TRUE(bitwise_equal(a, b));
  const auto c = svd_of<C>(this->ctx, as_const(wm.view()), r,
                           {.oversampling = 3, .power_iterations = 2, .seed = 43});
  EXPECT_FALSE(bitwise_equal(a, c));
  for (index_t i = 0; i < r; ++i)
    EXPECT_NEAR(c.s.data()[i], a.s.data()[i], 1e-2 * sigma[std::size_t(i)]);
}

// A bf16 (or float) W is converted to the compute type first: the result is bit for bit the one
// of the converted matrix.
TEST(TruncatedSvdInputs, SixteenBitAndFloatInputsEqualTheirConversion) {
  Context<Cpu> ctx;
  std::mt19937 gen(8);
  std::uniform_real_distribution<double> uniform(-1, 1);
  Dense w(40, 28);
  for (index_t i = 0; i < w.rows(); ++i)
    for (index_t j = 0; j < w.cols(); ++j) w(i, j) = uniform(gen);
  const auto wb = to_matrix<bf16>(w);
  const auto wf = to_matrix<float>(to_dense(as_const(wb.view())));
  const auto from_bf16 = svd_of<float>(ctx, as_const(wb.view()), 4, {});
  const auto from_float = svd_of<float>(ctx, as_const(wf.view()), 4, {});
  EXPECT_TRUE(bitwise_equal(from_bf16, from_float));

  const auto wd = to_matrix<double>(to_dense(as_const(wf.view())));
  const auto float_in_double = svd_of<double>(ctx, as_const(wf.view()), 4, {});
  const auto from_double = svd_of<double>(ctx, as_const(wd.view()), 4, {});
  EXPECT_TRUE(bitwise_equal(float_in_double, from_double));
}

// Both QR paths (LAPACK's with PEFT_USE_BLAS, Eigen's otherwise): Q R = X, QᵀQ = I, R upper
// triangular, and the two agree.
TEST(TruncatedSvdInputs, BothQrPathsFactoriseTallMatrices) {
  std::mt19937 gen(4);
  std::normal_distribution<double> normal;
  constexpr index_t k = 300, l = 17;
  Dense x(k, l);
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < l; ++j) x(i, j) = normal(gen);
  // The row-major [l, k] buffer that holds X column-major.
  auto buffer = [&] {
    Matrix<double, Cpu> t(l, k);
    for (index_t i = 0; i < k; ++i)
      for (index_t j = 0; j < l; ++j) t.view()(j, i) = x(i, j);
    return t;
  };
  auto as_dense = [&](const Matrix<double, Cpu>& t) {
    return Dense(to_dense(t.view()).transpose());
  };
  std::vector<Dense> qs;
  auto check = [&](const Matrix<double, Cpu>& t, const Dense& r) {
    const Dense q = as_dense(t);
    EXPECT_LT((q * r - x).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_LT((q.transpose() * q - Dense::Identity(l, l)).cwiseAbs().maxCoeff(), 1e-13);
    for (index_t i = 0; i < l; ++i)
      for (index_t j = 0; j < i; ++j) EXPECT_EQ(r(i, j), 0.0);
    qs.push_back(q);
  };
  {
    auto t = buffer();
    Eigen::MatrixXd r;
    peft::cpu::detail::eigen_orthonormalise(t.view(), &r);
    check(t, r);
  }
  {
    auto t = buffer();
    Eigen::MatrixXd r;
    peft::cpu::detail::orthonormalise(t.view(), &r);  // LAPACK's with PEFT_USE_BLAS
    check(t, r);
  }
  EXPECT_LT((qs[0] - qs[1]).cwiseAbs().maxCoeff(), 1e-12) << "the same Householder convention";
}

TEST(TruncatedSvdInputs, BadArgumentsThrow) {
  Context<Cpu> ctx;
  Matrix<float, Cpu> w(6, 4), u(6, 2), vt(2, 4), empty(0, 4);
  Vector<float, Cpu> s(2), s3(3);
  const auto cw = as_const(w.view());
  const auto call = [&](auto&&... args) { peft::cpu::truncated_svd(ctx, args...); };
  expect_error([&] { call(cw, index_t(0), SvdOptions{}, u.view(), s.view(), vt.view()); },
               ErrorKind::invalid_argument, {"truncated_svd", "r is 0", "expected 1 to min(6, 4)"});
  expect_error(
      [&] {
        Matrix<float, Cpu> u5(6, 5), vt5(5, 4);
        Vector<float, Cpu> s5(5);
        call(cw, index_t(5), SvdOptions{}, u5.view(), s5.view(), vt5.view());
      },
      ErrorKind::invalid_argument, {"r is 5", "= 4"});
  expect_error(
      [&] { call(cw, index_t(2), SvdOptions{.oversampling = -1}, u.view(), s.view(), vt.view()); },
      ErrorKind::invalid_argument, {"oversampling is -1"});
  expect_error(
      [&] {
        call(cw, index_t(2), SvdOptions{.power_iterations = -2}, u.view(), s.view(), vt.view());
      },
      ErrorKind::invalid_argument, {"power_iterations is -2"});
  expect_error([&] { call(cw, index_t(2), SvdOptions{}, vt.view(), s.view(), vt.view()); },
               ErrorKind::shape, {"U is 2 x 4", "expected 6 x 2"});
  expect_error([&] { call(cw, index_t(2), SvdOptions{}, u.view(), s3.view(), vt.view()); },
               ErrorKind::shape, {"S has 3 elements", "r = 2"});
  expect_error([&] { call(cw, index_t(2), SvdOptions{}, u.view(), s.view(), u.view()); },
               ErrorKind::shape, {"Vt is 6 x 2", "expected 2 x 4"});
  expect_error(
      [&] {
        call(as_const(empty.view()), index_t(1), SvdOptions{}, u.view(), s.view(), vt.view());
      },
      ErrorKind::shape, {"W is 0 x 4", "non-empty"});
  // op = T: U follows the columns of W.
  expect_error([&] { call(Op::T, cw, index_t(2), SvdOptions{}, u.view(), s.view(), vt.view()); },
               ErrorKind::shape, {"U is 6 x 2", "expected 4 x 2"});
}

}  // namespace
