#pragma once
// The adapter layer every method shares, written once: a frozen dense base, the low-rank path
// over effective factors, and a method's parametrisation (how its trainable tensors make the
// factors). It provides the whole Adapter interface: the eight forward/backward overloads,
// reserves, training state, merging and stable handles.
//
// A parametrisation `Method` provides:
//   using Config;                         its options (with fan_in_fan_out)
//   static constexpr const char* name;    the layer's name in messages ("Lora")
//   Method(const Config&, in, out)        validates the options
//   const Config& config() const
//   LowRankShape shape(in, out, options)            rank, scaling and dropout of the path
//   void initialise(ctx, path, options)             initial parameters (and factors)
//   std::vector<Parameter> parameters(path)         its named trainable tensors
//   void generate(ctx, path)                        parameters -> A_eff, B_eff (after an update)
//   void pull_back(ctx, path)                       dA_eff, dB_eff -> parameter gradients
//   void zero_grad(ctx, path)                       clears its own gradients (not the path's)
//   index_t num_trainable(in, out)
// A layer type derives from LowRankLayer<Layer, Method, T, B>. Composite methods (RoSA's sparse
// part) hide the `extra_*` and `frozen_*` hooks below to add what is not low-rank.

#include <vector>

#include "adapter.hpp"
#include "dense_base.hpp"
#include "low_rank.hpp"
#include "merging.hpp"

namespace peft::detail {

/// The path's shape for a method whose config has LoRA's r, scaling(), dropout and seed (LoRA,
/// LoRA-XS, NOLA): what their `shape(in, out, options)` returns.
template <class Config>
LowRankShape low_rank_shape(const Config& config, index_t in, index_t out,
                            const LayerOptions& options) {
  return {in, out, config.r, config.scaling(), config.dropout, config.seed, options.stream_id};
}

template <class Derived, class Method, class T, class B>
class LowRankLayer : public MergeOps<Derived, T, B>, public HandleAnchor<Derived> {
 public:
  /// The type's name in error messages (a composite layer such as Rosa names itself).
  static constexpr const char* name = Method::name;
  using value_type = T;
  using param_type = param_t<T>;
  using backend_type = B;
  using method_type = Method;
  using Ctx = Context<B>;
  using ConstView = MatrixView<const T, B>;
  using View = MatrixView<T, B>;
  using Reserve = VectorView<std::byte, B>;

  /// w0 is [out, in] ([in, out] with fan_in_fan_out) and is never copied: it must outlive the
  /// layer. bias, when given, has out elements. Layer types inherit this constructor.
  LowRankLayer(Ctx& ctx, ConstView w0, const typename Method::Config& config,
               const LayerOptions& options = {}, VectorView<const T, B> bias = {})
      : base_(w0, bias, config.fan_in_fan_out, Derived::name),
        method_(config, base_.in_features(), base_.out_features()),
        path_(method_.shape(base_.in_features(), base_.out_features(), options)),
        options_(options) {
    method_.initialise(ctx, path_, options);
    method_.generate(ctx, path_);
  }

  LowRankLayer(const LowRankLayer&) = delete;
  LowRankLayer& operator=(const LowRankLayer&) = delete;
  LowRankLayer(LowRankLayer&&) noexcept = default;
  LowRankLayer& operator=(LowRankLayer&&) noexcept = default;

  // ---- sizes -------------------------------------------------------------------------------

  index_t in_features() const noexcept { return base_.in_features(); }
  index_t out_features() const noexcept { return base_.out_features(); }
  index_t rank() const noexcept { return path_.rank(); }
  double scaling() const noexcept { return path_.scaling(); }
  const LayerOptions& options() const noexcept { return options_; }
  /// The method's configuration (composite methods such as RoSA return their own).
  const auto& config() const noexcept { return method_.config(); }
  bool training() const noexcept { return path_.training(); }
  index_t num_trainable() const noexcept {
    return method_.num_trainable(in_features(), out_features()) + self().extra_trainable();
  }
  /// The frozen weight and bias views the layer was built with.
  ConstView base_weight() const noexcept { return base_.weight(); }
  VectorView<const T, B> bias() const noexcept { return base_.bias(); }

  /// Bytes of reserve a forward of `rows` rows writes for its backward: the random stream of its
  /// dropout mask and x A_effᵀ [rows, r].
  index_t reserve_bytes(index_t rows) const { return path_.reserve_bytes(rows); }

  /// Scratch bytes one call of `rows` rows may take from the Context's workspace.
  index_t workspace_bytes(const Ctx& ctx, index_t rows) const {
    return path_.workspace_bytes(rows) + base_.workspace_bytes(ctx, rows) +
           self().extra_workspace_bytes(ctx, rows);
  }

  /// Sizes the internal reserve and the Context's workspace for batches of up to max_rows rows,
  /// so that no forward or backward allocates afterwards.
  void preallocate(Ctx& ctx, index_t max_rows) {
    path_.grow_own_reserve(max_rows);
    ctx.workspace().reserve(static_cast<std::size_t>(workspace_bytes(ctx, max_rows)));
  }

  // ---- forward / backward ------------------------------------------------------------------

  /// y = x W0ᵀ + b + s (dropout(x) A_effᵀ) B_effᵀ (+ the method's extra part), keeping what
  /// backward needs in the layer's own reserve (the simple order: each forward, then its
  /// backward).
  void forward(Ctx& ctx, ConstView x, View y) { forward(ctx, x, y, path_.own_reserve(x.rows())); }

  /// The same with a caller-owned reserve of at least reserve_bytes(x.rows()) bytes.
  void forward(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    const CallSite where{Derived::name, "forward"};
    check_activations(where, "x", x, "y", y, in_features(), out_features());
    if (this->merged()) {  // W0 already holds ΔW: the base alone is the layer
      base_.forward(ctx, x, y);
      return;
    }
    path_.check_reserve(where, reserve, x.rows());
    // The adapter writes y first and the base GEMM accumulates with beta = 1.
    path_.forward(ctx, x, y, base_.start_output(ctx, y), reserve);
    self().frozen_forward(ctx, x, y);
  }

  /// y += the adapter's contribution only, for a base computed elsewhere.
  void forward_delta(Ctx& ctx, ConstView x, View y) {
    forward_delta(ctx, x, y, path_.own_reserve(x.rows()));
  }
  void forward_delta(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    const CallSite where{Derived::name, "forward_delta"};
    check_activations(where, "x", x, "y", y, in_features(), out_features());
    this->check_unmerged(where);
    path_.check_reserve(where, reserve, x.rows());
    self().extra_forward_delta(ctx, x, y);
    path_.forward(ctx, x, y, 1.0, reserve);
  }

  /// Accumulates the gradients; writes dx = dy W0 + the adapter's part unless dx is empty.
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward(ctx, x, dy, dx, path_.own_reserve(x.rows()));
  }
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl({Derived::name, "backward"}, ctx, x, dy, dx, reserve, /*delta_only=*/false);
  }

  /// Accumulates the gradients; dx += the adapter's part only (dx may be an empty view).
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward_delta(ctx, x, dy, dx, path_.own_reserve(x.rows()));
  }
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl({Derived::name, "backward_delta"}, ctx, x, dy, dx, reserve, /*delta_only=*/true);
  }

  // ---- training ----------------------------------------------------------------------------

  /// The trainable tensors by PEFT name; their views stay valid for the layer's lifetime.
  std::vector<Parameter<param_type, B>> parameters() {
    auto p = method_.parameters(path_);
    self().extra_parameters(p);
    return p;
  }

  /// Makes the gradients of parameters() current. Backward accumulates gradients of the
  /// effective factors; methods whose parameters are not the factors (AdaLoRA, NOLA, LoRA-XS)
  /// pull them back here, once per optimizer step. AdamW calls it before every update; call it
  /// yourself before reading gradients without AdamW (clipping, logging). Idempotent.
  void prepare_gradients(Ctx& ctx) { method_.pull_back(ctx, path_); }

  /// Call after changing parameters (an optimizer step does): rebuilds the effective factors.
  void parameters_updated(Ctx& ctx) {
    method_.generate(ctx, path_);
    self().extra_updated(ctx);
  }

  void zero_grad(Ctx& ctx) {
    path_.zero_grad(ctx);
    method_.zero_grad(ctx, path_);
    self().extra_zero_grad(ctx);
  }

  /// Training enables dropout; evaluation disables it. Do not switch between a forward and its
  /// backward.
  void set_training(bool training) noexcept { path_.set_training(training); }

  // ---- merging (merge, safe_merge, unmerge, delta_weight, merged: MergeOps) ----------------

  /// target += sign · ΔW in the frozen weight's orientation (for exporting merged weights; does
  /// not change the merged state). 16-bit weights get ΔW computed in fp32 and rounded once, as
  /// PEFT does.
  void add_delta(Ctx& ctx, View target, double sign) {
    PEFT_CHECK_SHAPE(
        target.rows() == base_.weight().rows() && target.cols() == base_.weight().cols(),
        Derived::name, "::add_delta: target is ", shape_string(target), ", the frozen weight is ",
        shape_string(base_.weight()));
    path_.add_delta(ctx, target, sign, base_.fan_in_fan_out());
    self().extra_add_delta(ctx, target, sign);
  }

 protected:
  // Hooks of composite methods (defaults: nothing beyond the low-rank path and the dense base).
  /// y += x (W0 + extra)ᵀ, after the path wrote y.
  void frozen_forward(Ctx& ctx, ConstView x, View y) { base_.add_product(ctx, x, y, 1.0); }
  /// dx += dy (W0 + extra), after the path wrote dx.
  void frozen_backward(Ctx& ctx, ConstView dy, View dx) {
    base_.add_input_gradient(ctx, dy, dx, 1.0);
  }
  /// y += the extra part's contribution (forward_delta).
  void extra_forward_delta(Ctx&, ConstView, View) {}
  /// Gradients of the extra parameters; dx_delta (empty unless backward_delta) += its part.
  void extra_backward(Ctx&, ConstView, ConstView, View) {}
  void extra_add_delta(Ctx&, View, double) {}
  void extra_parameters(std::vector<Parameter<param_type, B>>&) {}
  void extra_updated(Ctx&) {}
  void extra_zero_grad(Ctx&) {}
  index_t extra_trainable() const noexcept { return 0; }
  index_t extra_workspace_bytes(const Ctx&, index_t) const { return 0; }

  DenseBase<T, B> base_;
  Method method_;
  LowRankPath<T, B> path_;
  LayerOptions options_;

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  void backward_impl(CallSite where, Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve,
                     bool delta_only) {
    check_activations(where, "x", x, "dy", dy, in_features(), out_features());
    PEFT_CHECK_SHAPE(dx.empty() || (dx.rows() == x.rows() && dx.cols() == in_features()), where,
                     ": dx is ", shape_string(dx), ", expected ", x.rows(), " x ", in_features(),
                     " (the shape of x) or an empty view");
    this->check_unmerged(where);
    path_.check_reserve(where, reserve, x.rows());
    self().extra_backward(ctx, x, dy, delta_only ? dx : View());
    // The path writes dx first (beta = 0) and the base GEMM accumulates with beta = 1.
    path_.backward(ctx, x, dy, dx, delta_only ? 1.0 : 0.0, reserve);
    if (!delta_only && !dx.empty()) self().frozen_backward(ctx, dy, dx);
  }
};

}  // namespace peft::detail
