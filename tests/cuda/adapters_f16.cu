// Every adapter of the CUDA tests with element type __half (AdapterFactory<__half>); one element
// type per translation unit keeps the build parallel.

#include "adapter_model.cuh"

namespace peft::gpu {

template struct AdapterFactory<__half>;

}  // namespace peft::gpu
