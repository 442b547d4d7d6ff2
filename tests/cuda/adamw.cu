// The fused AdamW update of the CUDA tests: one peft::gpu::adamw_update over all tensors.

#include "device.cuh"

namespace peft::gpu {

void adamw_update(const AdamWStep& step, std::span<const AdamWDeviceTensors> tensors) {
  PEFT_CHECK_ARG(!tensors.empty(), "gpu test adamw_update: no tensors");
  const DType dtype = tensors.front().value->dtype();
  PEFT_CHECK_ARG(dtype == DType::f32 || dtype == DType::f64,
                 "gpu test adamw_update: parameters are f32 or f64, not ", name(dtype));
  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<AdamWTensors<T, Cuda>> typed;
    typed.reserve(tensors.size());
    for (const auto& t : tensors)
      typed.push_back({view<T>(*t.value), cview<T>(*t.grad), view<T>(*t.m), view<T>(*t.v)});
    gpu::adamw_update(context(), step, std::span<const AdamWTensors<T, Cuda>>(typed));
  };
  if (dtype == DType::f32)
    run(Tag<float>{});
  else
    run(Tag<double>{});
}

}  // namespace peft::gpu
