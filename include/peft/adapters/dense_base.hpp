#pragma once
// The frozen dense base of an adapted layer: y = x W0ᵀ + b and dx = dy W0, with W0 given
// [out, in] (nn.Linear) or [in, out] (GPT-2's Conv1D, PEFT's fan_in_fan_out). Never copied: the
// caller owns W0 and the bias. Adapters write their own contribution into y or dx first and let
// the large GEMM here accumulate with beta = 1, so the extra read rides inside the GEMM.

#include <algorithm>
#include <type_traits>

#include "adapter.hpp"

namespace peft::detail {

template <class T, class B>
class DenseBase {
 public:
  using Ctx = Context<B>;
  using ConstView = MatrixView<const T, B>;
  using View = MatrixView<T, B>;

  DenseBase() = default;
  DenseBase(ConstView w0, VectorView<const T, B> bias, bool fan_in_fan_out, const char* who)
      : w0_(w0),
        bias_(bias),
        fan_in_fan_out_(fan_in_fan_out),
        in_(fan_in_fan_out ? w0.rows() : w0.cols()),
        out_(fan_in_fan_out ? w0.cols() : w0.rows()) {
    PEFT_CHECK_SHAPE(in_ > 0 && out_ > 0, who, ": the frozen weight is ", shape_string(w0),
                     ", expected a non-empty matrix");
    PEFT_CHECK_SHAPE(bias.empty() || bias.size() == out_, who, ": bias has ", bias.size(),
                     " elements, the frozen weight has ", out_, " (out_features)");
  }

  index_t in_features() const noexcept { return in_; }
  index_t out_features() const noexcept { return out_; }
  ConstView weight() const noexcept { return w0_; }
  VectorView<const T, B> bias() const noexcept { return bias_; }
  bool fan_in_fan_out() const noexcept { return fan_in_fan_out_; }

  /// y = b, or nothing without a bias; returns the beta the next write into y must use.
  double start_output(Ctx& ctx, View y) const {
    if (bias_.empty()) return 0.0;
    broadcast_rows(ctx, bias_, y);
    return 1.0;
  }

  /// y = x Wᵀ + beta y, where W (default: W0) has the frozen weight's shape and orientation.
  template <class TY>
  void add_product(Ctx& ctx, ConstView x, MatrixView<TY, B> y, double beta,
                   ConstView w = {}) const {
    gemm(ctx, Op::N, fan_in_fan_out_ ? Op::N : Op::T, 1.0, x, pick(w), beta, y);
  }

  /// dx = dy W + beta dx, where W (default: W0) has the frozen weight's shape and orientation.
  template <class TX>
  void add_input_gradient(Ctx& ctx, ConstView dy, MatrixView<TX, B> dx, double beta,
                          ConstView w = {}) const {
    gemm(ctx, Op::N, fan_in_fan_out_ ? Op::T : Op::N, 1.0, dy, pick(w), beta, dx);
  }

  /// y = x W0ᵀ + b: the whole layer once an adapter is merged into W0.
  void forward(Ctx& ctx, ConstView x, View y) const {
    add_product(ctx, x, y, start_output(ctx, y));
  }

  /// Scratch one product of `rows` rows may take from the Context's workspace (the CPU stages
  /// 16-bit GEMMs through fp32 panels).
  index_t workspace_bytes(const Ctx& ctx, index_t rows) const {
    const Op forward_op = fan_in_fan_out_ ? Op::N : Op::T;
    const Op backward_op = fan_in_fan_out_ ? Op::T : Op::N;
    return std::max(gemm_scratch_bytes<T, T>(ctx, Op::N, forward_op, rows, out_, in_),
                    gemm_scratch_bytes<T, T>(ctx, Op::N, backward_op, rows, in_, out_));
  }

 private:
  ConstView pick(ConstView w) const { return w.data() != nullptr ? w : w0_; }

  ConstView w0_;
  VectorView<const T, B> bias_;
  bool fan_in_fan_out_ = false;
  index_t in_ = 0;
  index_t out_ = 0;
};

}  // namespace peft::detail
