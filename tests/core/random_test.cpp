// Philox4x32-10 and the draws built on it (core/random.hpp).
//
// The known answers are the philox4x32_10 lines of Random123's kat_vectors. They were checked
// independently twice: against randomgen's Philox(number=4, width=32) (randomgen 2.5.1 from PyPI)
// and against a separate Python implementation written from the round function of Salmon et
// al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11). All three agree.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

#include <peft/core/random.hpp>

namespace {

using peft::PhiloxCounter;
using peft::PhiloxKeyWords;
using peft::RandomPurpose;
using peft::RandomStream;

void expect_block(const PhiloxCounter& got, std::uint32_t w0, std::uint32_t w1, std::uint32_t w2,
                  std::uint32_t w3) {
  EXPECT_EQ(got.c[0], w0);
  EXPECT_EQ(got.c[1], w1);
  EXPECT_EQ(got.c[2], w2);
  EXPECT_EQ(got.c[3], w3);
}

TEST(Philox, KnownAnswerZeroCounterZeroKey) {
  expect_block(peft::philox4x32_10(PhiloxCounter{{0, 0, 0, 0}}, PhiloxKeyWords{{0, 0}}),
               0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u);
}

TEST(Philox, KnownAnswerAllOnes) {
  const std::uint32_t f = 0xffffffffu;
  expect_block(peft::philox4x32_10(PhiloxCounter{{f, f, f, f}}, PhiloxKeyWords{{f, f}}),
               0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu);
}

TEST(Philox, KnownAnswerPiDigits) {
  expect_block(
      peft::philox4x32_10(PhiloxCounter{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                          PhiloxKeyWords{{0xa4093822u, 0x299f31d0u}}),
      0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u);
}

// Pins the counter layout that core/random.hpp documents: key = (seed low, seed high),
// counter = (element block, step, purpose, stream_id). Expected words from the independent
// Python implementation for counter (3, 5, 2, 7), key (0x89abcdef, 0x01234567).
TEST(RandomStream, CounterLayout) {
  const RandomStream s = peft::make_stream(0x0123456789abcdefull, 7, RandomPurpose::dropout, 5);
  EXPECT_EQ(s.seed, 0x0123456789abcdefull);
  EXPECT_EQ(s.stream_id, 7u);
  EXPECT_EQ(s.purpose, 2u);
  EXPECT_EQ(s.step, 5u);
  expect_block(s.block(3), 0xa2ac8916u, 0x99e6aa50u, 0xc7a8b0bdu, 0xe57a8425u);
  const PhiloxCounter direct =
      peft::philox4x32_10(PhiloxCounter{{3, 5, 2, 7}}, PhiloxKeyWords{{0x89abcdefu, 0x01234567u}});
  expect_block(s.block(3), direct.c[0], direct.c[1], direct.c[2], direct.c[3]);
}

TEST(RandomStream, BitsIndexFourWordsPerBlock) {
  const RandomStream s = peft::make_stream(42, 3, RandomPurpose::init, 9);
  for (std::uint64_t i = 0; i < 64; ++i) {
    EXPECT_EQ(s.bits(i), s.block(i / 4).c[i % 4]) << "index " << i;
  }
  // Far indices address far blocks (block index is 32 bits of the counter).
  const std::uint64_t far = peft::kMaxStreamElements - 1;
  EXPECT_EQ(s.bits(far), s.block(0xffffffffu).c[3]);
  EXPECT_EQ(peft::kMaxStreamElements, std::uint64_t{1} << 34);
}

std::vector<std::uint32_t> first_words(const RandomStream& s, int n = 16) {
  std::vector<std::uint32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.bits(static_cast<std::uint64_t>(i)));
  return out;
}

TEST(RandomStream, StreamsDifferInEveryField) {
  const RandomStream base = peft::make_stream(1234, 5, RandomPurpose::dropout, 10);
  std::vector<RandomStream> variants = {
      base,
      peft::make_stream(1235, 5, RandomPurpose::dropout, 10),
      peft::make_stream(1234 + (std::uint64_t{1} << 32), 5, RandomPurpose::dropout, 10),  // high
      peft::make_stream(1234, 6, RandomPurpose::dropout, 10),
      peft::make_stream(1234, 5, RandomPurpose::init, 10),
      peft::make_stream(1234, 5, RandomPurpose::nola_basis_a, 10),
      peft::make_stream(1234, 5, RandomPurpose::nola_basis_b, 10),
      peft::make_stream(1234, 5, RandomPurpose::dropout, 11),
  };
  std::set<std::vector<std::uint32_t>> seen;
  for (const auto& v : variants) seen.insert(first_words(v));
  EXPECT_EQ(seen.size(), variants.size()) << "two different streams produced the same words";
  // Same key and counter: the same words, every time.
  EXPECT_EQ(first_words(base), first_words(peft::make_stream(1234, 5, RandomPurpose::dropout, 10)));
  // Within one stream the words are not repeated.
  const auto words = first_words(base, 4096);
  EXPECT_EQ(std::set<std::uint32_t>(words.begin(), words.end()).size(), words.size());
}

TEST(Uniform01, ExactEdgesAndResolution) {
  EXPECT_EQ(peft::uniform01(0u), 0.0f);
  EXPECT_EQ(peft::uniform01(0xffu), 0.0f);         // the low 8 bits are dropped
  EXPECT_EQ(peft::uniform01(0x100u), 0x1.0p-24f);  // one step is 2^-24
  EXPECT_EQ(peft::uniform01(0x80000000u), 0.5f);
  EXPECT_EQ(peft::uniform01(0xffffffffu), 1.0f - 0x1.0p-24f);
  EXPECT_LT(peft::uniform01(0xffffffffu), 1.0f);
}

TEST(Uniform01, DrawsAreInRangeOnTheGridAndUniform) {
  const RandomStream s = peft::make_stream(7, 1, RandomPurpose::init);
  const int n = 1 << 18;
  double sum = 0;
  int below_quarter = 0;
  for (int i = 0; i < n; ++i) {
    const float u = peft::uniform01(s.bits(static_cast<std::uint64_t>(i)));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    const float scaled = u * 0x1.0p24f;  // exact: u has 24 significant bits at most
    ASSERT_EQ(scaled, std::floor(scaled)) << "not a multiple of 2^-24: " << u;
    sum += u;
    below_quarter += u < 0.25f;
  }
  // mean 1/2, sd of the mean sqrt(1/12 / n) ~ 5.6e-4; fraction below 1/4 has sd ~ 8.5e-4.
  EXPECT_NEAR(sum / n, 0.5, 3e-3);
  EXPECT_NEAR(static_cast<double>(below_quarter) / n, 0.25, 4e-3);
}

TEST(UniformSymmetric, BoundsAreHalfOpen) {
  for (const float bound : {1.0f, 1.5f, 0.1f, 3.0f, 1e-3f, 0.0625f, 7.3e5f}) {
    EXPECT_EQ(peft::uniform_symmetric(0u, bound), -bound);
    EXPECT_EQ(peft::uniform_symmetric(0x80000000u, bound), 0.0f);
    const float top = peft::uniform_symmetric(0xffffffffu, bound);
    EXPECT_LT(top, bound) << "bound " << bound;
    EXPECT_EQ(top, (1.0f - 0x1.0p-23f) * bound);
  }
  const RandomStream s = peft::make_stream(99, 2, RandomPurpose::init);
  double sum = 0;
  const int n = 1 << 16;
  for (int i = 0; i < n; ++i) {
    const float u = peft::uniform_symmetric(s.bits(static_cast<std::uint64_t>(i)), 0.3f);
    ASSERT_GE(u, -0.3f);
    ASSERT_LT(u, 0.3f);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.3 * 0.02);  // sd of the mean: 0.3 / sqrt(3 n) ~ 6.8e-4
}

TEST(NormalFromStream, MomentsMatchAStandardNormal) {
  const RandomStream s = peft::make_stream(2024, 11, RandomPurpose::init, 0);
  const int n = 200000;
  double m1 = 0, m2 = 0, m3 = 0, m4 = 0, lag = 0, previous = 0;
  int beyond_two = 0;
  for (int i = 0; i < n; ++i) {
    const double z = peft::normal_from_stream(s, static_cast<std::uint64_t>(i));
    ASSERT_TRUE(std::isfinite(z));
    m1 += z;
    m2 += z * z;
    m3 += z * z * z;
    m4 += z * z * z * z;
    lag += z * previous;
    previous = z;
    beyond_two += std::abs(z) > 2.0;
  }
  m1 /= n;
  m2 /= n;
  m3 /= n;
  m4 /= n;
  lag /= n;
  // Standard errors for n = 2e5: mean 2.2e-3, E[z^2] 3.2e-3, E[z^3] 8.7e-3, E[z^4] 2.1e-2.
  EXPECT_NEAR(m1, 0.0, 0.012);
  EXPECT_NEAR(m2 - m1 * m1, 1.0, 0.016);
  EXPECT_NEAR(m3, 0.0, 0.045);
  EXPECT_NEAR(m4, 3.0, 0.11);
  EXPECT_NEAR(lag, 0.0, 0.012);  // consecutive draws (the two halves of a pair) uncorrelated
  EXPECT_NEAR(static_cast<double>(beyond_two) / n, 0.0455, 0.0025);
}

TEST(NormalFromStream, PairsShareOneRadius) {
  // Box-Muller: elements 2i and 2i + 1 come from the same two words, so z0² + z1² = -2 log u1.
  const RandomStream s = peft::make_stream(5, 0, RandomPurpose::init, 3);
  for (std::uint64_t pair = 0; pair < 16; ++pair) {
    const double z0 = peft::normal_from_stream(s, 2 * pair);
    const double z1 = peft::normal_from_stream(s, 2 * pair + 1);
    const std::uint32_t w = s.bits(2 * pair);
    const double u1 = (static_cast<double>(w) + 1.0) * 0x1.0p-32;
    EXPECT_NEAR(z0 * z0 + z1 * z1, -2.0 * std::log(u1), 1e-12) << "pair " << pair;
    EXPECT_EQ(z0, peft::normal_from_stream(s, 2 * pair));  // deterministic
  }
  // Every pair uses its own two words: no draw repeats.
  std::set<double> seen;
  for (std::uint64_t i = 0; i < 4096; ++i) seen.insert(peft::normal_from_stream(s, i));
  EXPECT_EQ(seen.size(), 4096u);
}

TEST(DropoutThreshold, EdgeValues) {
  EXPECT_EQ(peft::dropout_threshold(0.0f), 0u);  // p = 0 keeps every word
  EXPECT_EQ(peft::dropout_threshold(0.25f), 0x40000000u);
  EXPECT_EQ(peft::dropout_threshold(0.5f), 0x80000000u);
  EXPECT_EQ(peft::dropout_threshold(0.75f), 0xc0000000u);
  EXPECT_EQ(peft::dropout_threshold(0x1.0p-32f), 1u);
  EXPECT_EQ(peft::dropout_threshold(0x1.0p-33f), 0u);  // truncates, never rounds up
  // The largest float below 1: 2^32 (1 - 2^-24) = 2^32 - 256.
  const float below_one = std::nextafter(1.0f, 0.0f);
  EXPECT_EQ(peft::dropout_threshold(below_one), 0xffffff00u);
  // p = 1 is refused by dropout(), but the threshold itself saturates instead of overflowing.
  EXPECT_EQ(peft::dropout_threshold(1.0f), 0xffffffffu);
  // floor(p 2^32) for an inexact p.
  EXPECT_EQ(peft::dropout_threshold(0.1f),
            static_cast<std::uint32_t>(std::floor(static_cast<double>(0.1f) * 4294967296.0)));
  // Monotonic in p.
  std::uint32_t previous = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::uint32_t t = peft::dropout_threshold(static_cast<float>(i) / 1000.0f);
    EXPECT_GE(t, previous);
    previous = t;
  }
}

TEST(DropoutThreshold, KeepFractionIsOneMinusP) {
  const RandomStream s = peft::make_stream(77, 4, RandomPurpose::dropout, 1);
  const int n = 1 << 17;
  for (const float p : {0.1f, 0.5f, 0.9f}) {
    const std::uint32_t t = peft::dropout_threshold(p);
    int kept = 0;
    for (int i = 0; i < n; ++i) kept += s.bits(static_cast<std::uint64_t>(i)) >= t;
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 6e-3) << "p = " << p;
  }
}

}  // namespace
