#pragma once
// Exact conversions between IEEE binary16 (float16), bfloat16 and float / double, on bit
// patterns, so that the checkpoint code needs neither Eigen nor CUDA types. Widening is exact;
// narrowing rounds to nearest, ties to even, in one step from the source value (no double
// rounding through float), overflows to infinity and keeps NaNs NaN (quiet, sign kept).

#include <bit>
#include <cstdint>

namespace peft {
namespace detail {

/// Rounds `value` to the binary format with `exp_bits` exponent and `man_bits` stored mantissa
/// bits (bias 2^(exp_bits-1) - 1, subnormals, infinities and NaNs as in IEEE 754). Returns the
/// pattern in the low 1 + exp_bits + man_bits bits. Needs man_bits < 52 and exp_bits < 11.
inline std::uint32_t round_to_small_float(double value, int exp_bits, int man_bits) noexcept {
  const auto bits = std::bit_cast<std::uint64_t>(value);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 63) << (exp_bits + man_bits);
  const int exponent = static_cast<int>((bits >> 52) & 0x7FF);
  const std::uint64_t mantissa = bits & ((std::uint64_t{1} << 52) - 1);
  const std::uint32_t exp_max = (1u << exp_bits) - 1;
  const std::uint32_t infinity = sign | (exp_max << man_bits);
  if (exponent == 0x7FF) {
    if (mantissa == 0) return infinity;
    // NaN: keep the top of the payload and set the quiet bit, so it stays a NaN.
    const auto payload = static_cast<std::uint32_t>(mantissa >> (52 - man_bits));
    return infinity | payload | (1u << (man_bits - 1));
  }
  // Zero, or a double subnormal (< 2^-1022): far below half the smallest target subnormal.
  if (exponent == 0) return sign;

  const int bias = (1 << (exp_bits - 1)) - 1;
  const int target_exponent = exponent - 1023 + bias;                     // biased, before rounding
  const std::uint64_t significand = (std::uint64_t{1} << 52) | mantissa;  // value = sig 2^(e-52)
  int shift = 52 - man_bits;
  std::uint64_t base = 0;
  if (target_exponent >= 1) {
    // Normal: the rounded significand keeps its implicit bit at man_bits, so adding it to
    // (exponent - 1) << man_bits yields the encoding, and a carry moves into the exponent.
    base = static_cast<std::uint64_t>(target_exponent - 1) << man_bits;
  } else {
    shift += 1 - target_exponent;  // subnormal: count units of the smallest subnormal
    if (shift > 63) return sign;
  }
  std::uint64_t rounded = significand >> shift;
  const std::uint64_t rest = significand & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (rounded & 1) != 0)) ++rounded;
  const std::uint64_t encoded = base + rounded;
  if (encoded >= (std::uint64_t{exp_max} << man_bits)) return infinity;
  return sign | static_cast<std::uint32_t>(encoded);
}

}  // namespace detail

/// binary16 bits -> float, exactly (subnormals, infinities, NaN payloads included).
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  std::uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal m 2^-24: normalise so that the leading bit becomes the implicit one.
    int e = -14;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (static_cast<std::uint32_t>(e + 127) << 23) | ((mantissa & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

/// bfloat16 bits -> float, exactly (bfloat16 is the top half of a float).
inline float bfloat16_bits_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float / double -> binary16 bits, round to nearest even; out of range -> infinity.
inline std::uint16_t float_to_half_bits(double value) noexcept {
  return static_cast<std::uint16_t>(detail::round_to_small_float(value, 5, 10));
}

/// float / double -> bfloat16 bits, round to nearest even; out of range -> infinity.
inline std::uint16_t float_to_bfloat16_bits(double value) noexcept {
  return static_cast<std::uint16_t>(detail::round_to_small_float(value, 8, 7));
}

}  // namespace peft
