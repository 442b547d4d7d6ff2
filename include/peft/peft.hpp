#pragma once
// peft-cpp: everything that needs no CUDA compiler. For the GPU include <peft/cuda.hpp>.

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

#include "backend/cpu/cpu.hpp"

#include "adapters/adalora.hpp"
#include "adapters/adapter.hpp"
#include "adapters/lora.hpp"
#include "adapters/lora_xs.hpp"
#include "adapters/nola.hpp"
#include "adapters/rosa.hpp"
#include "sparse/csr.hpp"

#include "model/adapter_set.hpp"
#include "model/base_model.hpp"

#include "io/adalora_allocator_state.hpp"
#include "io/lora_export.hpp"
#include "io/peft_format.hpp"
#include "io/safetensors.hpp"

#include "train/adamw.hpp"
#include "train/orthogonal_regularizer.hpp"
#include "train/rank_allocator.hpp"
#include "train/rosa_mask.hpp"
