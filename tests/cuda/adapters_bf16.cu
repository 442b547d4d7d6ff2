// Every adapter of the CUDA tests with element type __nv_bfloat16 (AdapterFactory<__nv_bfloat16>);
// one element type per translation unit keeps the build parallel.

#include "adapter_model.cuh"

namespace peft::gpu {

template struct AdapterFactory<__nv_bfloat16>;

}  // namespace peft::gpu
