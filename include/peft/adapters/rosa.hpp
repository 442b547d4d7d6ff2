#pragma once
// RoSA (Nikdan et al. 2024): LoRA plus a sparse S [out, in] on a fixed mask chosen from gradients.
//   y = x (W0 + S)ᵀ + b + s (dropout(x) Aᵀ) Bᵀ
//   dS = (dyᵀ x) ⊙ mask,   dx = dy (W0 + S) + s (dy B) A
// The low-rank part is a Lora (its code, not a copy); S is a CsrMatrix whose storage is sized for
// int(density · out · in) entries when the layer is built, so optimizer views stay valid when the
// mask arrives (train/rosa_mask.hpp builds it). Before the mask exists the layer is plain LoRA.

#include <functional>
#include <type_traits>

#include "../sparse/csr.hpp"
#include "lora.hpp"

namespace peft {

/// How the sparse part enters the forward and backward products (the reference's `impl`).
enum class RosaForward {
  automatic,  // spmm for 16-bit T (S below half an ulp of W0 would vanish in W0 + S), else
              // dense_add
  dense_add,  // W0 + S into a scratch copy (the Context's shared workspace), one GEMM ("sp_add")
  spmm,       // GEMM on W0 plus a sparse product (no scratch; for large or quantised bases)
};

struct RosaConfig {
  LoraConfig lora = {};
  double density = 0.003;  // the reference's `d`: S holds int(density · out · in) entries
  RosaForward forward = RosaForward::automatic;

  index_t capacity(index_t out, index_t in) const {
    return static_cast<index_t>(density * double(out) * double(in));
  }

  /// The density whose capacity is exactly `entries` for an out x in weight (e.g. to match
  /// another adapter's trainable budget).
  static double density_for(index_t entries, index_t out, index_t in) {
    return (double(entries) + 0.5) / (double(out) * double(in));
  }
};

template <class T, class B>
class Rosa : public detail::MergeOps<Rosa<T, B>, T, B>, public detail::HandleAnchor<Rosa<T, B>> {
 public:
  static constexpr const char* name = "Rosa";
  using value_type = T;
  using param_type = param_t<T>;
  using backend_type = B;
  using Ctx = Context<B>;
  using ConstView = MatrixView<const T, B>;
  using View = MatrixView<T, B>;
  using Reserve = VectorView<std::byte, B>;
  /// Called by backward with (x, dy) while a mask builder collects gradients of W0.
  using GradientObserver = std::function<void(Ctx&, ConstView, ConstView)>;

  Rosa(Ctx& ctx, ConstView w0, const RosaConfig& config, const LayerOptions& options = {},
       VectorView<const T, B> bias = {})
      : lora_(ctx, w0, config.lora, options, bias), config_(config) {
    PEFT_CHECK_ARG(config.density >= 0.0 && config.density <= 1.0, "Rosa: density is ",
                   config.density, ", expected in [0, 1]");
    const index_t out = lora_.out_features(), in = lora_.in_features();
    s_ = CsrMatrix<param_type, B>(out, in, config.capacity(out, in));
    grad_s_ = Matrix<param_type, B>(1, s_.capacity());
    if constexpr (has_value_copies) {
      s_copy_ = Matrix<T, B>(1, s_.capacity());
      st_copy_ = Matrix<T, B>(1, s_.capacity());
    }
    mode_ = config.forward;
    if (mode_ == RosaForward::automatic)
      mode_ = is_16bit_v<T> ? RosaForward::spmm : RosaForward::dense_add;
  }

  Rosa(const Rosa&) = delete;
  Rosa& operator=(const Rosa&) = delete;
  Rosa(Rosa&&) noexcept = default;  // a RosaMaskBuilder must not hold a layer that moves
  Rosa& operator=(Rosa&&) noexcept = default;

  // ---- sizes and state -------------------------------------------------------------------

  index_t in_features() const noexcept { return lora_.in_features(); }
  index_t out_features() const noexcept { return lora_.out_features(); }
  index_t num_trainable() const noexcept { return lora_.num_trainable() + s_.capacity(); }
  index_t sparse_capacity() const noexcept { return s_.capacity(); }
  index_t rank() const noexcept { return lora_.rank(); }
  bool training() const noexcept { return lora_.training(); }
  bool has_mask() const noexcept { return s_.has_pattern(); }
  RosaForward forward_mode() const noexcept { return mode_; }
  const RosaConfig& config() const noexcept { return config_; }
  Lora<T, B>& lora() noexcept { return lora_; }
  const Lora<T, B>& lora() const noexcept { return lora_; }
  /// The frozen weight the layer was built over (its LoRA part's).
  ConstView base_weight() const noexcept { return lora_.base_weight(); }
  const CsrMatrix<param_type, B>& sparse() const noexcept { return s_; }
  CsrMatrix<param_type, B>& sparse() noexcept { return s_; }

  index_t reserve_bytes(index_t rows) const { return lora_.reserve_bytes(rows); }
  void preallocate(Ctx& ctx, index_t max_rows) {
    lora_.preallocate(ctx, max_rows);
    const index_t dense =
        mode_ == RosaForward::dense_add
            ? detail::align_up(out_features() * in_features() * index_t(sizeof(T)))
            : 0;
    ctx.workspace().reserve(
        static_cast<std::size_t>(lora_.workspace_bytes(max_rows) + dense +
                                 detail::align_up(out_features() * in_features() * 4)));
  }

  // ---- the mask ----------------------------------------------------------------------------

  /// Installs the mask (a validated host pattern with at most sparse_capacity() entries); S's
  /// values restart at zero and the layer trains A, B and S together from now on.
  void set_mask(Ctx& ctx, const CsrPattern& pattern) {
    this->check_unmerged("Rosa::set_mask");
    s_.set_pattern(ctx, pattern);
    fill(ctx, grad_s_.view(), 0.0);
    parameters_updated(ctx);
  }

  /// For mask builders that wrote the pattern into sparse().row_offsets_storage() and
  /// col_indices_storage() themselves.
  void set_mask_trusted(Ctx& ctx, index_t nnz) {
    this->check_unmerged("Rosa::set_mask");
    s_.set_pattern_trusted(ctx, nnz);
    fill(ctx, grad_s_.view(), 0.0);
    parameters_updated(ctx);
  }

  void set_gradient_observer(GradientObserver observer) { observer_ = std::move(observer); }

  // ---- forward / backward ----------------------------------------------------------------

  void forward(Ctx& ctx, ConstView x, View y) { forward(ctx, x, y, lora_own_reserve(x.rows())); }
  void forward(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    detail::check_activations("Rosa::forward", "x", x, "y", y, in_features(), out_features());
    if (this->merged()) {
      base_product(ctx, x, y, lora_.base_weight(), /*with_bias=*/true);
      return;
    }
    if (!has_mask()) {
      lora_.forward(ctx, x, y, reserve);
      return;
    }
    if (mode_ == RosaForward::dense_add) {
      typename detail::Workspace<B>::Frame frame(ctx.workspace());
      base_product(ctx, x, y, as_const(dense_weight(ctx, frame)), true);
    } else {
      base_product(ctx, x, y, lora_.base_weight(), true);
      spmm(ctx, 1.0, x, operand(), Op::T, 1.0, y);  // y += x Sᵀ
    }
    lora_.forward_delta(ctx, x, y, reserve);
  }

  void forward_delta(Ctx& ctx, ConstView x, View y) {
    forward_delta(ctx, x, y, lora_own_reserve(x.rows()));
  }
  void forward_delta(Ctx& ctx, ConstView x, View y, Reserve reserve) {
    detail::check_activations("Rosa::forward_delta", "x", x, "y", y, in_features(), out_features());
    this->check_unmerged("Rosa::forward_delta");
    if (has_mask()) spmm(ctx, 1.0, x, operand(), Op::T, 1.0, y);
    lora_.forward_delta(ctx, x, y, reserve);
  }

  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward(ctx, x, dy, dx, lora_own_reserve(x.rows()));
  }
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl("Rosa::backward", ctx, x, dy, dx, reserve, false);
  }
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    backward_delta(ctx, x, dy, dx, lora_own_reserve(x.rows()));
  }
  void backward_delta(Ctx& ctx, ConstView x, ConstView dy, View dx, Reserve reserve) {
    backward_impl("Rosa::backward_delta", ctx, x, dy, dx, reserve, true);
  }

  // ---- training ----------------------------------------------------------------------------

  /// lora_A, lora_B and rosa_S (all sparse_capacity() values as 1 x capacity; give S its own
  /// learning rate with AdamW's groups, e.g. {.lr = 2e-4, .names = {"rosa_S"}}).
  std::vector<Parameter<param_type, B>> parameters() {
    auto p = lora_.parameters();
    p.push_back({"rosa_S", s_.values(), grad_s_.view()});
    return p;
  }

  /// After changing A, B or S: refreshes Sᵀ's values and the 16-bit copies.
  void parameters_updated(Ctx& ctx) {
    lora_.parameters_updated(ctx);
    s_.refresh_transpose(ctx);
    if constexpr (has_value_copies) {
      const index_t nnz = s_.nnz();
      if (nnz == 0) return;
      copy(ctx, MatrixView<const param_type, B>(s_.values().data(), 1, nnz),
           MatrixView<T, B>(s_copy_.data(), 1, nnz));
      gather(ctx, VectorView<const param_type, B>(s_.values().data(), nnz),
             s_.transpose_permutation(), VectorView<T, B>(st_copy_.data(), nnz));
    }
  }

  void zero_grad(Ctx& ctx) {
    lora_.zero_grad(ctx);
    fill(ctx, grad_s_.view(), 0.0);
  }

  void set_training(bool training) noexcept { lora_.set_training(training); }

  // ---- merging (merge, safe_merge, unmerge, delta_weight, merged: detail::MergeOps) -----

  /// target += sign (s B A + S) in the frozen weight's orientation.
  void add_delta(Ctx& ctx, View target, double sign) {
    lora_.add_delta(ctx, target, sign);
    if (has_mask()) add_sparse_to_dense(ctx, sign, oriented_sparse(), target);
  }

 private:
  static constexpr bool has_value_copies = !std::is_same_v<T, param_type>;

  bool fan_in_fan_out() const noexcept { return lora_.config().fan_in_fan_out; }

  /// S in the frozen weight's orientation, with the fp32 values.
  CsrView<const param_type, B> oriented_sparse() const {
    return fan_in_fan_out() ? s_.transposed_view() : s_.view();
  }

  /// S and Sᵀ with values in T, for the sparse products.
  SparseOperand<T, B> operand() {
    if constexpr (has_value_copies) {
      return {s_.view_with(static_cast<const T*>(s_copy_.data())),
              s_.transposed_view(static_cast<const T*>(st_copy_.data())), &s_.cache()};
    } else {
      const auto& s = s_;
      return {s.view(), s.transposed_view(), &s_.cache()};
    }
  }

  Reserve lora_own_reserve(index_t rows) {
    if (own_reserve_.size() < reserve_bytes(rows))
      own_reserve_ = Vector<std::byte, B>(reserve_bytes(rows));
    return own_reserve_.view();
  }

  /// W0 + S in the Context's workspace (shared by all layers), in W0's orientation.
  View dense_weight(Ctx& ctx, typename detail::Workspace<B>::Frame& frame) {
    const ConstView w0 = lora_.base_weight();
    View w = frame.template matrix<T>(w0.rows(), w0.cols());
    copy(ctx, w0, w);
    add_sparse_to_dense(ctx, 1.0, oriented_sparse(), w);
    return w;
  }

  /// y = x Wᵀ (+ b), for W in the frozen weight's orientation.
  void base_product(Ctx& ctx, ConstView x, View y, ConstView w, bool with_bias) {
    double beta = 0;
    if (with_bias && !lora_.bias().empty()) {
      broadcast_rows(ctx, lora_.bias(), y);
      beta = 1;
    }
    gemm(ctx, Op::N, fan_in_fan_out() ? Op::N : Op::T, 1.0, x, w, beta, y);
  }

  void backward_impl(const char* where, Ctx& ctx, ConstView x, ConstView dy, View dx,
                     Reserve reserve, bool delta_only) {
    detail::check_activations(where, "x", x, "dy", dy, in_features(), out_features());
    PEFT_CHECK_SHAPE(dx.empty() || (dx.rows() == x.rows() && dx.cols() == in_features()), where,
                     ": dx is ", shape_string(dx), ", expected ", x.rows(), " x ", in_features(),
                     " (the shape of x) or an empty view");
    this->check_unmerged(where);
    if (observer_) observer_(ctx, x, dy);
    if (has_mask())  // dS += (dyᵀ x) ⊙ mask
      sddmm(ctx, 1.0, Op::T, dy, Op::N, x, 1.0, s_.view_with(grad_s_.data()));
    if (!dx.empty() && !delta_only) {
      const Op op = fan_in_fan_out() ? Op::T : Op::N;
      if (has_mask() && mode_ == RosaForward::dense_add) {
        typename detail::Workspace<B>::Frame frame(ctx.workspace());
        gemm(ctx, Op::N, op, 1.0, dy, as_const(dense_weight(ctx, frame)), 0.0, dx);
      } else {
        gemm(ctx, Op::N, op, 1.0, dy, lora_.base_weight(), 0.0, dx);
        if (has_mask()) spmm(ctx, 1.0, dy, operand(), Op::N, 1.0, dx);  // dx += dy S
      }
    } else if (!dx.empty() && has_mask()) {
      spmm(ctx, 1.0, dy, operand(), Op::N, 1.0, dx);
    }
    lora_.backward_delta(ctx, x, dy, dx, reserve);
  }

  Lora<T, B> lora_;
  RosaConfig config_;
  RosaForward mode_ = RosaForward::dense_add;
  CsrMatrix<param_type, B> s_;
  Matrix<param_type, B> grad_s_;
  Matrix<T, B> s_copy_, st_copy_;  // 16-bit copies of S's and Sᵀ's values for the products
  Vector<std::byte, B> own_reserve_;
  GradientObserver observer_;
};

}  // namespace peft
