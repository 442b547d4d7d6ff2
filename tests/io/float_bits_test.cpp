// float16 / bfloat16 bit conversions: exact widening, round-to-nearest-even narrowing, checked
// exhaustively on the 16-bit side and against Eigen's conversions on a sweep of floats.

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include <peft/io/float_bits.hpp>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

std::uint16_t eigen_half_bits(float f) {
  return std::bit_cast<std::uint16_t>(Eigen::half(f));
}
std::uint16_t eigen_bf16_bits(float f) {
  return std::bit_cast<std::uint16_t>(Eigen::bfloat16(f));
}

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b))
    return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
  return std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b);
}

bool is_nan_half(std::uint16_t h) {
  return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
}
bool is_nan_bf16(std::uint16_t b) {
  return (b & 0x7F80u) == 0x7F80u && (b & 0x7Fu) != 0;
}

TEST(FloatBits, HalfToFloatIsExactForAllPatterns) {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float mine = half_bits_to_float(bits);
    const float eigen = static_cast<float>(std::bit_cast<Eigen::half>(bits));
    ASSERT_TRUE(same_float(mine, eigen)) << std::hex << h;
    // Back to the same pattern (NaNs stay NaNs with their sign and payload's top bits).
    if (!is_nan_half(bits)) {
      ASSERT_EQ(float_to_half_bits(mine), bits) << std::hex << h;
      ASSERT_EQ(float_to_half_bits(double(mine)), bits) << std::hex << h;
    } else {
      ASSERT_TRUE(is_nan_half(float_to_half_bits(mine))) << std::hex << h;
    }
  }
  EXPECT_EQ(half_bits_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_bits_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(half_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::signbit(half_bits_to_float(0x8000)));
}

TEST(FloatBits, Bfloat16ToFloatIsExactForAllPatterns) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float mine = bfloat16_bits_to_float(bits);
    EXPECT_EQ(std::bit_cast<std::uint32_t>(mine), b << 16);
    if (!is_nan_bf16(bits)) {
      ASSERT_EQ(float_to_bfloat16_bits(mine), bits) << std::hex << b;
    } else {
      ASSERT_TRUE(is_nan_bf16(float_to_bfloat16_bits(mine))) << std::hex << b;
    }
  }
}

TEST(FloatBits, FloatToHalfAndBfloat16MatchEigenOnASweep) {
  // Every 1021st float pattern (all exponents, many mantissas), plus both neighbours.
  for (std::uint64_t u = 0; u <= 0xFFFFFFFFull; u += 1021) {
    for (std::uint64_t d : {u, u + 1, u + 2}) {
      const float f = std::bit_cast<float>(static_cast<std::uint32_t>(d));
      if (std::isnan(f)) {
        ASSERT_TRUE(is_nan_half(float_to_half_bits(f)));
        ASSERT_TRUE(is_nan_bf16(float_to_bfloat16_bits(f)));
        continue;
      }
      ASSERT_EQ(float_to_half_bits(f), eigen_half_bits(f)) << std::hexfloat << f;
      ASSERT_EQ(float_to_bfloat16_bits(f), eigen_bf16_bits(f)) << std::hexfloat << f;
    }
  }
}

/// Every midpoint between neighbouring finite 16-bit values rounds to the even one, and the
/// doubles just beside it round to the nearer one: the rounding boundaries are all exact.
template <class ToBits, class ToFloat>
void check_midpoints(ToBits to_bits, ToFloat to_float, std::uint16_t max_finite) {
  for (std::uint32_t h = 0; h < max_finite; ++h) {
    const double lo = to_float(static_cast<std::uint16_t>(h));
    const double hi = to_float(static_cast<std::uint16_t>(h + 1));
    const double mid = (lo + hi) / 2;  // exact in double
    const std::uint16_t even =
        (h % 2 == 0) ? static_cast<std::uint16_t>(h) : static_cast<std::uint16_t>(h + 1);
    ASSERT_EQ(to_bits(mid), even) << std::hex << h;
    ASSERT_EQ(to_bits(std::nextafter(mid, -1e300)), h) << std::hex << h;
    ASSERT_EQ(to_bits(std::nextafter(mid, 1e300)), h + 1) << std::hex << h;
    ASSERT_EQ(to_bits(-mid), even | 0x8000u) << std::hex << h;
  }
}

TEST(FloatBits, DoubleRoundingBoundariesAreExact) {
  check_midpoints([](double x) { return float_to_half_bits(x); },
                  [](std::uint16_t h) { return double(half_bits_to_float(h)); }, 0x7BFF);
  check_midpoints([](double x) { return float_to_bfloat16_bits(x); },
                  [](std::uint16_t b) { return double(bfloat16_bits_to_float(b)); }, 0x7F7F);
}

TEST(FloatBits, NoDoubleRoundingThroughFloat) {
  // 1 + 2^-11 + 2^-40 is above the float16 midpoint 1 + 2^-11; through float it would become
  // exactly the midpoint and round to even (down).
  const double x = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_EQ(float_to_half_bits(x), 0x3C01);
  EXPECT_EQ(float_to_half_bits(static_cast<float>(x)), 0x3C00);
  const double y = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  EXPECT_EQ(float_to_bfloat16_bits(y), 0x3F81);
  EXPECT_EQ(float_to_bfloat16_bits(static_cast<float>(y)), 0x3F80);
}

TEST(FloatBits, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(float_to_half_bits(65504.0), 0x7BFF);
  EXPECT_EQ(float_to_half_bits(65519.99), 0x7BFF);
  EXPECT_EQ(float_to_half_bits(65520.0), 0x7C00);  // the midpoint to 65536 rounds to infinity
  EXPECT_EQ(float_to_half_bits(-1e300), 0xFC00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<double>::infinity()), 0x7C00);
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0, -25)), 0x0000);  // half the smallest: to even 0
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.5, -25)), 0x0001);
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0, -24)), 0x0001);
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0, -14) - std::ldexp(1.0, -25)), 0x0400);
  EXPECT_EQ(float_to_half_bits(-0.0), 0x8000);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<double>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_bfloat16_bits(3.4e38), 0x7F80);  // above bf16's largest finite: infinity
  EXPECT_EQ(float_to_bfloat16_bits(std::ldexp(1.0, -133)), 0x0001);
  EXPECT_EQ(float_to_bfloat16_bits(std::ldexp(1.0, -134)), 0x0000);
  EXPECT_EQ(float_to_bfloat16_bits(std::ldexp(1.5, -134)), 0x0001);
  EXPECT_TRUE(is_nan_half(float_to_half_bits(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_TRUE(is_nan_bf16(float_to_bfloat16_bits(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(float_to_bfloat16_bits(-std::numeric_limits<float>::quiet_NaN()) & 0x8000, 0x8000);
}

}  // namespace
}  // namespace peft::test
