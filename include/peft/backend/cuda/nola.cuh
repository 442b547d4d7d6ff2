#pragma once
// NOLA's primitives on the GPU, with the CPU twins' signatures and semantics
// (backend/cpu/nola.hpp). The kernels draw basis entries in registers from Philox and never
// store a basis, not even a tile of one:
//
//   nola_combine:  out = beta · out + Σ_m c_m · basis_m
//     one warp per Philox block of 4 entries; its 32 lanes take every 32nd member, the
//     coefficients pass through shared memory, and a butterfly of shuffles sums the lanes in a
//     fixed order (deterministic).
//   nola_project:  g_m += ⟨grad, basis_m⟩
//     one CUDA block per (member, chunk of entries), double sums reduced in a fixed tree into a
//     [chunk][member] scratch from the workspace, then one thread per member adds the chunks in
//     order (deterministic).

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../core/random.hpp"
#include "launch.cuh"

namespace peft::gpu {
namespace detail {

inline constexpr int kNolaWarps = 8;                // element blocks per CUDA block (combine)
inline constexpr int kNolaCoefficientTile = 1024;   // coefficients in shared memory at once
inline constexpr int kNolaProjectThreads = 256;     // threads per CUDA block (project)
inline constexpr index_t kNolaMinChunk = 4096;      // fewest entries per chunk (project)
inline constexpr index_t kNolaTargetBlocks = 2048;  // CUDA blocks project aims for

template <class P>
index_t nola_vector_length(const char* who, const char* what, MatrixView<P, Cuda> v) {
  PEFT_CHECK_SHAPE(v.rows() == 1 || v.cols() == 1, who, ": ", what, " is ", shape_string(v),
                   ", expected a [k, 1] or [1, k] vector");
  return v.size();
}
/// Distance between consecutive elements of a [k, 1] or [1, k] vector.
template <class P>
index_t nola_vector_inc(MatrixView<P, Cuda> v) {
  return v.cols() == 1 ? v.stride() : 1;
}

inline void nola_check_basis(const char* who, const RandomBasis& basis, index_t count,
                             index_t elements) {
  PEFT_CHECK_ARG(count >= 1 && std::uint64_t(count) <= std::uint64_t{0xFFFFFFFFu}, who, ": ", count,
                 " basis members, expected 1 to 4294967295 (the member index is 32 bits)");
  PEFT_CHECK_ARG(std::uint64_t(elements) <= kMaxStreamElements, who, ": a member has ", elements,
                 " entries, at most ", kMaxStreamElements, " can be drawn from one stream");
  PEFT_CHECK_ARG(basis.bound >= 0.0f && basis.bound <= 3.0e38f, who, ": basis bound is ",
                 basis.bound, ", expected a finite value >= 0");
}

/// nola_project's chunks of `chunk` entries (a multiple of 4); depends on the sizes only.
struct NolaSplit {
  index_t chunks, chunk;
};
inline NolaSplit nola_split(index_t count, index_t elements) {
  const index_t max_chunks = std::max<index_t>(1, elements / kNolaMinChunk);
  const index_t chunks =
      std::clamp<index_t>((kNolaTargetBlocks + count - 1) / count, 1, max_chunks);
  index_t chunk = (elements + chunks - 1) / chunks;
  chunk = (chunk + 3) / 4 * 4;
  return {(elements + chunk - 1) / chunk, chunk};
}

/// (row, column) of flat entry e of a matrix with `cols` columns.
struct NolaPosition {
  index_t i, j;
};
__device__ inline NolaPosition nola_position(index_t e, index_t cols) {
  const index_t i = e / cols;
  return {i, e - i * cols};
}

template <class P>
__global__ void nola_combine_kernel(RandomBasis basis, const P* coefficients, index_t inc,
                                    index_t count, double beta, P* out, index_t rows, index_t cols,
                                    index_t ld) {
  __shared__ P c[kNolaCoefficientTile];
  const int lane = int(threadIdx.x % 32);
  const index_t elements = rows * cols;
  const index_t block = index_t(blockIdx.x) * kNolaWarps + threadIdx.x / 32;  // Philox block
  const bool active = 4 * block < elements;
  P acc[4] = {P(0), P(0), P(0), P(0)};
  for (index_t m0 = 0; m0 < count; m0 += kNolaCoefficientTile) {
    const index_t n = count - m0 < kNolaCoefficientTile ? count - m0 : kNolaCoefficientTile;
    __syncthreads();
    for (index_t k = threadIdx.x; k < n; k += blockDim.x) c[k] = coefficients[(m0 + k) * inc];
    __syncthreads();
    if (!active) continue;
    for (index_t k = lane; k < n; k += 32) {
      const P cm = c[k];
      if (cm == P(0)) continue;
      const PhiloxCounter r =
          basis.member(static_cast<std::uint32_t>(m0 + k)).block(std::uint64_t(block));
#pragma unroll
      for (int w = 0; w < 4; ++w)
        acc[w] += cm * static_cast<P>(uniform_symmetric(r.c[w], basis.bound));
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
#pragma unroll
    for (int w = 0; w < 4; ++w) acc[w] += __shfl_xor_sync(0xFFFFFFFFu, acc[w], offset);
  if (!active || lane >= 4) return;
  const index_t e = 4 * block + lane;
  if (e >= elements) return;
  const P sum = lane == 0 ? acc[0] : lane == 1 ? acc[1] : lane == 2 ? acc[2] : acc[3];
  const NolaPosition at = nola_position(e, cols);
  P& o = out[at.i * ld + at.j];
  o = beta == 0.0 ? sum : static_cast<P>(__dadd_rn(__dmul_rn(beta, double(o)), double(sum)));
}

template <class P>
__global__ void nola_project_kernel(RandomBasis basis, const P* grad, index_t cols, index_t ld,
                                    index_t elements, index_t count, index_t chunk,
                                    double* partial) {
  __shared__ double sums[kNolaProjectThreads];
  const index_t m = index_t(blockIdx.x) % count;
  const index_t c = index_t(blockIdx.x) / count;
  const index_t e0 = c * chunk;
  const index_t e1 = e0 + chunk < elements ? e0 + chunk : elements;
  const RandomStream stream = basis.member(static_cast<std::uint32_t>(m));
  double sum = 0.0;
  for (index_t b = e0 / 4 + threadIdx.x; 4 * b < e1; b += blockDim.x) {
    const PhiloxCounter r = stream.block(std::uint64_t(b));
    NolaPosition at = nola_position(4 * b, cols);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      if (4 * b + w < e1) {
        const double v = double(uniform_symmetric(r.c[w], basis.bound));
        sum = __fma_rn(double(grad[at.i * ld + at.j]), v, sum);
      }
      if (++at.j == cols) {
        at.j = 0;
        ++at.i;
      }
    }
  }
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kNolaProjectThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[c * count + m] = sums[0];
}

template <class P>
__global__ void nola_project_reduce_kernel(const double* partial, index_t chunks, index_t count,
                                           P* grads, index_t inc) {
  const index_t m = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= count) return;
  double total = 0.0;
  for (index_t c = 0; c < chunks; ++c) total += partial[c * count + m];
  P& g = grads[m * inc];
  g = static_cast<P>(double(g) + total);
}

}  // namespace detail

/// Workspace bytes one nola_project call over `count` members of `elements` entries takes.
inline index_t nola_project_workspace_bytes(const Context<Cuda>&, index_t count, index_t elements) {
  if (count <= 0 || elements <= 0) return 0;
  const auto split = detail::nola_split(count, elements);
  constexpr index_t align = index_t(peft::detail::Workspace<Cuda>::alignment);
  return (split.chunks * count * index_t(sizeof(double)) + align - 1) / align * align;
}

/// out = beta · out + Σ_m coefficients_m · basis_m (see the CPU twin). Accumulates in P.
template <class P>
void nola_combine(Context<Cuda>& ctx, const RandomBasis& basis,
                  MatrixView<const P, Cuda> coefficients, double beta, MatrixView<P, Cuda> out) {
  static_assert(std::is_floating_point_v<P>, "nola_combine: float or double coefficients");
  const index_t count = detail::nola_vector_length("nola_combine", "coefficients", coefficients);
  const index_t elements = out.size();
  detail::nola_check_basis("nola_combine", basis, count, elements);
  if (elements == 0) return;
  const index_t blocks = (elements + 3) / 4;
  const index_t grid = (blocks + detail::kNolaWarps - 1) / detail::kNolaWarps;
  detail::nola_combine_kernel<P>
      <<<static_cast<unsigned>(grid), 32 * detail::kNolaWarps, 0, ctx.stream()>>>(
          basis, coefficients.data(), detail::nola_vector_inc(coefficients), count, beta,
          out.data(), out.rows(), out.cols(), out.stride());
  PEFT_CUDA_CHECK_LAUNCH();
}

/// coefficient_grads_m += ⟨grad, basis_m⟩ for every member m (see the CPU twin). Sums in
/// double, rounded to P once. Takes nola_project_workspace_bytes(ctx, k, grad.size()) bytes
/// of the workspace.
template <class P>
void nola_project(Context<Cuda>& ctx, const RandomBasis& basis, MatrixView<const P, Cuda> grad,
                  MatrixView<P, Cuda> coefficient_grads) {
  static_assert(std::is_floating_point_v<P>, "nola_project: float or double gradients");
  const index_t count =
      detail::nola_vector_length("nola_project", "coefficient_grads", coefficient_grads);
  const index_t elements = grad.size();
  detail::nola_check_basis("nola_project", basis, count, elements);
  if (elements == 0) return;
  const auto split = detail::nola_split(count, elements);
  PEFT_CHECK_ARG(split.chunks * count <= index_t{0x7FFFFFFF}, "nola_project: ", count,
                 " members in ", split.chunks, " chunks exceed the grid's 2^31 - 1 blocks");
  typename peft::detail::Workspace<Cuda>::Frame frame(ctx.workspace());
  double* partial = frame.take<double>(split.chunks * count);
  detail::nola_project_kernel<P><<<static_cast<unsigned>(split.chunks * count),
                                   detail::kNolaProjectThreads, 0, ctx.stream()>>>(
      basis, grad.data(), grad.cols(), grad.stride(), elements, count, split.chunk, partial);
  PEFT_CUDA_CHECK_LAUNCH();
  detail::nola_project_reduce_kernel<P>
      <<<detail::grid_size(count), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          partial, split.chunks, count, coefficient_grads.data(),
          detail::nola_vector_inc(coefficient_grads));
  PEFT_CUDA_CHECK_LAUNCH();
}

}  // namespace peft::gpu
