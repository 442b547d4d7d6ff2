// Lora<__nv_bfloat16, Cuda> for the CUDA tests; one element type per translation unit keeps
// the build parallel and each file short to compile.

#include "lora_impl.cuh"

namespace peft::gpu {

std::unique_ptr<GpuLora> make_lora_bf16(HostView w0, const LoraConfig& config,
                                        const LayerOptions& options, HostView bias, bool strided) {
  return make_lora_model<__nv_bfloat16>(w0, config, options, bias, strided);
}

}  // namespace peft::gpu
