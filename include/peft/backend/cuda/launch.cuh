#pragma once
// The launch helper every element-wise primitive uses: a grid-stride loop over the rows x cols
// elements of a strided matrix, calling a functor f(i, j) on the context's stream.

#include <algorithm>

#include "context.hpp"

namespace peft::gpu::detail {

inline constexpr int kThreadsPerBlock = 256;

template <class F>
__global__ void for_each_element_kernel(index_t rows, index_t cols, F f) {
  const index_t total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step)
    f(idx / cols, idx % cols);
}

inline unsigned grid_size(index_t work_items) {
  const index_t blocks = (work_items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(std::clamp<index_t>(blocks, 1, index_t{1} << 20));
}

template <class F>
void for_each_element(Context<Cuda>& ctx, index_t rows, index_t cols, const F& f) {
  if (rows == 0 || cols == 0) return;
  for_each_element_kernel<<<grid_size(rows * cols), kThreadsPerBlock, 0, ctx.stream()>>>(rows, cols,
                                                                                         f);
  PEFT_CUDA_CHECK_LAUNCH();
}

}  // namespace peft::gpu::detail
