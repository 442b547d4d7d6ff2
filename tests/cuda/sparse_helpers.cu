// The small sparse primitives of the CUDA tests: add_sparse_to_dense, gather and
// accumulate_squares, with every pair of element types.

#include "sparse_device.cuh"

namespace peft::gpu {

void add_sparse_to_dense(double alpha, const DeviceCsr& s, bool transposed, DeviceMatrix& dense) {
  dispatch(s.dtype(), [&](auto tv) {
    dispatch(dense.dtype(), [&](auto tt) {
      using V = typename decltype(tv)::type;
      using T = typename decltype(tt)::type;
      const auto& m = csr<V>(s);
      const CsrView<const V, Cuda> sv = transposed ? m.transposed_view() : m.view();
      gpu::add_sparse_to_dense(context(), alpha, sv, view<T>(dense));
    });
  });
}

double time_add_sparse_to_dense_ms(double alpha, const DeviceCsr& s, bool transposed,
                                   DeviceMatrix& dense, int repeats) {
  PEFT_CHECK_ARG(repeats > 0, "gpu test time_add_sparse_to_dense_ms: repeats is ", repeats);
  add_sparse_to_dense(alpha, s, transposed, dense);  // warm-up (and the kernel's first load)
  cudaEvent_t start = nullptr, stop = nullptr;
  PEFT_CUDA_CHECK(cudaEventCreate(&start));
  if (const cudaError_t status = cudaEventCreate(&stop); status != cudaSuccess) {
    (void)cudaEventDestroy(start);
    PEFT_CUDA_CHECK(status);
  }
  float ms = 0;
  cudaError_t status = cudaEventRecord(start, context().stream());
  for (int i = 0; i < repeats && status == cudaSuccess; ++i)
    add_sparse_to_dense(alpha, s, transposed, dense);
  if (status == cudaSuccess) status = cudaEventRecord(stop, context().stream());
  if (status == cudaSuccess) status = cudaEventSynchronize(stop);
  if (status == cudaSuccess) status = cudaEventElapsedTime(&ms, start, stop);
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  PEFT_CUDA_CHECK(status);
  return double(ms) / repeats;
}

void gather(const DeviceMatrix& src, std::span<const std::int32_t> index, DeviceMatrix& dst) {
  PEFT_CHECK_SHAPE(src.rows() <= 1 && dst.rows() <= 1, "gpu test gather: src and dst are rows");
  const auto d_index = device_indices(index);
  dispatch(src.dtype(), [&](auto ts) {
    dispatch(dst.dtype(), [&](auto td) {
      using TS = typename decltype(ts)::type;
      using TD = typename decltype(td)::type;
      const MatrixView<const TS, Cuda> s = cview<TS>(src);
      const MatrixView<TD, Cuda> d = view<TD>(dst);
      gpu::gather(context(), VectorView<const TS, Cuda>(s.data(), s.cols()),
                  VectorView<const std::int32_t, Cuda>(d_index.data(), d_index.size()),
                  VectorView<TD, Cuda>(d.data(), d.cols()));
    });
  });
}

void accumulate_squares(double alpha, const DeviceMatrix& src, DeviceMatrix& dst) {
  dispatch(src.dtype(), [&](auto ts) {
    dispatch(dst.dtype(), [&](auto td) {
      using TS = typename decltype(ts)::type;
      using TD = typename decltype(td)::type;
      gpu::accumulate_squares(context(), alpha, cview<TS>(src), view<TD>(dst));
    });
  });
}

}  // namespace peft::gpu
