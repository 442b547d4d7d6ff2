// Every adapter of the CUDA tests with element type float (AdapterFactory<float>); one element
// type per translation unit keeps the build parallel.

#include "adapter_model.cuh"

namespace peft::gpu {

template struct AdapterFactory<float>;

}  // namespace peft::gpu
