// Philox and dropout on the device for the CUDA tests: a kernel that evaluates the library's
// RandomStream for given indices, and the dropout primitive with its stream in device memory.

#include <cstring>

#include "device.cuh"

namespace peft::gpu {
namespace {

__global__ void bits_kernel(RandomStream stream, const std::uint64_t* indices, index_t count,
                            std::uint32_t* out) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < count; k += step)
    out[k] = stream.bits(indices[k]);
}

__global__ void uniform_kernel(RandomStream stream, float bound, const std::uint64_t* indices,
                               index_t count, float* out) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < count; k += step)
    out[k] = uniform_symmetric(stream.bits(indices[k]), bound);
}

/// Runs `launch(device indices, device out)` and returns the outputs.
template <class Out, class Launch>
std::vector<Out> run_over_indices(std::span<const std::uint64_t> indices, Launch&& launch) {
  Context<Cuda>& ctx = context();
  const auto count = static_cast<index_t>(indices.size());
  std::vector<Out> result(indices.size());
  if (count == 0) return result;
  Vector<std::uint64_t, Cuda> d_indices(count);
  Vector<Out, Cuda> d_out(count);
  PEFT_CUDA_CHECK(cudaMemcpyAsync(d_indices.data(), indices.data(),
                                  indices.size() * sizeof(std::uint64_t), cudaMemcpyHostToDevice,
                                  ctx.stream()));
  launch(static_cast<const std::uint64_t*>(d_indices.data()), d_out.data(), count);
  PEFT_CUDA_CHECK_LAUNCH();
  PEFT_CUDA_CHECK(cudaMemcpyAsync(result.data(), d_out.data(), result.size() * sizeof(Out),
                                  cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return result;
}

}  // namespace

std::vector<std::uint32_t> philox_bits(const RandomStream& stream,
                                       std::span<const std::uint64_t> indices) {
  return run_over_indices<std::uint32_t>(
      indices, [&](const std::uint64_t* d_indices, std::uint32_t* d_out, index_t count) {
        bits_kernel<<<gpu::detail::grid_size(count), 256, 0, context().stream()>>>(
            stream, d_indices, count, d_out);
      });
}

std::vector<float> philox_uniform_symmetric(const RandomStream& stream, float bound,
                                            std::span<const std::uint64_t> indices) {
  return run_over_indices<float>(
      indices, [&](const std::uint64_t* d_indices, float* d_out, index_t count) {
        uniform_kernel<<<gpu::detail::grid_size(count), 256, 0, context().stream()>>>(
            stream, bound, d_indices, count, d_out);
      });
}

void dropout(const RandomStream& stream, double p, const DeviceMatrix& x, DeviceMatrix& out) {
  // The stream lives in device memory, as in a layer's reserve.
  Vector<std::byte, Cuda> slot(static_cast<index_t>(sizeof(RandomStream)));
  auto* d_stream = reinterpret_cast<RandomStream*>(slot.data());
  gpu::store_value(context(), stream, d_stream);
  dispatch(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    gpu::dropout(context(), d_stream, p, cview<T>(x), view<T>(out));
  });
  synchronize();  // before the slot is freed
}

}  // namespace peft::gpu
