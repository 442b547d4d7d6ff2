// NOLA on the CPU: the basis primitives (nola_combine, nola_project) against naive references
// built from RandomBasis::entry, the layer's generate and pull-back against the definition,
// finite differences on sizes that span several tiles, chunks and basis groups, determinism,
// training, and every bad argument. The conformance suite runs the Adapter contract on top.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

static_assert(Adapter<Nola<float, Cpu>>);
static_assert(Adapter<Nola<double, Cpu>>);
static_assert(Adapter<Nola<Eigen::bfloat16, Cpu>>);
static_assert(std::is_same_v<Nola<Eigen::bfloat16, Cpu>::param_type, float>);

// ---- references ------------------------------------------------------------------------------

/// Σ_m c_m basis_m in double, from RandomBasis::entry (the definition).
Matrix<double, Cpu> reference_combination(const RandomBasis& basis, const std::vector<double>& c,
                                          index_t rows, index_t cols) {
  Matrix<double, Cpu> out(rows, cols);
  for (index_t e = 0; e < rows * cols; ++e) {
    double s = 0;
    for (std::size_t m = 0; m < c.size(); ++m)
      s += c[m] * double(basis.entry(std::uint32_t(m), std::uint64_t(e)));
    out.data()[e] = s;
  }
  return out;
}

/// ⟨g, basis_m⟩ for every m, in double.
std::vector<double> reference_projection(const RandomBasis& basis, MatrixView<const double, Cpu> g,
                                         index_t count) {
  std::vector<double> out(static_cast<std::size_t>(count));
  for (index_t m = 0; m < count; ++m) {
    double s = 0;
    for (index_t i = 0; i < g.rows(); ++i)
      for (index_t j = 0; j < g.cols(); ++j)
        s += g(i, j) * double(basis.entry(std::uint32_t(m), std::uint64_t(i * g.cols() + j)));
    out[static_cast<std::size_t>(m)] = s;
  }
  return out;
}

std::vector<double> random_vector(index_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

template <class P>
Matrix<P, Cpu> column(const std::vector<double>& v) {
  Matrix<P, Cpu> m(index_t(v.size()), 1);
  for (std::size_t i = 0; i < v.size(); ++i) m.data()[i] = static_cast<P>(v[i]);
  return m;
}

/// A rows x cols view inside a larger matrix filled with NaN (a primitive that ignores the stride
/// reads or writes the gaps).
template <class P>
struct Strided {
  Matrix<P, Cpu> storage;
  MatrixView<P, Cpu> view;
  Strided(index_t rows, index_t cols)
      : storage(rows + 2, cols + 3), view(storage.view().block(1, 2, rows, cols)) {
    for (index_t i = 0; i < storage.size(); ++i)
      storage.data()[i] = std::numeric_limits<P>::quiet_NaN();
  }
  bool gaps_are_nan() const {
    index_t nan = 0;
    for (index_t i = 0; i < storage.size(); ++i) nan += std::isnan(storage.data()[i]) ? 1 : 0;
    return nan == storage.size() - view.size();
  }
};

const RandomBasis kBases[] = {
    make_basis(0, 0, RandomPurpose::nola_basis_a, 1.0f),
    make_basis(42, 7, RandomPurpose::nola_basis_b, 0.125f),
    make_basis(0x0123456789ABCDEFull, 0xFFFFFFFFu, RandomPurpose::nola_basis_a, 0.0441941738f),
};

// ---- the tile generator and the primitives ---------------------------------------------------

// Every Philox kernel this machine runs (portable, AVX2, AVX-512), including tiles that wrap the
// 32-bit block counter.
TEST(NolaBasis, TilesAreBitIdenticalToTheScalarDefinition) {
  using cpu::detail::PhiloxKernel;
  alignas(64) float tile[cpu::detail::kNolaTile];
  int kernels = 0;
  for (PhiloxKernel kernel : {PhiloxKernel::portable, PhiloxKernel::avx2, PhiloxKernel::avx512}) {
    if (!cpu::detail::philox_kernel_supported(kernel)) continue;
    ++kernels;
    for (const RandomBasis& b : kBases)
      for (std::uint32_t m : {0u, 1u, 63u, 64u, 0xFFFFFFFFu})
        for (std::uint64_t first : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{977},
                                    (std::uint64_t{1} << 32) - 5, (std::uint64_t{3} << 32) + 7}) {
          cpu::detail::basis_tile(b.member(m), first, b.bound, tile, kernel);
          for (index_t l = 0; l < cpu::detail::kNolaTile; ++l) {
            // Entries past the stream's 2^32 blocks wrap around, as the counter does.
            const std::uint64_t entry = (4 * first + std::uint64_t(l)) % kMaxStreamElements;
            const float expected = b.entry(m, entry);
            ASSERT_EQ(std::memcmp(&expected, &tile[cpu::detail::tile_position(l)], sizeof(float)),
                      0)
                << "kernel " << int(kernel) << ", member " << m << ", block " << first
                << ", offset " << l;
          }
        }
  }
  EXPECT_GE(kernels, 1);
}

TEST(NolaBasis, EntriesAreUniformWithTheGivenBound) {
  const RandomBasis b = make_basis(5, 1, RandomPurpose::nola_basis_a, 0.25f);
  double sum = 0, sum_sq = 0, max_abs = 0;
  const int n = 200000;
  for (int e = 0; e < n; ++e) {
    const double v = b.entry(3, std::uint64_t(e));
    sum += v;
    sum_sq += v * v;
    max_abs = std::max(max_abs, std::abs(v));
  }
  EXPECT_LE(max_abs, 0.25);
  EXPECT_GT(max_abs, 0.249);
  EXPECT_NEAR(sum / n, 0.0, 0.002);
  EXPECT_NEAR(sum_sq / n, 0.25 * 0.25 / 3, 0.002);
  // Members, streams and purposes differ.
  const RandomBasis other_stream = make_basis(5, 2, RandomPurpose::nola_basis_a, 0.25f);
  const RandomBasis other_purpose = make_basis(5, 1, RandomPurpose::nola_basis_b, 0.25f);
  int same_member = 0, same_stream = 0, same_purpose = 0;
  for (int e = 0; e < 1000; ++e) {
    same_member += b.entry(3, e) == b.entry(4, e);
    same_stream += b.entry(3, e) == other_stream.entry(3, e);
    same_purpose += b.entry(3, e) == other_purpose.entry(3, e);
  }
  EXPECT_LT(same_member, 5);
  EXPECT_LT(same_stream, 5);
  EXPECT_LT(same_purpose, 5);
}

template <class P>
class NolaPrimitives : public ::testing::Test {};
using PrimitiveTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(NolaPrimitives, PrimitiveTypes);

// Shapes below, at and across a tile (512), and tiny ones; member counts across a group (64).
struct Shape {
  index_t rows, cols, count;
};
const Shape kShapes[] = {{1, 1, 1}, {3, 7, 4}, {5, 3, 70}, {8, 64, 1}, {7, 150, 3}, {33, 97, 66}};

TYPED_TEST(NolaPrimitives, CombineMatchesTheDefinition) {
  using P = TypeParam;
  HostCtx ctx;
  const double tol = std::is_same_v<P, double> ? 1e-14 : 1e-6;
  std::uint32_t seed = 1;
  for (const RandomBasis& b : kBases)
    for (const Shape& s : kShapes)
      for (bool strided : {false, true})
        for (double beta : {0.0, 1.0, -0.5}) {
          SCOPED_TRACE(testing::Message() << s.rows << "x" << s.cols << " k=" << s.count
                                          << (strided ? " strided" : "") << " beta=" << beta);
          auto c = random_vector(s.count, ++seed);
          if (s.count > 2) c[1] = 0.0;  // a skipped member
          auto expected = reference_combination(b, c, s.rows, s.cols);
          auto start = random_matrix<P>(s.rows, s.cols, ++seed);
          for (index_t i = 0; i < expected.size(); ++i)
            expected.data()[i] += beta * double(start.data()[i]);
          Strided<P> out(s.rows, s.cols);
          Matrix<P, Cpu> plain(s.rows, s.cols);
          auto target = strided ? out.view : plain.view();
          if (beta != 0.0) copy(ctx, as_const(start.view()), target);
          auto coefficients = column<P>(c);
          // A [k, 1] column and a [1, k] row give the same result.
          nola_combine(ctx, b, as_const(coefficients.view()), beta, target);
          EXPECT_LT(relative_error(as_const(target), as_const(expected.view())), tol);
          if (strided) {
            EXPECT_TRUE(out.gaps_are_nan());
          }
          Matrix<P, Cpu> again(s.rows, s.cols);
          if (beta != 0.0) copy(ctx, as_const(start.view()), again.view());
          nola_combine(ctx, b,
                       MatrixView<const P, Cpu>(coefficients.data(), 1, coefficients.rows()), beta,
                       again.view());
          EXPECT_TRUE(bitwise_equal(as_const(again.view()), as_const(target)));
        }
}

TYPED_TEST(NolaPrimitives, ProjectMatchesTheDefinitionAndAccumulates) {
  using P = TypeParam;
  HostCtx ctx;
  const double tol = std::is_same_v<P, double> ? 1e-13 : 1e-6;
  std::uint32_t seed = 100;
  for (const RandomBasis& b : kBases)
    for (const Shape& s : kShapes)
      for (bool strided : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << s.rows << "x" << s.cols << " k=" << s.count << (strided ? " strided" : ""));
        auto g = random_matrix<P>(s.rows, s.cols, ++seed);
        auto g_double = converted<double>(as_const(g.view()));
        auto expected = reference_projection(b, as_const(g_double.view()), s.count);
        const auto start = random_vector(s.count, ++seed);
        for (std::size_t m = 0; m < expected.size(); ++m)
          expected[m] += double(static_cast<P>(start[m]));
        Strided<P> gs(s.rows, s.cols);
        copy(ctx, as_const(g.view()), gs.view);
        auto grads = column<P>(start);
        nola_project(ctx, b, as_const(strided ? gs.view : g.view()), grads.view());
        auto want = column<double>(expected);
        EXPECT_LT(relative_error(as_const(grads.view()), as_const(want.view())), tol);
        // A [1, k] row gives the same bits.
        auto row = column<P>(start);
        nola_project(ctx, b, as_const(g.view()), MatrixView<P, Cpu>(row.data(), 1, s.count));
        EXPECT_TRUE(bitwise_equal(as_const(row.view()), as_const(grads.view())));
      }
}

// Sizes that take several chunks and groups in parallel: the same bits with 1 and 2 threads, and
// both agree with the definition.
TYPED_TEST(NolaPrimitives, ResultsDoNotDependOnTheThreadCount) {
  using P = TypeParam;
  const index_t rows = 9, cols = 2000, count = 130;  // 18000 entries: 4 chunks; 3 groups
  const RandomBasis b = kBases[1];
  auto c = random_vector(count, 7);
  auto coefficients = column<P>(c);
  auto g = random_matrix<P>(rows, cols, 8);
  Matrix<P, Cpu> out1(rows, cols), out2(rows, cols);
  Matrix<P, Cpu> grads1(count, 1), grads2(count, 1);
  HostCtx one({.threads = 1}), two({.threads = 2});
  nola_combine(one, b, as_const(coefficients.view()), 0.0, out1.view());
  nola_combine(two, b, as_const(coefficients.view()), 0.0, out2.view());
  EXPECT_TRUE(bitwise_equal(as_const(out1.view()), as_const(out2.view())));
  nola_project(one, b, as_const(g.view()), grads1.view());
  nola_project(two, b, as_const(g.view()), grads2.view());
  EXPECT_TRUE(bitwise_equal(as_const(grads1.view()), as_const(grads2.view())));

  auto g_double = converted<double>(as_const(g.view()));
  auto want = column<double>(reference_projection(b, as_const(g_double.view()), count));
  const double project_tol = std::is_same_v<P, double> ? 1e-13 : 1e-6;
  EXPECT_LT(relative_error(as_const(grads1.view()), as_const(want.view())), project_tol);
  auto expected = reference_combination(b, c, rows, cols);
  const double combine_tol = std::is_same_v<P, double> ? 1e-14 : 1e-6;
  EXPECT_LT(relative_error(as_const(out1.view()), as_const(expected.view())), combine_tol);
  EXPECT_GT(cpu::nola_project_workspace_bytes(one, count, rows * cols), 0);
}

// Every dtype sees the same basis: a one-hot combination is the float entry, exactly.
TEST(NolaBasis, FloatAndDoubleCombinationsOfOneMemberAreTheSameBits) {
  HostCtx ctx;
  const RandomBasis b = kBases[2];
  for (index_t m : {0, 5}) {
    std::vector<double> one_hot(7, 0.0);
    one_hot[static_cast<std::size_t>(m)] = 1.0;
    Matrix<float, Cpu> f(13, 41);
    Matrix<double, Cpu> d(13, 41);
    nola_combine(ctx, b, as_const(column<float>(one_hot).view()), 0.0, f.view());
    nola_combine(ctx, b, as_const(column<double>(one_hot).view()), 0.0, d.view());
    for (index_t e = 0; e < f.size(); ++e) {
      const float entry = b.entry(std::uint32_t(m), std::uint64_t(e));
      ASSERT_EQ(std::memcmp(&entry, &f.data()[e], sizeof(float)), 0) << e;
      ASSERT_EQ(d.data()[e], double(entry)) << e;
    }
  }
}

TEST(NolaPrimitivesErrors, BadArgumentsThrowWithUsefulMessages) {
  HostCtx ctx;
  Matrix<float, Cpu> square(3, 3), out(4, 5), empty(0, 1);
  const RandomBasis b = kBases[0];
  expect_error([&] { nola_combine(ctx, b, as_const(square.view()), 0.0, out.view()); },
               ErrorKind::shape, {"nola_combine", "coefficients", "3 x 3", "[k, 1] or [1, k]"});
  expect_error([&] { nola_project(ctx, b, as_const(out.view()), square.view()); }, ErrorKind::shape,
               {"nola_project", "coefficient_grads", "[k, 1] or [1, k]"});
  expect_error([&] { nola_combine(ctx, b, as_const(empty.view()), 0.0, out.view()); },
               ErrorKind::invalid_argument, {"nola_combine", "0 basis members", "expected 1"});
  RandomBasis nan_bound = b;
  nan_bound.bound = std::numeric_limits<float>::quiet_NaN();
  Matrix<float, Cpu> c(2, 1);
  expect_error([&] { nola_project(ctx, nan_bound, as_const(out.view()), c.view()); },
               ErrorKind::invalid_argument, {"nola_project", "bound", "finite value >= 0"});
}

// ---- the layer -------------------------------------------------------------------------------

constexpr index_t kN = 6, kIn = 19, kOut = 13, kR = 3, kKa = 7, kKb = 9;

NolaConfig small_config(double dropout = 0.0) {
  return {
      .r = kR, .alpha = 6, .num_basis_a = kKa, .num_basis_b = kKb, .dropout = dropout, .seed = 21};
}

/// Sets α and β (as doubles) and regenerates.
template <class Layer>
void set_coefficients(HostCtx& ctx, Layer& layer, const std::vector<double>& alpha,
                      const std::vector<double>& beta) {
  using P = typename Layer::param_type;
  auto params = layer.parameters();
  for (std::size_t i = 0; i < alpha.size(); ++i)
    params[0].value.data()[i * params[0].value.stride()] = P(alpha[i]);
  for (std::size_t i = 0; i < beta.size(); ++i)
    params[1].value.data()[i * params[1].value.stride()] = P(beta[i]);
  layer.parameters_updated(ctx);
}

/// s B A from the definition: A = A0 + Σ α_i A_i, B = Σ β_j B_j.
template <class Layer>
Matrix<double, Cpu> reference_delta(const Layer& layer, const std::vector<double>& alpha,
                                    const std::vector<double>& beta) {
  const index_t r = layer.rank(), in = layer.in_features(), out = layer.out_features();
  auto a = reference_combination(layer.a_basis(), alpha, r, in);
  auto a0 = reference_combination(layer.a0_basis(), {1.0}, r, in);
  for (index_t i = 0; i < a.size(); ++i) a.data()[i] += a0.data()[i];
  auto b = reference_combination(layer.b_basis(), beta, out, r);
  auto delta = naive_product(as_const(b.view()), false, as_const(a.view()), false);
  for (index_t i = 0; i < delta.size(); ++i) delta.data()[i] *= layer.scaling();
  return delta;
}

TEST(Nola, StartsAsTheBaseWithLorasInitialA) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto x = random_matrix<float>(kN, kIn, 2);
  Nola<float, Cpu> layer(ctx, w0.view(), small_config(), {.stream_id = 5});
  Matrix<float, Cpu> y(kN, kOut), base(kN, kOut);
  layer.forward(ctx, x.view(), y.view());
  gemm(ctx, Op::N, Op::T, 1.0, x.view(), w0.view(), 0.0, base.view());
  EXPECT_TRUE(bitwise_equal(as_const(y.view()), as_const(base.view())));
  for (const auto& p : layer.parameters()) EXPECT_EQ(norm(ctx, as_const(p.value)), 0.0) << p.name;
  EXPECT_EQ(layer.num_trainable(), kKa + kKb);
  EXPECT_EQ(layer.scaling(), 6.0 / kR);

  // A0 is LoRA's kaiming-uniform A for the same seed and stream: with β = e_0, ΔW = s B_0 A0
  // equals LoRA's ΔW with lora_B = B_0.
  std::vector<double> beta(kKb, 0.0);
  beta[0] = 1.0;
  set_coefficients(ctx, layer, std::vector<double>(kKa, 0.0), beta);
  Lora<float, Cpu> lora(ctx, w0.view(), {.r = kR, .alpha = 6, .seed = 21}, {.stream_id = 5});
  auto b0 = reference_combination(layer.b_basis(), beta, kOut, kR);
  copy(ctx, as_const(b0.view()), lora.parameters()[1].value);
  lora.parameters_updated(ctx);
  Matrix<float, Cpu> nola_delta(kOut, kIn), lora_delta(kOut, kIn);
  layer.delta_weight(ctx, nola_delta.view());
  lora.delta_weight(ctx, lora_delta.view());
  EXPECT_TRUE(bitwise_equal(as_const(nola_delta.view()), as_const(lora_delta.view())));
  EXPECT_GT(norm(ctx, as_const(nola_delta.view())), 0.01);
}

template <class T>
class NolaLayer : public ::testing::Test {};
using LayerTypes = ::testing::Types<double, float, Eigen::bfloat16>;
TYPED_TEST_SUITE(NolaLayer, LayerTypes);

TYPED_TEST(NolaLayer, GeneratesTheDefinitionForEveryDtype) {
  using T = TypeParam;
  HostCtx ctx;
  auto w0 = random_matrix<T>(kOut, kIn, 1);
  Nola<T, Cpu> layer(ctx, w0.view(), small_config(), {.stream_id = 9});
  const auto alpha = random_vector(kKa, 3), beta = random_vector(kKb, 4);
  set_coefficients(ctx, layer, alpha, beta);
  // ΔW is computed in param_t<T> and rounded to T once.
  Matrix<T, Cpu> delta_t(kOut, kIn);
  layer.delta_weight(ctx, delta_t.view());
  const auto expected = reference_delta(layer, alpha, beta);
  const double tol = std::is_same_v<T, double> ? 1e-13 : std::is_same_v<T, float> ? 1e-6 : 1e-2;
  EXPECT_LT(relative_error(as_const(delta_t.view()), as_const(expected.view())), tol);
}

// dα_i = ⟨dA_eff, A_i⟩ and dβ_j = ⟨dB_eff, B_j⟩ by central differences in double, on a layer whose
// factors span several tiles and basis groups (A: 3 x 700 = 2100 entries, kA = 66; the chunks of
// nola_project are covered by NolaPrimitives.ResultsDoNotDependOnTheThreadCount).
TEST(Nola, GradientsMatchCentralDifferencesOnLargeFactors) {
  HostCtx ctx;
  const index_t n = 3, in = 700, out = 37;
  const NolaConfig config{.r = 3, .alpha = 3, .num_basis_a = 66, .num_basis_b = 5, .seed = 2};
  auto w0 = random_matrix<double>(out, in, 1);
  auto x = random_matrix<double>(n, in, 2);
  auto dy = random_matrix<double>(n, out, 3);
  const auto alpha = random_vector(66, 4), beta = random_vector(5, 5);
  Nola<double, Cpu> layer(ctx, w0.view(), config, {.stream_id = 3});
  set_coefficients(ctx, layer, alpha, beta);
  Matrix<double, Cpu> y(n, out);
  layer.forward_delta(ctx, x.view(), y.view());
  layer.backward_delta(ctx, x.view(), dy.view(), {});
  layer.prepare_gradients(ctx);
  auto params = layer.parameters();

  // The loss <dy, y_delta> is linear in α for fixed β and in β for fixed α: central differences
  // are exact up to rounding.
  auto loss = [&](const std::vector<double>& a, const std::vector<double>& b) {
    Nola<double, Cpu> probe(ctx, w0.view(), config, {.stream_id = 3});
    set_coefficients(ctx, probe, a, b);
    Matrix<double, Cpu> yp(n, out);
    probe.forward_delta(ctx, x.view(), yp.view());
    return dot(ctx, as_const(yp.view()), as_const(dy.view()));
  };
  const double h = 1e-3;
  for (int which = 0; which < 2; ++which) {
    const auto& values = which == 0 ? alpha : beta;
    Matrix<double, Cpu> numeric(index_t(values.size()), 1);
    for (std::size_t i = 0; i < values.size(); ++i) {
      auto plus = values, minus = values;
      plus[i] += h;
      minus[i] -= h;
      const double lp = which == 0 ? loss(plus, beta) : loss(alpha, plus);
      const double lm = which == 0 ? loss(minus, beta) : loss(alpha, minus);
      numeric.data()[i] = (lp - lm) / (2 * h);
    }
    EXPECT_GT(norm(ctx, as_const(numeric.view())), 1e-2) << params[which].name;
    EXPECT_LT(relative_error(as_const(params[which].grad), as_const(numeric.view())), 1e-9)
        << params[which].name;
  }
}

TEST(Nola, PullingBackTwiceAddsNothingAndZeroGradClears) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  auto x = random_matrix<double>(kN, kIn, 2);
  auto dy = random_matrix<double>(kN, kOut, 3);
  Nola<double, Cpu> layer(ctx, w0.view(), small_config(), {});
  set_coefficients(ctx, layer, random_vector(kKa, 1), random_vector(kKb, 2));
  Matrix<double, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  layer.prepare_gradients(ctx);
  auto params = layer.parameters();
  const auto ga = converted<double>(as_const(params[0].grad));
  const auto gb = converted<double>(as_const(params[1].grad));
  EXPECT_GT(norm(ctx, as_const(ga.view())), 0.0);
  EXPECT_GT(norm(ctx, as_const(gb.view())), 0.0);
  layer.prepare_gradients(ctx);
  EXPECT_TRUE(bitwise_equal(as_const(params[0].grad), as_const(ga.view())));
  EXPECT_TRUE(bitwise_equal(as_const(params[1].grad), as_const(gb.view())));

  // A second micro-batch accumulates: twice the same batch gives twice the gradient.
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  layer.prepare_gradients(ctx);
  auto twice = converted<double>(as_const(ga.view()));
  scale(ctx, 2.0, twice.view());
  EXPECT_LT(relative_error(as_const(params[0].grad), as_const(twice.view())), 1e-14);

  layer.zero_grad(ctx);
  EXPECT_EQ(norm(ctx, as_const(params[0].grad)), 0.0);
  EXPECT_EQ(norm(ctx, as_const(params[1].grad)), 0.0);
  layer.prepare_gradients(ctx);
  EXPECT_EQ(norm(ctx, as_const(params[0].grad)), 0.0);

  // A backward after zero_grad is pulled back again.
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  layer.prepare_gradients(ctx);
  EXPECT_TRUE(bitwise_equal(as_const(params[0].grad), as_const(ga.view())));
}

TEST(Nola, SameSeedAndStreamGiveTheSameLayerOthersDiffer) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  const auto alpha = random_vector(kKa, 1), beta = random_vector(kKb, 2);
  auto delta_of = [&](std::uint64_t seed, std::uint32_t stream) {
    auto config = small_config();
    config.seed = seed;
    Nola<float, Cpu> layer(ctx, w0.view(), config, {.stream_id = stream});
    set_coefficients(ctx, layer, alpha, beta);
    Matrix<float, Cpu> d(kOut, kIn);
    layer.delta_weight(ctx, d.view());
    return d;
  };
  const auto a = delta_of(1, 1), b = delta_of(1, 1), c = delta_of(1, 2), d = delta_of(2, 1);
  EXPECT_TRUE(bitwise_equal(as_const(a.view()), as_const(b.view())));
  EXPECT_GT(relative_error(as_const(a.view()), as_const(c.view())), 0.1);
  EXPECT_GT(relative_error(as_const(a.view()), as_const(d.view())), 0.1);
}

// basis_stream_id keys A0 and the bases instead of the layer's stream_id.
TEST(Nola, BasisStreamIdOverridesTheLayersStream) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  const auto alpha = random_vector(kKa, 1), beta = random_vector(kKb, 2);
  auto config = small_config();
  Nola<float, Cpu> plain(ctx, w0.view(), config, {.stream_id = 5});
  config.basis_stream_id = 5;
  Nola<float, Cpu> keyed(ctx, w0.view(), config, {.stream_id = 9});
  EXPECT_EQ(keyed.basis_stream_id(), 5u);
  EXPECT_EQ(keyed.options().stream_id, 9u);
  set_coefficients(ctx, plain, alpha, beta);
  set_coefficients(ctx, keyed, alpha, beta);
  Matrix<float, Cpu> a(kOut, kIn), b(kOut, kIn);
  plain.delta_weight(ctx, a.view());
  keyed.delta_weight(ctx, b.view());
  EXPECT_TRUE(bitwise_equal(as_const(a.view()), as_const(b.view())));
  EXPECT_TRUE(bitwise_equal(keyed.effective_a(), plain.effective_a()));
}

// A student with the teacher's seed learns the teacher's coefficients' output with AdamW.
TEST(Nola, TrainsTowardsAReachableTarget) {
  HostCtx ctx;
  const index_t n = 64, in = 24, out = 16;
  const NolaConfig config{.r = 4, .alpha = 4, .num_basis_a = 32, .num_basis_b = 32, .seed = 8};
  auto w0 = random_matrix<float>(out, in, 1);
  Nola<float, Cpu> teacher(ctx, w0.view(), config, {.stream_id = 2});
  set_coefficients(ctx, teacher, random_vector(32, 3), random_vector(32, 4));
  Nola<float, Cpu> student(ctx, w0.view(), config, {.stream_id = 2});
  AdamW<float, Cpu> optimizer({.lr = 0.02, .weight_decay = 0.0});
  optimizer.add(student);
  auto x = random_matrix<float>(n, in, 5);
  Matrix<float, Cpu> target(n, out), y(n, out), dy(n, out);
  teacher.forward(ctx, x.view(), target.view());
  auto loss_and_grad = [&] {
    student.forward(ctx, x.view(), y.view());
    copy(ctx, as_const(y.view()), dy.view());
    axpy(ctx, -1.0, as_const(target.view()), dy.view());
    return dot(ctx, as_const(dy.view()), as_const(dy.view())) / double(n);
  };
  const double first = loss_and_grad();
  double last = first;
  for (int step = 0; step < 300; ++step) {
    last = loss_and_grad();
    student.zero_grad(ctx);
    student.backward(ctx, x.view(), dy.view(), {});
    optimizer.step(ctx);
  }
  last = loss_and_grad();
  EXPECT_GT(first, 1e-3);
  EXPECT_LT(last, 0.01 * first) << "first " << first << ", last " << last;
}

TEST(Nola, NothingAllocatesAfterPreallocateOnLargeFactors) {
  HostCtx ctx;
  const index_t n = 4, in = 3000, out = 40;
  const NolaConfig config{.r = 4, .alpha = 3, .num_basis_a = 200, .num_basis_b = 3, .seed = 2};
  auto w0 = random_matrix<float>(out, in, 1);
  auto x = random_matrix<float>(n, in, 2);
  auto dy = random_matrix<float>(n, out, 3);
  Nola<float, Cpu> layer(ctx, w0.view(), config, {});
  set_coefficients(ctx, layer, random_vector(200, 1), random_vector(3, 2));
  layer.preallocate(ctx, n);
  const auto before = ctx.workspace().allocations();
  Matrix<float, Cpu> y(n, out), dx(n, in);
  for (int i = 0; i < 2; ++i) {
    layer.forward(ctx, x.view(), y.view());
    layer.backward(ctx, x.view(), dy.view(), dx.view());
    layer.prepare_gradients(ctx);
    layer.parameters_updated(ctx);
    layer.zero_grad(ctx);
  }
  EXPECT_EQ(ctx.workspace().allocations(), before);
  EXPECT_GE(layer.workspace_bytes(ctx, n), cpu::nola_project_workspace_bytes(ctx, 200, 4 * in));
}

TEST(NolaErrors, BadConfigsThrowWithUsefulMessages) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  auto make = [&](NolaConfig c) { Nola<float, Cpu> layer(ctx, w0.view(), c); };
  auto with = [](auto change) {
    NolaConfig c = small_config();
    change(c);
    return c;
  };
  expect_error([&] { make(with([](NolaConfig& c) { c.r = 0; })); }, ErrorKind::invalid_argument,
               {"Nola", "r is 0", ">= 1"});
  expect_error([&] { make(with([](NolaConfig& c) { c.alpha = std::nan(""); })); },
               ErrorKind::invalid_argument, {"Nola", "alpha", "finite"});
  expect_error([&] { make(with([](NolaConfig& c) { c.dropout = 1.0; })); },
               ErrorKind::invalid_argument, {"Nola", "dropout is 1", "[0, 1)"});
  expect_error([&] { make(with([](NolaConfig& c) { c.num_basis_a = 0; })); },
               ErrorKind::invalid_argument, {"Nola", "num_basis_a is 0", "expected 1 to"});
  expect_error([&] { make(with([](NolaConfig& c) { c.num_basis_b = -3; })); },
               ErrorKind::invalid_argument, {"Nola", "num_basis_b is -3", "expected 1 to"});
  expect_error([&] { make(with([](NolaConfig& c) { c.num_basis_a = index_t{1} << 33; })); },
               ErrorKind::invalid_argument, {"Nola", "num_basis_a is 8589934592"});
  // A factor larger than one random stream (checked before anything is allocated).
  float dummy = 0;
  const MatrixView<const float, Cpu> huge(&dummy, 1, index_t{1} << 33);
  expect_error([&] { Nola<float, Cpu> layer(ctx, huge, small_config()); },
               ErrorKind::invalid_argument, {"Nola", "r = 3", "in = 8589934592", "random stream"});
  // Activations are checked by the shared layer.
  Nola<float, Cpu> layer(ctx, w0.view(), small_config());
  Matrix<float, Cpu> x(2, kIn + 1), y(2, kOut);
  expect_error([&] { layer.forward(ctx, x.view(), y.view()); }, ErrorKind::shape,
               {"Nola::forward", "x has 20 columns", "in_features"});
}

}  // namespace
}  // namespace peft::test
