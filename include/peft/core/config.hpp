#pragma once
// Version, portability macros and the index type shared by every layer.

#include <cstdint>

#define PEFT_VERSION_MAJOR 0
#define PEFT_VERSION_MINOR 1
#define PEFT_VERSION_PATCH 0

// Functions that must run on the host and inside CUDA kernels (Philox, dtype helpers).
#if defined(__CUDACC__)
#define PEFT_HOST_DEVICE __host__ __device__
#else
#define PEFT_HOST_DEVICE
#endif

namespace peft {

/// Signed index for rows, columns, strides and sizes (never narrowed silently).
using index_t = std::int64_t;

}  // namespace peft
