#pragma once
// The CUDA backend: Context<Cuda> and every primitive the adapters call. Include from .cu files.

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
