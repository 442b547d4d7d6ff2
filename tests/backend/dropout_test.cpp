// Dropout on the CPU (backend/cpu/elementwise.hpp): the mask is the integer compare
// stream.bits(i * cols + j) >= dropout_threshold(p) on the logical index, kept values are scaled
// by 1 / (1 - p), and the same stream gives the same mask (backward regenerates it).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include <Eigen/Core>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>
#include <peft/core/random.hpp>

#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::convert_value;
using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::RandomPurpose;
using peft::RandomStream;
using peft::primtest::expect_error;
using peft::primtest::Strided;
using peft::primtest::to_double;
using bf16 = Eigen::bfloat16;

bool kept(const RandomStream& s, float p, index_t i, index_t j, index_t cols) {
  return s.bits(static_cast<std::uint64_t>(i * cols + j)) >= peft::dropout_threshold(p);
}

/// Checks out == dropout(x) element by element: zero where dropped, x / (1 - p) where kept
/// (exact for float, to double precision for double, to bf16 rounding for bf16).
template <class TX, class T>
void expect_dropout(const RandomStream& s, float p, MatrixView<const TX, Cpu> x,
                    MatrixView<const double, Cpu> x_before, MatrixView<T, Cpu> out) {
  int failures = 0;
  const index_t cols = x.cols();
  for (index_t i = 0; i < x.rows() && failures < 5; ++i)
    for (index_t j = 0; j < cols && failures < 5; ++j) {
      const double got = to_double(out(i, j));
      const double xv = x_before(i, j);
      bool ok;
      if (!kept(s, p, i, j, cols)) {
        ok = got == 0.0;
      } else if constexpr (std::is_same_v<T, double> && std::is_same_v<TX, double>) {
        const double expected = xv / (1.0 - double(p));
        ok = std::abs(got - expected) <= 1e-15 * std::abs(expected);
      } else if constexpr (std::is_same_v<T, float> && std::is_same_v<TX, float>) {
        // The float expression the device uses too: x * (1 / (1 - p)), 1 - p in double as
        // PyTorch forms it from a Python float.
        ok = got == double(float(xv) * (1.0f / float(1.0 - double(p))));
      } else {
        const double expected = xv / (1.0 - double(p));
        ok = std::abs(got - expected) <= 0x1.0p-8 * std::abs(expected);
      }
      if (!ok) {
        ++failures;
        ADD_FAILURE() << "(" << i << ", " << j << "): got " << got << ", x = " << xv
                      << ", kept = " << kept(s, p, i, j, cols) << ", p = " << p;
      }
    }
}

template <class T>
Matrix<double, Cpu> snapshot(MatrixView<const T, Cpu> x) {
  Matrix<double, Cpu> m(x.rows(), x.cols());
  for (index_t i = 0; i < x.rows(); ++i)
    for (index_t j = 0; j < x.cols(); ++j) m.view()(i, j) = to_double(x(i, j));
  return m;
}

template <class T>
class Dropout : public ::testing::Test {};
using DropoutTypes = ::testing::Types<float, double, bf16>;
TYPED_TEST_SUITE(Dropout, DropoutTypes);

TYPED_TEST(Dropout, MaskIsTheIntegerCompareOnTheLogicalIndex) {
  using T = TypeParam;
  std::mt19937 gen(1);
  // Odd column counts put row starts at every position inside a 4-word Philox block.
  const index_t shapes[][2] = {{1, 1}, {3, 7}, {5, 13}, {17, 33}, {200, 173}};
  std::uint32_t step = 0;
  for (const int threads : {1, 2}) {
    Context<Cpu> ctx(peft::CpuContextOptions{.threads = threads});
    for (const auto& shape : shapes)
      for (const float p : {0.1f, 0.5f, 0.9f})
        for (const bool strided : {false, true}) {
          const RandomStream s = peft::make_stream(17, 3, RandomPurpose::dropout, step++);
          Strided<T> x(shape[0], shape[1], strided, gen);
          Strided<T> out(shape[0], shape[1], strided, gen, -4.0);
          const auto before = snapshot(x.cview());
          peft::cpu::dropout(ctx, &s, p, x.cview(), out.view);
          expect_dropout(s, p, x.cview(), as_const(before.view()), out.view);
          EXPECT_TRUE(out.gaps_untouched());
          EXPECT_TRUE(x.gaps_untouched());
        }
  }
}

TYPED_TEST(Dropout, InPlace) {
  using T = TypeParam;
  std::mt19937 gen(2);
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  const RandomStream s = peft::make_stream(5, 1, RandomPurpose::dropout, 0);
  for (const bool strided : {false, true}) {
    Strided<T> x(190, 181, strided, gen);
    const auto before = snapshot(x.cview());
    peft::cpu::dropout(ctx, &s, 0.3f, x.cview(), x.view);
    expect_dropout(s, 0.3f, x.cview(), as_const(before.view()), x.view);
    EXPECT_TRUE(x.gaps_untouched());
  }
}

TEST(Dropout, SameStreamSameMaskOtherStreamOtherMask) {
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  Matrix<float, Cpu> ones(64, 96);
  peft::cpu::fill(ctx, ones.view(), 1.0);
  const RandomStream s = peft::make_stream(99, 2, RandomPurpose::dropout, 7);
  Matrix<float, Cpu> a(64, 96), b(64, 96), c(64, 96), d(64, 96);
  peft::cpu::dropout(ctx, &s, 0.5f, as_const(ones.view()), a.view());
  const RandomStream copy = s;  // e.g. read back from a reserve in backward
  peft::cpu::dropout(ctx, &copy, 0.5f, as_const(ones.view()), b.view());
  Context<Cpu> one(peft::CpuContextOptions{.threads = 1});
  peft::cpu::dropout(one, &s, 0.5f, as_const(ones.view()), c.view());
  const RandomStream next = peft::make_stream(99, 2, RandomPurpose::dropout, 8);
  peft::cpu::dropout(ctx, &next, 0.5f, as_const(ones.view()), d.view());
  index_t same_ab = 0, same_ac = 0, same_ad = 0;
  for (index_t i = 0; i < a.size(); ++i) {
    same_ab += a.data()[i] == b.data()[i];
    same_ac += a.data()[i] == c.data()[i];
    same_ad += a.data()[i] == d.data()[i];
  }
  EXPECT_EQ(same_ab, a.size());
  EXPECT_EQ(same_ac, a.size()) << "the mask depends on the thread count";
  EXPECT_LT(same_ad, a.size() * 6 / 10) << "another step gave nearly the same mask";
}

TEST(Dropout, StridedViewsUseTheLogicalIndex) {
  // The same logical matrix, once contiguous and once inside a wider one: identical outputs.
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 1});
  std::mt19937 gen(3);
  const RandomStream s = peft::make_stream(1, 1, RandomPurpose::dropout, 1);
  Strided<float> xs(37, 21, true, gen);
  Matrix<float, Cpu> xc(37, 21), out_c(37, 21);
  peft::cpu::copy(ctx, xs.cview(), xc.view());
  Strided<float> out_s(37, 21, true, gen, 2.0);
  peft::cpu::dropout(ctx, &s, 0.4f, xs.cview(), out_s.view);
  peft::cpu::dropout(ctx, &s, 0.4f, as_const(xc.view()), out_c.view());
  for (index_t i = 0; i < 37; ++i)
    for (index_t j = 0; j < 21; ++j) ASSERT_EQ(out_s.view(i, j), out_c.view()(i, j));
  // Mixed strides: contiguous input, strided output.
  Strided<float> out_s2(37, 21, true, gen, 2.0);
  peft::cpu::dropout(ctx, &s, 0.4f, as_const(xc.view()), out_s2.view);
  for (index_t i = 0; i < 37; ++i)
    for (index_t j = 0; j < 21; ++j) ASSERT_EQ(out_s2.view(i, j), out_c.view()(i, j));
}

TEST(Dropout, FractionDroppedIsP) {
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  Matrix<float, Cpu> ones(400, 250), out(400, 250);  // 1e5 elements
  peft::cpu::fill(ctx, ones.view(), 1.0);
  for (const float p : {0.05f, 0.3f, 0.5f, 0.8f}) {
    const RandomStream s = peft::make_stream(2024, 9, RandomPurpose::dropout, 3);
    peft::cpu::dropout(ctx, &s, p, as_const(ones.view()), out.view());
    index_t dropped = 0;
    double sum = 0;
    for (index_t i = 0; i < out.size(); ++i) {
      dropped += out.data()[i] == 0.0f;
      sum += out.data()[i];
    }
    // sd of the fraction: sqrt(p (1 - p) / 1e5) <= 1.6e-3.
    EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(out.size()), p, 8e-3);
    // Inverted dropout keeps the expectation: mean of the output ~ 1.
    EXPECT_NEAR(sum / static_cast<double>(out.size()), 1.0, 0.05);
  }
}

TYPED_TEST(Dropout, PZeroKeepsEverythingUnchanged) {
  using T = TypeParam;
  std::mt19937 gen(4);
  Context<Cpu> ctx(peft::CpuContextOptions{.threads = 2});
  const RandomStream s = peft::make_stream(8, 8, RandomPurpose::dropout, 8);
  Strided<T> x(190, 181, true, gen);
  Strided<T> out(190, 181, true, gen, 3.0);
  peft::cpu::dropout(ctx, &s, 0.0f, x.cview(), out.view);
  for (index_t i = 0; i < 190; ++i)
    for (index_t j = 0; j < 181; ++j)
      ASSERT_EQ(out.view(i, j), x.view(i, j)) << "p = 0 changed (" << i << ", " << j << ")";
  EXPECT_TRUE(out.gaps_untouched());
}

TEST(Dropout, DoubleKeepsDoublePrecision) {
  // A double activation must not be rounded through float on the way.
  Context<Cpu> ctx;
  const RandomStream s = peft::make_stream(0, 0, RandomPurpose::dropout, 0);
  Matrix<double, Cpu> x(1, 1), out(1, 1);
  x.view()(0, 0) = 1.0 + 0x1.0p-40;
  peft::cpu::dropout(ctx, &s, 0.0f, as_const(x.view()), out.view());
  EXPECT_EQ(out.view()(0, 0), 1.0 + 0x1.0p-40);
}

TEST(Dropout, MixedTypes) {
  // bf16 activations into an fp32 buffer and back.
  Context<Cpu> ctx;
  std::mt19937 gen(5);
  const RandomStream s = peft::make_stream(3, 4, RandomPurpose::dropout, 5);
  Strided<bf16> x(9, 11, true, gen);
  Matrix<float, Cpu> out(9, 11);
  const auto before = snapshot(x.cview());
  peft::cpu::dropout(ctx, &s, 0.25f, x.cview(), out.view());
  expect_dropout(s, 0.25f, x.cview(), as_const(before.view()), out.view());
}

TEST(Dropout, InvalidArgumentsThrow) {
  Context<Cpu> ctx;
  const RandomStream s = peft::make_stream(1, 2, RandomPurpose::dropout, 3);
  Matrix<float, Cpu> x(4, 5), out(4, 5), bad(5, 4);
  for (const float p : {-0.1f, 1.0f, 1.5f, std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity()}) {
    expect_error([&] { peft::cpu::dropout(ctx, &s, p, as_const(x.view()), out.view()); },
                 ErrorKind::invalid_argument, {"dropout", "p is"});
  }
  EXPECT_NO_THROW(
      peft::cpu::dropout(ctx, &s, std::nextafter(1.0f, 0.0f), as_const(x.view()), out.view()));
  expect_error([&] { peft::cpu::dropout(ctx, nullptr, 0.5f, as_const(x.view()), out.view()); },
               ErrorKind::invalid_argument, {"null"});
  expect_error([&] { peft::cpu::dropout(ctx, &s, 0.5f, as_const(x.view()), bad.view()); },
               ErrorKind::shape, {"dropout", "4 x 5", "5 x 4"});
}

TEST(DropoutProbability, IsDoubleSoThatScalingMatchesPyTorchInDouble) {
  // p = 0.3 as a float is 0.30000001192...: x / (1 - p) would differ from PyTorch's double
  // result by ~1e-8 relative.
  Context<Cpu> ctx;
  const RandomStream s = peft::make_stream(1, 2, RandomPurpose::dropout, 0);
  Matrix<double, Cpu> x(64, 64), out(64, 64);
  peft::cpu::fill(ctx, x.view(), 1.0);
  peft::cpu::dropout(ctx, &s, 0.3, as_const(x.view()), out.view());
  int kept_count = 0;
  for (index_t i = 0; i < out.size(); ++i) {
    if (out.data()[i] == 0.0) continue;
    ++kept_count;
    EXPECT_EQ(out.data()[i], 1.0 / (1.0 - 0.3));
  }
  EXPECT_GT(kept_count, 0);
}

}  // namespace
