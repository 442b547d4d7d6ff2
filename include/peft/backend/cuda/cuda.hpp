#pragma once
// The CUDA backend: Context<Cuda> and every primitive the adapters call. Include from .cu files.

#include "../contract.hpp"
#include "allocator.hpp"
#include "check.hpp"
#include "context.hpp"
#include "dense.cuh"
#include "dtype.cuh"
#include "elementwise.cuh"
#include "importance.cuh"
#include "nola.cuh"
#include "sparse.cuh"
#include "svd.cuh"
#include "transfer.cuh"

// The backend contract (backend/contract.hpp), for every element type a layer may have here.
static_assert(peft::Backend<peft::Cuda, float, double, __half, __nv_bfloat16>,
              "the CUDA backend does not provide every primitive of backend/contract.hpp");
