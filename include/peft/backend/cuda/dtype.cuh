#pragma once
// CUDA element types: cudaDataType_t of each, conversions usable in kernels.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

#include <type_traits>

#include "../../core/dtype.hpp"

namespace peft::gpu::detail {

template <class T>
constexpr cudaDataType_t data_type() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return CUDA_R_32F;
  else if constexpr (std::is_same_v<U, double>)
    return CUDA_R_64F;
  else if constexpr (std::is_same_v<U, __half>)
    return CUDA_R_16F;
  else if constexpr (std::is_same_v<U, __nv_bfloat16>)
    return CUDA_R_16BF;
  else
    static_assert(sizeof(U) == 0, "unsupported CUDA element type");
}

/// Conversion inside kernels: 16-bit types go through float with the CUDA intrinsics.
template <class D, class S>
__host__ __device__ inline D convert(S s) {
  using SU = std::remove_const_t<S>;
  if constexpr (std::is_same_v<D, SU>) {
    return s;
  } else if constexpr (std::is_same_v<SU, __half>) {
    return static_cast<D>(__half2float(s));
  } else if constexpr (std::is_same_v<SU, __nv_bfloat16>) {
    return static_cast<D>(__bfloat162float(s));
  } else if constexpr (std::is_same_v<D, __half>) {
    return __float2half_rn(static_cast<float>(s));
  } else if constexpr (std::is_same_v<D, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(s));
  } else {
    return static_cast<D>(s);
  }
}

}  // namespace peft::gpu::detail
