// peft::Error, the PEFT_CHECK macros (core/error.hpp) and the element-type traits (core/dtype.hpp).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <Eigen/Core>

#include <peft/core/dtype.hpp>
#include <peft/core/error.hpp>

namespace {

using peft::ErrorKind;

static_assert(std::is_base_of_v<std::runtime_error, peft::Error>);

TEST(Error, CheckBuildsTheMessageAndKind) {
  const int cols = 300;
  try {
    PEFT_CHECK(cols == 256, ErrorKind::shape, "Lora::forward: x has ", cols,
               " columns, the frozen weight has ", 256, " (in_features)");
    FAIL() << "no throw";
  } catch (const peft::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::shape);
    EXPECT_STREQ(e.what(),
                 "Lora::forward: x has 300 columns, the frozen weight has 256 (in_features)");
  }
  // A true condition throws nothing and evaluates its message parts not at all.
  int evaluated = 0;
  auto part = [&evaluated] { return ++evaluated; };
  EXPECT_NO_THROW(PEFT_CHECK(true, ErrorKind::io, "never ", part()));
  EXPECT_EQ(evaluated, 0);
}

TEST(Error, ShorthandMacrosSetTheirKinds) {
  try {
    PEFT_CHECK_ARG(false, "p is ", 1.5);
    FAIL() << "no throw";
  } catch (const peft::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::invalid_argument);
    EXPECT_STREQ(e.what(), "p is 1.5");
  }
  try {
    PEFT_CHECK_SHAPE(false, "a ", 2, " x ", 3);
    FAIL() << "no throw";
  } catch (const std::exception& e) {  // catchable through the single std base
    const auto* pe = dynamic_cast<const peft::Error*>(&e);
    ASSERT_NE(pe, nullptr);
    EXPECT_EQ(pe->kind(), ErrorKind::shape);
    EXPECT_STREQ(e.what(), "a 2 x 3");
  }
}

TEST(Error, KindNames) {
  EXPECT_STREQ(peft::to_string(ErrorKind::invalid_argument), "invalid argument");
  EXPECT_STREQ(peft::to_string(ErrorKind::shape), "shape mismatch");
  EXPECT_STREQ(peft::to_string(ErrorKind::state), "invalid state");
  EXPECT_STREQ(peft::to_string(ErrorKind::numeric), "numeric error");
  EXPECT_STREQ(peft::to_string(ErrorKind::io), "io error");
  EXPECT_STREQ(peft::to_string(ErrorKind::cuda), "cuda error");
}

using bf16 = Eigen::bfloat16;
using half = Eigen::half;

static_assert(peft::is_16bit_v<bf16>);
static_assert(peft::is_16bit_v<half>);
static_assert(!peft::is_16bit_v<float>);
static_assert(!peft::is_16bit_v<double>);
static_assert(!peft::is_16bit_v<std::int16_t>);  // integers are not 16-bit floating types
static_assert(std::is_same_v<peft::param_t<bf16>, float>);
static_assert(std::is_same_v<peft::param_t<half>, float>);
static_assert(std::is_same_v<peft::param_t<float>, float>);
static_assert(std::is_same_v<peft::param_t<double>, double>);
static_assert(std::is_same_v<peft::accum_t<bf16>, float>);
static_assert(std::is_same_v<peft::accum_t<double>, double>);

TEST(Dtype, ConvertValueRoundsThroughFloat) {
  EXPECT_EQ(peft::convert_value<double>(0.1f), static_cast<double>(0.1f));
  EXPECT_EQ(peft::convert_value<float>(0.1), 0.1f);
  // bfloat16 keeps 8 significant bits, rounding to nearest even.
  EXPECT_EQ(peft::convert_value<float>(peft::convert_value<bf16>(1.0 + 0x1.0p-8)), 1.0f);
  EXPECT_EQ(peft::convert_value<float>(peft::convert_value<bf16>(1.0 + 0x1.8p-8)),
            1.0f + 0x1.0p-7f);
  EXPECT_EQ(peft::convert_value<float>(peft::convert_value<bf16>(-3.0)), -3.0f);
  EXPECT_EQ(peft::convert_value<double>(peft::convert_value<half>(0.5)), 0.5);
  EXPECT_TRUE(std::isinf(peft::convert_value<float>(peft::convert_value<half>(1e6))));
  EXPECT_TRUE(std::isnan(peft::convert_value<double>(peft::convert_value<bf16>(std::nan("")))));
  const bf16 x = peft::convert_value<bf16>(2.5f);
  EXPECT_EQ(peft::convert_value<float>(peft::convert_value<half>(x)), 2.5f);  // 16 -> 16 bit
}

}  // namespace
