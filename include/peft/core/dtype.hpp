#pragma once
// Element-type traits. Only sizes are inspected, so this header needs neither Eigen nor CUDA.

#include <type_traits>

namespace peft {

/// True for the 16-bit floating types (Eigen::bfloat16, __half, __nv_bfloat16).
template <class T>
inline constexpr bool is_16bit_v = !std::is_arithmetic_v<T> && sizeof(T) == 2;

/// Type of trainable parameters and their gradients: fp32 over a 16-bit model, as PEFT does.
template <class T>
using param_t = std::conditional_t<is_16bit_v<T>, float, T>;

/// Accumulation type of reductions and GEMMs.
template <class T>
using accum_t = std::conditional_t<is_16bit_v<T>, float, T>;

/// Converts one value; 16-bit types go through float, which every 16-bit type converts to.
template <class D, class S>
inline D convert_value(S s) {
  if constexpr (is_16bit_v<S> || is_16bit_v<D>) {
    return static_cast<D>(static_cast<float>(s));
  } else {
    return static_cast<D>(s);
  }
}

}  // namespace peft
