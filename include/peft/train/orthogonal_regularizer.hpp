#pragma once
// AdaLoRA's orthogonal regulariser (PEFT adds it to the loss in AdaLoraModel.forward):
//   R = w · (Σ_layers ‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F) / (2 · layers),
// the plain (not squared) Frobenius norms. One call before the optimizer step returns R (for
// logging) and adds its gradient, w / (2 · layers) · 2 M A / ‖M‖_F for M = A Aᵀ − I (and
// 2 B N / ‖N‖_F for N = Bᵀ B − I), to the gradients of lora_A and lora_B. PEFT adds the term only
// when the model returns a loss (its #432); here it is explicit.

#include <cmath>
#include <vector>

#include "../adapters/adalora.hpp"

namespace peft {

template <class T, class B>
double add_orthogonal_regularization(Context<B>& ctx, const std::vector<AdaLora<T, B>*>& layers,
                                     double weight = 0.5) {
  using P = param_t<T>;
  PEFT_CHECK_ARG(weight >= 0 && std::isfinite(weight), "add_orthogonal_regularization: weight is ",
                 weight, ", expected a finite value >= 0");
  if (layers.empty() || weight == 0) return 0.0;
  const double per_norm = weight / (2.0 * double(layers.size()));
  double total = 0;
  for (AdaLora<T, B>* layer : layers) {
    PEFT_CHECK_ARG(layer != nullptr, "add_orthogonal_regularization: a null layer");
    auto params = layer->parameters();  // lora_A, lora_E, lora_B
    const index_t r = layer->rank();
    typename detail::Workspace<B>::Frame frame(ctx.workspace());
    auto gram = frame.template matrix<P>(r, r);
    auto minus_identity = [&](MatrixView<P, B> m) {
      auto ones = frame.template matrix<P>(r, 1);
      fill(ctx, ones, 1.0);
      axpy(ctx, -1.0, as_const(ones), MatrixView<P, B>(m.data(), r, 1, m.stride() + 1));
    };
    // A Aᵀ − I, then dA += c · (A Aᵀ − I) A.
    auto a = params[0];
    gemm(ctx, Op::N, Op::T, 1.0, as_const(a.value), as_const(a.value), 0.0, gram);
    minus_identity(gram);
    const double norm_a = norm(ctx, as_const(gram));
    if (norm_a > 0)
      gemm(ctx, Op::N, Op::N, per_norm * 2.0 / norm_a, as_const(gram), as_const(a.value), 1.0,
           a.grad);
    // Bᵀ B − I, then dB += c · B (Bᵀ B − I).
    auto b = params[2];
    gemm(ctx, Op::T, Op::N, 1.0, as_const(b.value), as_const(b.value), 0.0, gram);
    minus_identity(gram);
    const double norm_b = norm(ctx, as_const(gram));
    if (norm_b > 0)
      gemm(ctx, Op::N, Op::N, per_norm * 2.0 / norm_b, as_const(b.value), as_const(gram), 1.0,
           b.grad);
    total += norm_a + norm_b;
  }
  return per_norm * total;
}

}  // namespace peft
