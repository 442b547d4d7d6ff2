// Lora<double, Cuda> for the CUDA tests; one element type per translation unit keeps the build
// parallel and each file short to compile.

#include "lora_impl.cuh"

namespace peft::gpu {

std::unique_ptr<GpuLora> make_lora_f64(HostView w0, const LoraConfig& config,
                                       const LayerOptions& options, HostView bias, bool strided) {
  return make_lora_model<double>(w0, config, options, bias, strided);
}

}  // namespace peft::gpu
