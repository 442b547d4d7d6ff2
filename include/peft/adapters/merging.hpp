#pragma once
// merge, safe_merge, unmerge and delta_weight, written once for every adapter whose change of
// the weight is added by `add_delta(ctx, target, sign)` (target += sign · ΔW in the frozen
// weight's orientation) and whose frozen weight is `base_weight()`. PEFT's rules: merging twice
// or unmerging an unmerged layer does nothing (and returns false); safe_merge refuses a
// non-finite result and leaves W0 untouched.

#include "../core/workspace.hpp"
#include "adapter.hpp"

namespace peft::detail {

/// CRTP base: `Derived` provides base_weight(), add_delta(ctx, target, sign) and a static
/// constexpr `name` ("Lora", "Rosa", ...) for error messages.
template <class Derived, class T, class B>
class MergeOps {
 public:
  using View = MatrixView<T, B>;

  bool merged() const noexcept { return merged_; }

  /// W0 += ΔW. `w0` must be the layer's frozen weight (same memory): after merging, forward
  /// runs the base alone and training calls throw until unmerge.
  bool merge(Context<B>& ctx, View w0) {
    check_is_base("merge", w0);
    if (merged_) return false;
    self().add_delta(ctx, w0, 1.0);
    merged_ = true;
    return true;
  }

  /// Like merge, but computes W0 + ΔW in scratch first and throws ErrorKind::numeric, leaving W0
  /// untouched, when the result has a NaN or an infinity.
  bool safe_merge(Context<B>& ctx, View w0) {
    check_is_base("safe_merge", w0);
    if (merged_) return false;
    typename Workspace<B>::Frame frame(ctx.workspace());
    View merged = frame.template matrix<T>(w0.rows(), w0.cols());
    copy(ctx, as_const(w0), merged);
    self().add_delta(ctx, merged, 1.0);
    PEFT_CHECK(all_finite(ctx, as_const(merged)), ErrorKind::numeric, Derived::name,
               "::safe_merge: W0 + ΔW has non-finite values; the adapter seems broken, W0 is "
               "left unchanged");
    copy(ctx, as_const(merged), w0);
    merged_ = true;
    return true;
  }

  /// W0 -= ΔW.
  bool unmerge(Context<B>& ctx, View w0) {
    check_is_base("unmerge", w0);
    if (!merged_) return false;
    self().add_delta(ctx, w0, -1.0);
    merged_ = false;
    return true;
  }

  /// out = ΔW in the frozen weight's orientation ([out, in], or [in, out] with fan_in_fan_out),
  /// as PEFT's get_delta_weight.
  void delta_weight(Context<B>& ctx, View out) {
    const auto base = self().base_weight();
    PEFT_CHECK_SHAPE(out.rows() == base.rows() && out.cols() == base.cols(), Derived::name,
                     "::delta_weight: out is ", shape_string(out), ", the frozen weight is ",
                     shape_string(base));
    fill(ctx, out, 0.0);
    self().add_delta(ctx, out, 1.0);
  }

 protected:
  template <class Where>
  void check_unmerged(const Where& where) const {
    PEFT_CHECK(!merged_, ErrorKind::state, where, ": the layer is merged; unmerge it first");
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }

  void check_is_base(const char* what, const View& w0) {
    const auto base = self().base_weight();
    PEFT_CHECK_ARG(w0.data() == base.data() && w0.rows() == base.rows() &&
                       w0.cols() == base.cols() && w0.stride() == base.stride(),
                   Derived::name, "::", what, ": w0 (", shape_string(w0),
                   ") must be the layer's frozen weight (same memory, ", shape_string(base), ")");
  }

  bool merged_ = false;
};

}  // namespace peft::detail
