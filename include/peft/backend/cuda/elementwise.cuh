#pragma once
// Element-wise primitives and reductions on the GPU, with the CPU backend's signatures and
// semantics (backend/cpu/elementwise.hpp). Reductions accumulate in double and return to the
// host, so they synchronise the context's stream: they are not meant for hot paths.

#include <cstdint>
#include <span>
#include <type_traits>

#include "../../core/adamw_step.hpp"
#include "../../core/random.hpp"
#include "../checks.hpp"
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::gpu {
namespace detail {

// The argument checks shared with the CPU backend (backend/checks.hpp).
using peft::detail::check_same_shape;

/// Arithmetic type of element-wise math: double for double, float otherwise.
template <class T>
using math_t = std::conditional_t<std::is_same_v<std::remove_const_t<T>, double>, double, float>;

template <class T>
struct FillOp {
  T* x;
  index_t ld;
  T value;
  __device__ void operator()(index_t i, index_t j) const { x[i * ld + j] = value; }
};

// scale, axpy (and accumulate_squares, add_sparse_to_dense in sparse.cuh) compute in double with
// alpha unrounded, then round once to the element type, exactly as the CPU primitives do: in
// float, alpha itself would be rounded and the product rounded twice, so the two backends could
// disagree in the last bit and a top-k mask built from the results could differ at near-ties.
// The explicit _rn intrinsics stop nvcc from contracting into a fused multiply-add, which the
// CPU (no FMA without -march) does not do either. Memory-bound: double costs nothing measurable.

template <class T>
struct ScaleOp {
  T* x;
  index_t ld;
  double alpha;
  __device__ void operator()(index_t i, index_t j) const {
    T& e = x[i * ld + j];
    e = convert<T>(__dmul_rn(alpha, convert<double>(e)));
  }
};

template <class TX, class TY>
struct AxpyOp {
  const TX* x;
  index_t ldx;
  TY* y;
  index_t ldy;
  double alpha;
  __device__ void operator()(index_t i, index_t j) const {
    TY& e = y[i * ldy + j];
    e = convert<TY>(
        __dadd_rn(__dmul_rn(alpha, convert<double>(x[i * ldx + j])), convert<double>(e)));
  }
};

template <class TS, class TD>
struct CopyOp {
  const TS* src;
  index_t lds;
  TD* dst;
  index_t ldd;
  __device__ void operator()(index_t i, index_t j) const {
    dst[i * ldd + j] = convert<TD>(src[i * lds + j]);
  }
};

template <class TB, class T>
struct BroadcastRowsOp {
  const TB* b;
  index_t inc;
  T* y;
  index_t ld;
  __device__ void operator()(index_t i, index_t j) const { y[i * ld + j] = convert<T>(b[j * inc]); }
};

/// Each thread owns one Philox block: 4 consecutive flat indices of the logical matrix.
template <class TX, class T>
__global__ void dropout_kernel(const RandomStream* stream, std::uint32_t threshold,
                               math_t<T> keep_scale, const TX* x, index_t ldx, T* out, index_t ldo,
                               index_t rows, index_t cols) {
  const RandomStream s = *stream;
  const index_t total = rows * cols;
  const index_t blocks = (total + 3) / 4;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t b = index_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += step) {
    const PhiloxCounter r = s.block(static_cast<std::uint64_t>(b));
    for (int lane = 0; lane < 4; ++lane) {
      const index_t flat = b * 4 + lane;
      if (flat >= total) break;
      const index_t i = flat / cols, j = flat % cols;
      const bool keep = r.c[lane] >= threshold;
      out[i * ldo + j] = keep ? convert<T>(convert<math_t<T>>(x[i * ldx + j]) * keep_scale)
                              : convert<T>(math_t<T>(0));
    }
  }
}

/// Block-wide sum of x ⊙ y in double, one atomicAdd per block.
template <class TX, class TY>
__global__ void dot_kernel(const TX* x, index_t ldx, const TY* y, index_t ldy, index_t rows,
                           index_t cols, double* result) {
  __shared__ double partial[kThreadsPerBlock];
  double sum = 0;
  const index_t total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const index_t i = idx / cols, j = idx % cols;
    sum += convert<double>(x[i * ldx + j]) * convert<double>(y[i * ldy + j]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreadsPerBlock / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(result, partial[0]);
}

template <class T>
__global__ void count_non_finite_kernel(const T* x, index_t ld, index_t rows, index_t cols,
                                        unsigned long long* result) {
  unsigned long long bad = 0;
  const index_t total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const auto v = convert<math_t<T>>(x[(idx / cols) * ld + idx % cols]);
    bad += isfinite(v) ? 0 : 1;
  }
  if (bad != 0) atomicAdd(result, bad);
}

template <class T>
T read_scalar(Context<Cuda>& ctx) {
  PEFT_CUDA_CHECK(cudaMemcpyAsync(ctx.reduction_host(), ctx.reduction_device(), sizeof(T),
                                  cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return *static_cast<const T*>(ctx.reduction_host());
}

}  // namespace detail

/// x = value.
template <class T>
void fill(Context<Cuda>& ctx, MatrixView<T, Cuda> x, double value) {
  detail::for_each_element(ctx, x.rows(), x.cols(),
                           detail::FillOp<T>{x.data(), x.stride(), detail::convert<T>(value)});
}

/// x = alpha x, computed in double and rounded once (as on the CPU).
template <class T>
void scale(Context<Cuda>& ctx, double alpha, MatrixView<T, Cuda> x) {
  detail::for_each_element(ctx, x.rows(), x.cols(),
                           detail::ScaleOp<T>{x.data(), x.stride(), alpha});
}

/// y = alpha x + y, computed in double and rounded once (as on the CPU); x may have another
/// element type.
template <class TX, class TY>
void axpy(Context<Cuda>& ctx, double alpha, MatrixView<TX, Cuda> x, MatrixView<TY, Cuda> y) {
  detail::check_same_shape("axpy", x, y);
  using X = std::remove_const_t<TX>;
  detail::for_each_element(
      ctx, x.rows(), x.cols(),
      detail::AxpyOp<X, TY>{x.data(), x.stride(), y.data(), y.stride(), alpha});
}

/// dst = src, converting the element type.
template <class TS, class TD>
void copy(Context<Cuda>& ctx, MatrixView<TS, Cuda> src, MatrixView<TD, Cuda> dst) {
  detail::check_same_shape("copy", src, dst);
  using S = std::remove_const_t<TS>;
  detail::for_each_element(
      ctx, src.rows(), src.cols(),
      detail::CopyOp<S, TD>{src.data(), src.stride(), dst.data(), dst.stride()});
}

/// Every row of y = b.
template <class TB, class T>
void broadcast_rows(Context<Cuda>& ctx, VectorView<TB, Cuda> b, MatrixView<T, Cuda> y) {
  peft::detail::check_broadcast_rows(b, y);
  using BU = std::remove_const_t<TB>;
  detail::for_each_element(ctx, y.rows(), y.cols(),
                           detail::BroadcastRowsOp<BU, T>{b.data(), b.inc(), y.data(), y.stride()});
}

/// out = x ⊙ mask / (1 - p), bit-identical to the CPU primitive for the same stream: element
/// (i, j) is kept when stream.bits(i * cols + j) >= dropout_threshold(p), and kept elements are
/// scaled by 1 / (1 - p) with 1 - p formed in double (PyTorch's x · (mask / (1 - p)) for a
/// Python float p) and rounded once to the output's arithmetic type, as the CPU does. `stream`
/// points to device memory (a layer's reserve). x and out may be the same view. p in [0, 1).
template <class TX, class T>
void dropout(Context<Cuda>& ctx, const RandomStream* stream, double p, MatrixView<TX, Cuda> x,
             MatrixView<T, Cuda> out) {
  detail::check_same_shape("dropout", x, out);
  const index_t rows = x.rows(), cols = x.cols();
  peft::detail::check_dropout(p, stream, rows, cols);
  if (rows == 0 || cols == 0) return;
  using S = detail::math_t<T>;
  using X = std::remove_const_t<TX>;
  const S keep_scale = S(1) / S(1.0 - p);
  detail::dropout_kernel<X, T>
      <<<detail::grid_size((rows * cols + 3) / 4), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          stream, dropout_threshold(p), keep_scale, x.data(), x.stride(), out.data(), out.stride(),
          rows, cols);
  PEFT_CUDA_CHECK_LAUNCH();
}

/// Σ x ⊙ y in double (synchronises).
template <class TX, class TY>
double dot(Context<Cuda>& ctx, MatrixView<TX, Cuda> x, MatrixView<TY, Cuda> y) {
  detail::check_same_shape("dot", x, y);
  if (x.empty()) return 0.0;
  auto* result = static_cast<double*>(ctx.reduction_device());
  PEFT_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), ctx.stream()));
  using X = std::remove_const_t<TX>;
  using Y = std::remove_const_t<TY>;
  detail::dot_kernel<X, Y>
      <<<std::min(detail::grid_size(x.size()), 1024u), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          x.data(), x.stride(), y.data(), y.stride(), x.rows(), x.cols(), result);
  PEFT_CUDA_CHECK_LAUNCH();
  return detail::read_scalar<double>(ctx);
}

/// Frobenius norm (synchronises).
template <class T>
double norm(Context<Cuda>& ctx, MatrixView<T, Cuda> x) {
  return std::sqrt(dot(ctx, x, x));
}

/// True when no element is NaN or infinite (synchronises).
template <class T>
bool all_finite(Context<Cuda>& ctx, MatrixView<T, Cuda> x) {
  if (x.empty()) return true;
  auto* result = static_cast<unsigned long long*>(ctx.reduction_device());
  PEFT_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(unsigned long long), ctx.stream()));
  using X = std::remove_const_t<T>;
  detail::count_non_finite_kernel<X>
      <<<std::min(detail::grid_size(x.size()), 1024u), detail::kThreadsPerBlock, 0, ctx.stream()>>>(
          x.data(), x.stride(), x.rows(), x.cols(), result);
  PEFT_CUDA_CHECK_LAUNCH();
  return detail::read_scalar<unsigned long long>(ctx) == 0;
}

}  // namespace peft::gpu

namespace peft::gpu {
namespace detail {

/// Up to kAdamWBatch tensors per launch, passed by value as kernel arguments (no device-side
/// descriptor array to keep in sync).
inline constexpr int kAdamWBatch = 16;

template <class T>
struct AdamWBatch {
  T* value[kAdamWBatch];
  const T* grad[kAdamWBatch];
  T* m[kAdamWBatch];
  T* v[kAdamWBatch];
  index_t rows[kAdamWBatch];
  index_t cols[kAdamWBatch];
  index_t ld_value[kAdamWBatch], ld_grad[kAdamWBatch], ld_m[kAdamWBatch], ld_v[kAdamWBatch];
};

/// blockIdx.y selects the tensor; blocks in x stride over its elements.
template <class T>
__global__ void adamw_kernel(AdamWBatch<T> batch, T beta1, T one_minus_beta1, T beta2,
                             T one_minus_beta2, T eps, T decay, T step_size, T sqrt_bc2) {
  const int t = blockIdx.y;
  const index_t rows = batch.rows[t], cols = batch.cols[t], total = rows * cols;
  const index_t step = index_t(gridDim.x) * blockDim.x;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const index_t i = idx / cols, j = idx % cols;
    const T g = batch.grad[t][i * batch.ld_grad[t] + j];
    T& m = batch.m[t][i * batch.ld_m[t] + j];
    T& v = batch.v[t][i * batch.ld_v[t] + j];
    T& p = batch.value[t][i * batch.ld_value[t] + j];
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * g * g;
    p = p * decay - step_size * m / (sqrt(v) / sqrt_bc2 + eps);
  }
}

}  // namespace detail

/// One fused AdamW step (PyTorch semantics, as the CPU primitive) over all given parameters.
template <class T>
void adamw_update(Context<Cuda>& ctx, const AdamWStep& h,
                  std::span<const AdamWTensors<T, Cuda>> tensors) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "adamw_update: parameters are float or double");
  // Derived scalars in double, rounded once, exactly as the CPU primitive forms them.
  const T decay = T(1.0 - h.lr * h.weight_decay);
  const T step_size = T(h.lr / h.bias_correction1);
  const T sqrt_bc2 = T(std::sqrt(h.bias_correction2));
  for (std::size_t first = 0; first < tensors.size(); first += detail::kAdamWBatch) {
    detail::AdamWBatch<T> batch{};
    const int count =
        static_cast<int>(std::min<std::size_t>(detail::kAdamWBatch, tensors.size() - first));
    index_t largest = 0;
    for (int k = 0; k < count; ++k) {
      const auto& t = tensors[first + k];
      detail::check_same_shape("adamw_update (grad)", t.value, t.grad);
      detail::check_same_shape("adamw_update (m)", t.value, t.m);
      detail::check_same_shape("adamw_update (v)", t.value, t.v);
      batch.value[k] = t.value.data();
      batch.grad[k] = t.grad.data();
      batch.m[k] = t.m.data();
      batch.v[k] = t.v.data();
      batch.rows[k] = t.value.rows();
      batch.cols[k] = t.value.cols();
      batch.ld_value[k] = t.value.stride();
      batch.ld_grad[k] = t.grad.stride();
      batch.ld_m[k] = t.m.stride();
      batch.ld_v[k] = t.v.stride();
      largest = std::max(largest, t.value.size());
    }
    if (largest == 0) continue;
    const dim3 grid(std::min(detail::grid_size(largest), 4096u), static_cast<unsigned>(count));
    detail::adamw_kernel<T><<<grid, detail::kThreadsPerBlock, 0, ctx.stream()>>>(
        batch, T(h.beta1), T(1.0 - h.beta1), T(h.beta2), T(1.0 - h.beta2), T(h.eps), decay,
        step_size, sqrt_bc2);
    PEFT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace peft::gpu
