#pragma once
// What every adapter provides: Parameter, the Adapter concept, and shape checks they share.

#include <concepts>
#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "../core/buffer.hpp"
#include "../core/dtype.hpp"
#include "../core/view.hpp"
#include "../core/workspace.hpp"
#include "layer_handle.hpp"

namespace peft {

/// A trainable tensor of a layer: its PEFT name (lora_A, lora_B, ...), value and gradient.
template <class P, class B>
struct Parameter {
  std::string name;
  MatrixView<P, B> value;
  MatrixView<P, B> grad;
};

/// Per-layer options that are not part of the method's config.
struct LayerOptions {
  /// Separates the random streams (init, dropout) of layers that share a seed.
  std::uint32_t stream_id = 0;
};

/// The interface all five adapter families model (checked by static_assert in the tests).
template <class L>
concept Adapter = requires(L& layer, const L& const_layer, Context<typename L::backend_type>& ctx,
                           MatrixView<const typename L::value_type, typename L::backend_type> x,
                           MatrixView<typename L::value_type, typename L::backend_type> y,
                           VectorView<std::byte, typename L::backend_type> reserve, index_t rows) {
  typename L::value_type;
  typename L::param_type;
  typename L::backend_type;
  layer.forward(ctx, x, y);
  layer.forward(ctx, x, y, reserve);
  layer.backward(ctx, x, x, y);
  layer.backward(ctx, x, x, y, reserve);
  layer.forward_delta(ctx, x, y);
  layer.forward_delta(ctx, x, y, reserve);
  layer.backward_delta(ctx, x, x, y);
  layer.backward_delta(ctx, x, x, y, reserve);
  { const_layer.reserve_bytes(rows) } -> std::convertible_to<index_t>;
  {
    layer.parameters()
    } -> std::same_as<std::vector<Parameter<typename L::param_type, typename L::backend_type>>>;
  layer.prepare_gradients(ctx);
  layer.parameters_updated(ctx);
  layer.zero_grad(ctx);
  layer.set_training(true);
  layer.merge(ctx, y);
  layer.unmerge(ctx, y);
  layer.delta_weight(ctx, y);
  { const_layer.num_trainable() } -> std::convertible_to<index_t>;
  { const_layer.in_features() } -> std::convertible_to<index_t>;
  { const_layer.out_features() } -> std::convertible_to<index_t>;
};

namespace detail {

/// "Type::call" in error messages, without building a string unless an error is raised.
struct CallSite {
  const char* type;
  const char* call;
  friend std::ostream& operator<<(std::ostream& out, const CallSite& site) {
    return out << site.type << "::" << site.call;
  }
};

/// Checks the activations of a forward or backward call against the layer's features.
template <class Where, class TX, class TY, class B>
void check_activations(const Where& where, const char* x_name, const MatrixView<TX, B>& x,
                       const char* y_name, const MatrixView<TY, B>& y, index_t in, index_t out) {
  PEFT_CHECK_SHAPE(x.cols() == in, where, ": ", x_name, " has ", x.cols(),
                   " columns, the frozen weight has ", in, " (in_features)");
  PEFT_CHECK_SHAPE(y.cols() == out, where, ": ", y_name, " has ", y.cols(),
                   " columns, the frozen weight has ", out, " (out_features)");
  PEFT_CHECK_SHAPE(y.rows() == x.rows(), where, ": ", y_name, " has ", y.rows(), " rows, ", x_name,
                   " has ", x.rows());
}

// Workspace bytes of backend primitives, as the backend reports them (CPU: gemm_workspace_bytes
// and friends, found by argument-dependent lookup), or nothing for a backend that reports none.
template <class TA, class TC, class B>
index_t gemm_scratch_bytes(const Context<B>& ctx, Op op_a, Op op_b, index_t m, index_t n,
                           index_t k) {
  if constexpr (requires { gemm_workspace_bytes<TA, TC>(ctx, op_a, op_b, m, n, k); })
    return gemm_workspace_bytes<TA, TC>(ctx, op_a, op_b, m, n, k);
  else
    return 0;
}
template <class TY, class B>
index_t spmm_scratch_bytes(const Context<B>& ctx, Op op, index_t y_cols) {
  if constexpr (requires { spmm_workspace_bytes<TY>(ctx, op, y_cols); })
    return spmm_workspace_bytes<TY>(ctx, op, y_cols);
  else
    return 0;
}
template <class V, class B>
index_t sddmm_scratch_bytes(const Context<B>& ctx, Op op_a, Op op_b, index_t nnz) {
  if constexpr (requires { sddmm_workspace_bytes<V>(ctx, op_a, op_b, nnz); })
    return sddmm_workspace_bytes<V>(ctx, op_a, op_b, nnz);
  else
    return 0;
}

inline index_t align_up(index_t bytes, index_t alignment = 256) {
  return (bytes + alignment - 1) / alignment * alignment;
}

}  // namespace detail
}  // namespace peft
