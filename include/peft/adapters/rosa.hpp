#pragma once
// RoSA (Nikdan et al. 2024): LoRA plus a sparse S [out, in] on a fixed mask chosen from gradients.
//   y = x (W0 + S)ᵀ + b + s (dropout(x) Aᵀ) Bᵀ
//   dS = (dyᵀ x) ⊙ mask,   dx = dy (W0 + S) + s (dy B) A
// The shared low-rank layer with LoRA's parametrisation, plus S through the layer's hooks. S is a
// CsrMatrix whose storage is sized for int(density · out · in) entries when the layer is built,
// so optimizer views stay valid when the mask arrives (train/rosa_mask.hpp builds it). Before
// the mask exists the layer is plain LoRA.
//
// S's fp32 values (rosa_S in parameters()) are the one source of truth: the copies the sparse
// products read (Sᵀ's values, 16-bit values) are refreshed from them by every forward, so every
// forward mode sees S as it is, with or without parameters_updated.

#include <algorithm>
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
class Rosa : public detail::LowRankLayer<Rosa<T, B>, detail::LoraFactors<T, B>, T, B> {
  using Base = detail::LowRankLayer<Rosa<T, B>, detail::LoraFactors<T, B>, T, B>;
  friend Base;

 public:
  static constexpr const char* name = "Rosa";
  using typename Base::ConstView;
  using typename Base::Ctx;
  using typename Base::param_type;
  using typename Base::Reserve;
  using typename Base::View;
  /// Called by backward with (x, dy) while a mask builder collects gradients of W0.
  using GradientObserver = std::function<void(Ctx&, ConstView, ConstView)>;

  Rosa(Ctx& ctx, ConstView w0, const RosaConfig& config, const LayerOptions& options = {},
       VectorView<const T, B> bias = {})
      : Base(ctx, w0, config.lora, options, bias), config_(config) {
    PEFT_CHECK_ARG(config.density >= 0.0 && config.density <= 1.0, "Rosa: density is ",
                   config.density, ", expected in [0, 1]");
    const index_t out = this->out_features(), in = this->in_features();
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

  // ---- sizes and state -------------------------------------------------------------------

  index_t sparse_capacity() const noexcept { return s_.capacity(); }
  bool has_mask() const noexcept { return s_.has_pattern(); }
  RosaForward forward_mode() const noexcept { return mode_; }
  const RosaConfig& config() const noexcept { return config_; }
  const CsrMatrix<param_type, B>& sparse() const noexcept { return s_; }
  /// For mask builders (train/rosa_mask.hpp), which write a pattern into its storage.
  CsrMatrix<param_type, B>& sparse() noexcept { return s_; }

  // ---- the mask ----------------------------------------------------------------------------

  /// Installs the mask (a validated host pattern with at most sparse_capacity() entries); S's
  /// values restart at zero and the layer trains A, B and S together from now on.
  void set_mask(Ctx& ctx, const CsrPattern& pattern) {
    this->check_unmerged("Rosa::set_mask");
    s_.set_pattern(ctx, pattern);
    fill(ctx, grad_s_.view(), 0.0);
    refresh_sparse_copies(ctx);
  }

  /// For mask builders that wrote the pattern into sparse().row_offsets_storage() and
  /// col_indices_storage() themselves.
  void set_mask_trusted(Ctx& ctx, index_t nnz) {
    this->check_unmerged("Rosa::set_mask");
    s_.set_pattern_trusted(ctx, nnz);
    fill(ctx, grad_s_.view(), 0.0);
    refresh_sparse_copies(ctx);
  }

  void set_gradient_observer(GradientObserver observer) { observer_ = std::move(observer); }

 protected:
  // ---- the hooks of the shared layer: S beside the low-rank path ---------------------------

  /// y += x (W0 + S)ᵀ.
  void frozen_forward(Ctx& ctx, ConstView x, View y) {
    if (!has_mask()) {
      this->base_.add_product(ctx, x, y, 1.0);
      return;
    }
    refresh_sparse_copies(ctx);
    if (mode_ == RosaForward::dense_add) {
      typename detail::Workspace<B>::Frame frame(ctx.workspace());
      this->base_.add_product(ctx, x, y, 1.0, as_const(dense_weight(ctx, frame)));
    } else {
      this->base_.add_product(ctx, x, y, 1.0);
      spmm(ctx, 1.0, x, operand(), Op::T, 1.0, y);  // y += x Sᵀ
    }
  }

  /// dx += dy (W0 + S).
  void frozen_backward(Ctx& ctx, ConstView dy, View dx) {
    if (has_mask() && mode_ == RosaForward::dense_add) {
      typename detail::Workspace<B>::Frame frame(ctx.workspace());
      this->base_.add_input_gradient(ctx, dy, dx, 1.0, as_const(dense_weight(ctx, frame)));
      return;
    }
    this->base_.add_input_gradient(ctx, dy, dx, 1.0);
    if (has_mask()) spmm(ctx, 1.0, dy, operand(), Op::N, 1.0, dx);  // dx += dy S
  }

  void extra_forward_delta(Ctx& ctx, ConstView x, View y) {
    if (!has_mask()) return;
    refresh_sparse_copies(ctx);
    spmm(ctx, 1.0, x, operand(), Op::T, 1.0, y);
  }

  /// dS += (dyᵀ x) ⊙ mask; dx_delta += dy S.
  void extra_backward(Ctx& ctx, ConstView x, ConstView dy, View dx_delta) {
    if (observer_) observer_(ctx, x, dy);
    if (!has_mask()) return;
    sddmm(ctx, 1.0, Op::T, dy, Op::N, x, 1.0, s_.view_with(grad_s_.data()));
    if (!dx_delta.empty()) spmm(ctx, 1.0, dy, operand(), Op::N, 1.0, dx_delta);
  }

  /// target += sign S in the frozen weight's orientation.
  void extra_add_delta(Ctx& ctx, View target, double sign) {
    if (!has_mask()) return;
    refresh_sparse_copies(ctx);
    add_sparse_to_dense(ctx, sign, oriented_sparse(), target);
  }

  /// rosa_S: all sparse_capacity() values as 1 x capacity (give S its own learning rate with
  /// AdamW's groups, e.g. {.lr = 2e-4, .names = {"rosa_S"}}).
  void extra_parameters(std::vector<Parameter<param_type, B>>& p) {
    p.push_back({"rosa_S", s_.values(), grad_s_.view()});
  }
  void extra_updated(Ctx& ctx) { refresh_sparse_copies(ctx); }
  void extra_zero_grad(Ctx& ctx) { fill(ctx, grad_s_.view(), 0.0); }
  index_t extra_trainable() const noexcept { return s_.capacity(); }
  /// W0 + S in dense_add mode, beside the sparse products' own scratch.
  index_t extra_workspace_bytes(const Ctx& ctx, index_t) const {
    const index_t out = this->out_features(), in = this->in_features();
    const index_t dense =
        mode_ == RosaForward::dense_add ? detail::align_up(out * in * index_t(sizeof(T))) : 0;
    const index_t products =
        std::max({detail::spmm_scratch_bytes<T>(ctx, Op::T, out),
                  detail::spmm_scratch_bytes<T>(ctx, Op::N, in),
                  detail::sddmm_scratch_bytes<param_type>(ctx, Op::T, Op::N, s_.capacity())});
    return dense + detail::align_up(products);
  }

 private:
  static constexpr bool has_value_copies = !std::is_same_v<T, param_type>;

  bool fan_in_fan_out() const noexcept { return this->base_.fan_in_fan_out(); }

  /// Sᵀ's values and the 16-bit copies from S's values: O(nnz), against O(n · out · in) of the
  /// products that read them.
  void refresh_sparse_copies(Ctx& ctx) {
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

  /// W0 + S in the Context's workspace (shared by all layers), in W0's orientation.
  View dense_weight(Ctx& ctx, typename detail::Workspace<B>::Frame& frame) {
    const ConstView w0 = this->base_.weight();
    View w = frame.template matrix<T>(w0.rows(), w0.cols());
    copy(ctx, w0, w);
    add_sparse_to_dense(ctx, 1.0, oriented_sparse(), w);
    return w;
  }

  RosaConfig config_;
  RosaForward mode_ = RosaForward::dense_add;
  CsrMatrix<param_type, B> s_;
  Matrix<param_type, B> grad_s_;
  Matrix<T, B> s_copy_, st_copy_;  // 16-bit copies of S's and Sᵀ's values for the products
  GradientObserver observer_;
};

}  // namespace peft
