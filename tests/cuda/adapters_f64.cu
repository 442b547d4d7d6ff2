// Every adapter of the CUDA tests with element type double (AdapterFactory<double>); one element
// type per translation unit keeps the build parallel.

#include "adapter_model.cuh"

namespace peft::gpu {

template struct AdapterFactory<double>;

}  // namespace peft::gpu
