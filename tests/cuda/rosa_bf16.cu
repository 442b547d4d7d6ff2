// Rosa<__nv_bfloat16, Cuda> for the CUDA tests; one element type per translation unit keeps
// the build parallel and each file short to compile.

#include "rosa_impl.cuh"

namespace peft::gpu {

std::unique_ptr<GpuRosa> make_rosa_bf16(HostView w0, const RosaConfig& config,
                                        const LayerOptions& options, HostView bias, bool strided) {
  return make_rosa_model<__nv_bfloat16>(w0, config, options, bias, strided);
}

}  // namespace peft::gpu
