#pragma once
// Importance statistics for rank allocation (AdaLoRA) on the GPU, with the CPU twin's
// signatures and arithmetic (backend/cpu/importance.hpp): double math, rounded once.

#include "elementwise.cuh"
#include "launch.cuh"

namespace peft::gpu {
namespace detail {

template <class P, class S>
struct ImportanceOp {
  const P* value;
  index_t ldv;
  const P* grad;
  index_t ldg;
  S* sensitivity;
  index_t lds;
  S* uncertainty;
  index_t ldu;
  S* score;
  index_t ldc;
  double beta1, beta2;
  __device__ void operator()(index_t i, index_t j) const {
    const double ipt = fabs(__dmul_rn(double(value[i * ldv + j]), double(grad[i * ldg + j])));
    const double avg =
        __dadd_rn(__dmul_rn(beta1, double(sensitivity[i * lds + j])), __dmul_rn(1.0 - beta1, ipt));
    const double unc = __dadd_rn(__dmul_rn(beta2, double(uncertainty[i * ldu + j])),
                                 __dmul_rn(1.0 - beta2, fabs(ipt - avg)));
    sensitivity[i * lds + j] = S(avg);
    uncertainty[i * ldu + j] = S(unc);
    score[i * ldc + j] = S(__dmul_rn(avg, unc));
  }
};

template <class TX, class TY>
struct MultiplyOp {
  const TX* x;
  index_t ldx;
  TY* y;
  index_t ldy;
  __device__ void operator()(index_t i, index_t j) const {
    TY& e = y[i * ldy + j];
    e = convert<TY>(__dmul_rn(convert<double>(x[i * ldx + j]), convert<double>(e)));
  }
};

}  // namespace detail

template <class P, class S>
void importance_update(Context<Cuda>& ctx, double beta1, double beta2,
                       MatrixView<const P, Cuda> value, MatrixView<const P, Cuda> grad,
                       MatrixView<S, Cuda> sensitivity, MatrixView<S, Cuda> uncertainty,
                       MatrixView<S, Cuda> score) {
  static_assert(std::is_floating_point_v<P> && std::is_floating_point_v<S>,
                "importance_update: fp32 or fp64 parameters and statistics");
  peft::detail::check_same_shapes("importance_update", value, grad, sensitivity, uncertainty,
                                  score);
  detail::for_each_element(
      ctx, value.rows(), value.cols(),
      detail::ImportanceOp<P, S>{value.data(), value.stride(), grad.data(), grad.stride(),
                                 sensitivity.data(), sensitivity.stride(), uncertainty.data(),
                                 uncertainty.stride(), score.data(), score.stride(), beta1, beta2});
}

/// y = x ⊙ y (masks).
template <class TX, class TY>
void multiply(Context<Cuda>& ctx, MatrixView<TX, Cuda> x, MatrixView<TY, Cuda> y) {
  detail::check_same_shape("multiply", x, y);
  using X = std::remove_const_t<TX>;
  detail::for_each_element(ctx, x.rows(), x.cols(),
                           detail::MultiplyOp<X, TY>{x.data(), x.stride(), y.data(), y.stride()});
}

}  // namespace peft::gpu
