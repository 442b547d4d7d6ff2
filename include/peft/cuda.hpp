#pragma once
// peft-cpp on NVIDIA GPUs: the CUDA backend plus everything in peft.hpp that runs on it.
// Include from .cu files compiled by nvcc; link the CMake target peft::cuda.

#include "core/adamw_step.hpp"
#include "core/backend.hpp"
#include "core/buffer.hpp"
#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/random.hpp"
#include "core/sparse.hpp"
#include "core/view.hpp"
#include "core/workspace.hpp"

#include "backend/cuda/cuda.hpp"

#include "adapters/adalora.hpp"
#include "adapters/adapter.hpp"
#include "adapters/lora.hpp"
#include "adapters/lora_xs.hpp"
#include "adapters/nola.hpp"
#include "adapters/rosa.hpp"
#include "sparse/csr.hpp"

#include "train/adamw.hpp"
#include "train/orthogonal_regularizer.hpp"
#include "train/rank_allocator.hpp"
#include "train/rosa_mask.hpp"
