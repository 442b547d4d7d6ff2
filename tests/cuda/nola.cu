// NOLA's GPU primitives for the CUDA tests (nola.hpp).

#include "device.cuh"
#include "nola.hpp"

namespace peft::gpu {
namespace {

__global__ void basis_entries_kernel(RandomBasis basis, const std::uint32_t* members,
                                     const std::uint64_t* elements, index_t count, float* out) {
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < count; k += step)
    out[k] = basis.entry(members[k], elements[k]);
}

template <class T>
Vector<T, Cuda> to_device(std::span<const T> host) {
  Vector<T, Cuda> d(static_cast<index_t>(host.size()));
  if (!host.empty())
    PEFT_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T),
                                    cudaMemcpyHostToDevice, context().stream()));
  return d;
}

template <class F>
auto floating(DType p, F&& f) {
  PEFT_CHECK_ARG(p == DType::f32 || p == DType::f64,
                 "gpu test: NOLA primitives take f32 or f64, not ", name(p));
  return dispatch(p, [&](auto tag) {
    using P = typename decltype(tag)::type;
    if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>)
      return f(Tag<P>{});
    else
      return f(Tag<float>{});  // unreachable: checked above
  });
}

}  // namespace

std::vector<float> nola_basis_entries(const RandomBasis& basis,
                                      std::span<const std::uint32_t> members,
                                      std::span<const std::uint64_t> elements) {
  PEFT_CHECK_ARG(members.size() == elements.size(), "gpu test: ", members.size(), " members, ",
                 elements.size(), " elements");
  const auto count = static_cast<index_t>(members.size());
  std::vector<float> result(members.size());
  if (count == 0) return result;
  auto d_members = to_device(members);
  auto d_elements = to_device(elements);
  Vector<float, Cuda> d_out(count);
  basis_entries_kernel<<<gpu::detail::grid_size(count), 256, 0, context().stream()>>>(
      basis, d_members.data(), d_elements.data(), count, d_out.data());
  PEFT_CUDA_CHECK_LAUNCH();
  PEFT_CUDA_CHECK(cudaMemcpyAsync(result.data(), d_out.data(), result.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, context().stream()));
  synchronize();
  return result;
}

HostMatrix nola_combine(DType p, const RandomBasis& basis, HostView coefficients, double beta,
                        HostView start, bool strided, bool* gaps_untouched) {
  return floating(p, [&](auto tag) {
    using P = typename decltype(tag)::type;
    DeviceMatrix c(p, coefficients);
    DeviceMatrix out(p, start, strided);
    gpu::nola_combine(context(), basis, cview<P>(c), beta, view<P>(out));
    synchronize();
    if (gaps_untouched) *gaps_untouched = out.gaps_untouched();
    return out.download();
  });
}

HostMatrix nola_project(DType p, const RandomBasis& basis, HostView grad, HostView start,
                        bool strided) {
  return floating(p, [&](auto tag) {
    using P = typename decltype(tag)::type;
    DeviceMatrix g(p, grad, strided);
    DeviceMatrix grads(p, start);
    gpu::nola_project(context(), basis, cview<P>(g), view<P>(grads));
    synchronize();
    return grads.download();
  });
}

index_t nola_project_workspace_bytes(index_t count, index_t elements) {
  return gpu::nola_project_workspace_bytes(context(), count, elements);
}

}  // namespace peft::gpu
