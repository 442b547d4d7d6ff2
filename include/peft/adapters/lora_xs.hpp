#pragma once
// LoRA-XS (Bałazy et al. 2024, arXiv 2405.17604): a trainable r x r core between frozen factors
// of the truncated SVD of the frozen weight itself, W0 ≈ U_r Σ_r V_rᵀ:
//   y = x W0ᵀ + b + s (dropout(x) (R Σ_r V_rᵀ)ᵀ) U_rᵀ,   s = alpha / r,
// lora_xs_R [r, r] trains (r² numbers per layer); Σ_r V_rᵀ [r, in] and U_r [out, r] are frozen,
// computed at construction by the randomized truncated_svd primitive (backend/svd.hpp) on the
// layer's backend, or given by the caller (e.g. read from a checkpoint). As the reference code
// does, Σ is folded into the frozen A and R starts as N(0, 1e-5²) (or zero).
//
// As a parametrisation of the shared low-rank layer: A_eff = R · Σ_r V_rᵀ, B_eff = U_r (written
// once into the path's B, which nothing else writes); the gradient of R follows from dA_eff
// once per optimizer step, dR += dA_eff (Σ_r V_rᵀ)ᵀ (an r x in x r product). The path computes
// dB_eff too, which LoRA-XS does not need (n · out · r multiply-adds per backward; the path has no
// switch to skip it yet).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../backend/svd.hpp"
#include "../core/random.hpp"
#include "lora.hpp"  // validate_low_rank_config
#include "low_rank_layer.hpp"

namespace peft {

/// How lora_xs_R starts.
enum class LoraXsInit {
  gaussian,  // N(0, init_std²), the reference's (init_std = 1e-5)
  zeros,     // R = 0: the layer starts exactly as the base
};

/// Where the frozen factors come from.
enum class LoraXsFrozen {
  svd,    // the truncated SVD of W0, computed when the layer is built
  later,  // no SVD: the factors are zero (the layer is the base) until set_frozen_factors, as
          // load_adapter does with a checkpoint that stores them
};

/// LoRA-XS's options. There is no PEFT LoRA-XS; the names follow LoraConfig and the reference.
struct LoraXsConfig {
  index_t r = 8;                // rank of the frozen factors and size of R [r, r]
  double alpha = 16;            // scaling s = alpha / r (the reference: 16 for GLUE, r for math)
  double dropout = 0.0;         // on the adapter path's input, in [0, 1)
  bool fan_in_fan_out = false;  // the frozen weight is given [in, out] (GPT-2's Conv1D)
  LoraXsInit init = LoraXsInit::gaussian;
  double init_std = 1e-5;  // standard deviation of the gaussian init of R
  std::uint64_t seed = 0;  // with LayerOptions::stream_id, keys R's init and dropout
  /// The truncated SVD of W0 (its seed keys the sketch; the factors depend on W0 and these
  /// options only, not on seed or stream_id).
  SvdOptions svd = {};
  LoraXsFrozen frozen = LoraXsFrozen::svd;

  double scaling() const { return alpha / double(r); }
};

/// Frozen factors given by the caller instead of an SVD at construction: a = Σ_r V_rᵀ [r, in]
/// and b = U_r [out, r], in the layer's parameter type and backend. Copied by the layer.
template <class P, class B>
struct LoraXsFrozenFactors {
  LoraXsFrozenFactors(MatrixView<const P, B> a_, MatrixView<const P, B> b_) : a(a_), b(b_) {}
  MatrixView<const P, B> a;
  MatrixView<const P, B> b;
};

namespace detail {

/// LoRA-XS's parametrisation: lora_xs_R makes A_eff = R · Σ_r V_rᵀ; B_eff = U_r is frozen.
template <class T, class B>
class LoraXsFactors {
 public:
  static constexpr const char* name = "LoraXs";
  using Config = LoraXsConfig;
  using P = param_t<T>;

  LoraXsFactors(const LoraXsConfig& config, index_t in, index_t out)
      : config_(validated(config, in, out)),
        r_(config.r, config.r),
        grad_r_(config.r, config.r),
        frozen_a_(config.r, in) {}

  const LoraXsConfig& config() const noexcept { return config_; }

  LowRankShape shape(index_t in, index_t out, const LayerOptions& options) const {
    return low_rank_shape(config_, in, out, options);
  }

  /// R ~ N(0, init_std²) drawn on the host from Philox (stream: seed, stream_id, init, 0), or 0.
  /// The frozen factors are zero until factorise or set_frozen.
  void initialise(Context<B>& ctx, LowRankPath<T, B>&, const LayerOptions& options) {
    if (config_.init == LoraXsInit::zeros) {
      fill(ctx, r_.view(), 0.0);
      return;
    }
    Matrix<P, Cpu> host(config_.r, config_.r);
    const auto stream = make_stream(config_.seed, options.stream_id, RandomPurpose::init, 0);
    for (index_t i = 0; i < host.size(); ++i)
      host.data()[i] =
          static_cast<P>(config_.init_std * normal_from_stream(stream, std::uint64_t(i)));
    upload(ctx, as_const(host.view()), r_.view());
  }

  /// The frozen factors from the truncated SVD of the logical W0 [out, in] (op(w0) with
  /// fan_in_fan_out): U_r into the path's B, Σ_r V_rᵀ into frozen_a_.
  template <class TW>
  void factorise(Context<B>& ctx, LowRankPath<T, B>& path, MatrixView<TW, B> w0,
                 bool fan_in_fan_out) {
    const index_t r = config_.r;
    Matrix<P, B> vt(r, frozen_a_.cols()), s(r, 1), diag_s(r, r);
    truncated_svd(ctx, fan_in_fan_out ? Op::T : Op::N, w0, r, config_.svd, path.b(),
                  VectorView<P, B>(s.data(), r), vt.view());
    // Σ_r V_rᵀ = diag(S) V_rᵀ.
    copy(ctx, as_const(s.view()), MatrixView<P, B>(diag_s.data(), r, 1, r + 1));
    gemm(ctx, Op::N, Op::N, 1.0, as_const(diag_s.view()), as_const(vt.view()), 0.0,
         frozen_a_.view());
  }

  /// The caller's frozen factors (shapes and finiteness checked).
  void set_frozen(Context<B>& ctx, LowRankPath<T, B>& path, const LoraXsFrozenFactors<P, B>& f) {
    PEFT_CHECK_SHAPE(f.a.rows() == frozen_a_.rows() && f.a.cols() == frozen_a_.cols(),
                     "LoraXs: the frozen A (Σ_r V_rᵀ) is ", shape_string(f.a), ", expected ",
                     frozen_a_.rows(), " x ", frozen_a_.cols(), " (r x in_features)");
    PEFT_CHECK_SHAPE(f.b.rows() == path.b().rows() && f.b.cols() == path.b().cols(),
                     "LoraXs: the frozen B (U_r) is ", shape_string(f.b), ", expected ",
                     path.b().rows(), " x ", path.b().cols(), " (out_features x r)");
    PEFT_CHECK_ARG(all_finite(ctx, f.a) && all_finite(ctx, f.b),
                   "LoraXs: the frozen factors hold non-finite values");
    copy(ctx, f.a, frozen_a_.view());
    copy(ctx, f.b, path.b());
  }

  std::vector<Parameter<P, B>> parameters(LowRankPath<T, B>&) {
    return {{"lora_xs_R", r_.view(), grad_r_.view()}};
  }

  /// A_eff = R · Σ_r V_rᵀ (B_eff = U_r does not change).
  void generate(Context<B>& ctx, LowRankPath<T, B>& path) {
    gemm(ctx, Op::N, Op::N, 1.0, as_const(r_.view()), as_const(frozen_a_.view()), 0.0, path.a());
  }

  /// dR += dA_eff (Σ_r V_rᵀ)ᵀ; dA_eff and the unused dB_eff restart at zero, so pulling back
  /// twice adds nothing (and, with no backward in between, computes nothing).
  void pull_back(Context<B>& ctx, LowRankPath<T, B>& path) {
    if (!pending_) return;
    gemm(ctx, Op::N, Op::T, 1.0, as_const(path.grad_a()), as_const(frozen_a_.view()), 1.0,
         grad_r_.view());
    fill(ctx, path.grad_a(), 0.0);
    fill(ctx, path.grad_b(), 0.0);
    pending_ = false;
  }

  /// A backward accumulated into dA_eff: the next pull_back has work to do.
  void mark_pending() noexcept { pending_ = true; }

  void zero_grad(Context<B>& ctx, LowRankPath<T, B>&) {
    fill(ctx, grad_r_.view(), 0.0);
    pending_ = false;  // the layer zeroed dA_eff and dB_eff just before
  }

  index_t num_trainable(index_t, index_t) const noexcept { return config_.r * config_.r; }

  MatrixView<const P, B> frozen_a() const noexcept { return frozen_a_.view(); }

 private:
  static LoraXsConfig validated(const LoraXsConfig& config, index_t in, index_t out) {
    validate_low_rank_config("LoraXs", config.r, config.alpha, config.dropout);
    PEFT_CHECK_ARG(config.r <= std::min(in, out), "LoraXs: r is ", config.r,
                   ", expected at most min(in_features, out_features) = ", std::min(in, out),
                   " (the rank of the ", out, " x ", in, " frozen weight)");
    PEFT_CHECK_ARG(std::isfinite(config.init_std) && config.init_std >= 0, "LoraXs: init_std is ",
                   config.init_std, ", expected a finite value >= 0");
    PEFT_CHECK_ARG(config.svd.oversampling >= 0, "LoraXs: svd.oversampling is ",
                   config.svd.oversampling, ", expected >= 0");
    PEFT_CHECK_ARG(config.svd.power_iterations >= 0, "LoraXs: svd.power_iterations is ",
                   config.svd.power_iterations, ", expected >= 0");
    return config;
  }

  LoraXsConfig config_;
  Matrix<P, B> r_, grad_r_;
  Matrix<P, B> frozen_a_;  // Σ_r V_rᵀ [r, in]; U_r lives in the path's B
  bool pending_ = false;
};

}  // namespace detail

template <class T, class B>
class LoraXs : public detail::LowRankLayer<LoraXs<T, B>, detail::LoraXsFactors<T, B>, T, B> {
  using Base = detail::LowRankLayer<LoraXs<T, B>, detail::LoraXsFactors<T, B>, T, B>;
  friend Base;

 public:
  static constexpr const char* name = "LoraXs";
  using P = param_t<T>;

  /// w0 is [out, in] ([in, out] with fan_in_fan_out) and is never copied: it must outlive the
  /// layer. bias, when given, has out elements. The frozen factors come from the truncated SVD
  /// of w0 (config.svd), computed here on the layer's backend (none with LoraXsFrozen::later).
  LoraXs(typename Base::Ctx& ctx, typename Base::ConstView w0, const LoraXsConfig& config,
         const LayerOptions& options = {}, VectorView<const T, B> bias = {})
      : Base(ctx, w0, config, options, bias) {
    if (config.frozen == LoraXsFrozen::later) return;
    this->method_.factorise(ctx, this->path_, this->base_.weight(), this->base_.fan_in_fan_out());
    this->method_.generate(ctx, this->path_);
    from_svd_ = true;
  }

  /// The same with the frozen factors given (e.g. from a checkpoint): no SVD is run.
  LoraXs(typename Base::Ctx& ctx, typename Base::ConstView w0, const LoraXsConfig& config,
         const LoraXsFrozenFactors<P, B>& frozen, const LayerOptions& options = {},
         VectorView<const T, B> bias = {})
      : Base(ctx, w0, with_frozen_later(config), options, bias) {
    set_frozen_factors(ctx, frozen);
  }

  /// Replaces the frozen factors (copied; shapes [r, in] and [out, r], finite values) and
  /// rebuilds A_eff: factors read from a checkpoint. Not while merged.
  void set_frozen_factors(typename Base::Ctx& ctx, const LoraXsFrozenFactors<P, B>& frozen) {
    this->check_unmerged(detail::CallSite{name, "set_frozen_factors"});
    this->method_.set_frozen(ctx, this->path_, frozen);
    this->method_.generate(ctx, this->path_);
    from_svd_ = false;
  }

  /// True when the frozen factors are the SVD of the layer's own W0 (made at construction), so
  /// that a checkpoint may regenerate them instead of storing them.
  bool frozen_from_svd() const noexcept { return from_svd_; }

  /// The frozen factors: A = Σ_r V_rᵀ [r, in] and B = U_r [out, r] (ΔW = s B R A).
  MatrixView<const P, B> frozen_a() const noexcept { return this->method_.frozen_a(); }
  MatrixView<const P, B> frozen_b() const noexcept { return this->path_.b(); }

  /// The effective factors of ΔW = s B_eff A_eff, a LoRA adapter's lora_A and lora_B:
  /// A_eff = R Σ_r V_rᵀ [r, in] (as of the last parameters_updated) and B_eff = U_r [out, r].
  MatrixView<const P, B> effective_a() const noexcept { return this->path_.a(); }
  MatrixView<const P, B> effective_b() const noexcept { return this->path_.b(); }

 protected:
  static LoraXsConfig with_frozen_later(LoraXsConfig config) {
    config.frozen = LoraXsFrozen::later;
    return config;
  }

  /// Every backward accumulates into dA_eff: the next prepare_gradients has work to do.
  void extra_backward(typename Base::Ctx&, typename Base::ConstView, typename Base::ConstView,
                      typename Base::View) {
    this->method_.mark_pending();
  }

 private:
  bool from_svd_ = false;
};

}  // namespace peft
