#pragma once
// Every CUDA runtime, cuBLAS and cuSPARSE status becomes a peft::Error carrying the library's
// own error string and the call that failed.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusparse.h>

#include "../../core/error.hpp"

namespace peft::gpu::detail {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) [[likely]]
    return;
  throw Error(ErrorKind::cuda,
              peft::detail::concat(call, " failed: ", cudaGetErrorName(status), " (",
                                   cudaGetErrorString(status), ") at ", file, ":", line));
}

inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) [[likely]]
    return;
  throw Error(ErrorKind::cuda,
              peft::detail::concat(call, " failed: ", cublasGetStatusName(status), " (",
                                   cublasGetStatusString(status), ") at ", file, ":", line));
}

inline void check(cusparseStatus_t status, const char* call, const char* file, int line) {
  if (status == CUSPARSE_STATUS_SUCCESS) [[likely]]
    return;
  throw Error(ErrorKind::cuda,
              peft::detail::concat(call, " failed: ", cusparseGetErrorName(status), " (",
                                   cusparseGetErrorString(status), ") at ", file, ":", line));
}

/// True when a CUDA device can be used. Without a driver the runtime reports
/// cudaErrorInsufficientDriver (35) rather than zero devices: that also means "no GPU".
inline bool device_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error for later calls
    return false;
  }
  return count > 0;
}

}  // namespace peft::gpu::detail

/// Checks a CUDA runtime, cuBLAS or cuSPARSE call.
#define PEFT_CUDA_CHECK(call) ::peft::gpu::detail::check((call), #call, __FILE__, __LINE__)

/// Checks the launch of the kernel just issued.
#define PEFT_CUDA_CHECK_LAUNCH() PEFT_CUDA_CHECK(cudaGetLastError())
