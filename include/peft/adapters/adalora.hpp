#pragma once
// AdaLoRA (Zhang et al. 2023) with Hugging Face PEFT's semantics: LoRA's update in SVD form,
//   y = x W0ᵀ + b + s (dropout(x) (A ⊙ E)ᵀ) Bᵀ,   s = scaling / (ranknum + 1e-5),
// lora_A [r, in], lora_E [r, 1] (a scale per rank, 0 at init), lora_B [out, r]; scaling =
// alpha (or r when alpha <= 0) and ranknum = the initial rank, fixed (as PEFT keeps it), so
// outputs agree with PEFT's. The rank allocator (train/rank_allocator.hpp) moves rank between
// layers by zeroing entries of E.
//
// As a parametrisation of the shared low-rank layer: A_eff = diag(E) A, B_eff = B. The gradients
// of A and E follow from dA_eff once per optimizer step: dA += diag(E) dA_eff and
// dE_i += Σ_j dA_eff_ij A_ij (both O(r² · in) through r x r products).

#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/random.hpp"
#include "lora.hpp"  // validate_low_rank_config
#include "low_rank_layer.hpp"

namespace peft {

/// The per-layer fields of PEFT's AdaLoraConfig (the allocator's are in RankAllocatorOptions).
struct AdaLoraConfig {
  index_t init_r = 12;          // the layer's rank before any pruning
  double alpha = 8;             // lora_alpha; scaling = alpha, or init_r when alpha <= 0
  double dropout = 0.0;         // lora_dropout, in [0, 1)
  bool fan_in_fan_out = false;  // the frozen weight is given [in, out]
  bool init_weights = true;     // PEFT's init_lora_weights: E = 0; false: E random (tests)
  std::uint64_t seed = 0;       // with LayerOptions::stream_id, keys init and dropout

  double scaling() const { return alpha > 0 ? alpha : double(init_r); }
};

namespace detail {

template <class T, class B>
class AdaLoraFactors {
 public:
  static constexpr const char* name = "AdaLora";
  using Config = AdaLoraConfig;
  using P = param_t<T>;

  AdaLoraFactors(const AdaLoraConfig& config, index_t in, index_t)
      : config_(config),
        a_(config.init_r, in),
        e_(config.init_r, 1),
        grad_a_(config.init_r, in),
        grad_e_(config.init_r, 1),
        diag_e_(config.init_r, config.init_r),
        gram_(config.init_r, config.init_r) {
    validate_low_rank_config("AdaLora", config.init_r, config.alpha, config.dropout);
  }

  const AdaLoraConfig& config() const noexcept { return config_; }
  /// PEFT's ranknum: the initial rank, which the scaling divides by.
  double ranknum() const noexcept { return double(config_.init_r); }

  LowRankShape shape(index_t in, index_t out, const LayerOptions& options) const {
    return {in,
            out,
            config_.init_r,
            config_.scaling() / (ranknum() + 1e-5),
            config_.dropout,
            config_.seed,
            options.stream_id};
  }

  /// PEFT's init: A, B ~ N(0, 0.02²), E = 0 (drawn on the host from Philox).
  void initialise(Context<B>& ctx, LowRankPath<T, B>& path, const LayerOptions& options) {
    auto normal = [&](MatrixView<P, B> dst, std::uint32_t block) {
      Matrix<P, Cpu> host(dst.rows(), dst.cols());
      const auto s = make_stream(config_.seed, options.stream_id, RandomPurpose::init, block);
      for (index_t i = 0; i < host.size(); ++i)
        host.data()[i] = static_cast<P>(0.02 * normal_from_stream(s, std::uint64_t(i)));
      upload(ctx, as_const(host.view()), dst);
    };
    normal(a_.view(), 0);
    normal(path.b(), 1);
    if (config_.init_weights)
      fill(ctx, e_.view(), 0.0);
    else
      normal(e_.view(), 2);
  }

  std::vector<Parameter<P, B>> parameters(LowRankPath<T, B>& path) {
    return {{"lora_A", a_.view(), grad_a_.view()},
            {"lora_E", e_.view(), grad_e_.view()},
            {"lora_B", path.b(), path.grad_b()}};
  }

  /// A_eff = diag(E) A.
  void generate(Context<B>& ctx, LowRankPath<T, B>& path) {
    copy(ctx, as_const(e_.view()), diagonal(diag_e_.view()));
    gemm(ctx, Op::N, Op::N, 1.0, as_const(diag_e_.view()), as_const(a_.view()), 0.0, path.a());
  }

  /// dA += diag(E) dA_eff, dE += diag(dA_eff Aᵀ); dA_eff restarts at zero, so pulling back twice
  /// adds nothing.
  void pull_back(Context<B>& ctx, LowRankPath<T, B>& path) {
    const auto grad_eff = as_const(path.grad_a());
    gemm(ctx, Op::N, Op::N, 1.0, as_const(diag_e_.view()), grad_eff, 1.0, grad_a_.view());
    gemm(ctx, Op::N, Op::T, 1.0, grad_eff, as_const(a_.view()), 0.0, gram_.view());
    axpy(ctx, 1.0, as_const(diagonal(gram_.view())), grad_e_.view());
    fill(ctx, path.grad_a(), 0.0);
  }

  void zero_grad(Context<B>& ctx, LowRankPath<T, B>&) {
    fill(ctx, grad_a_.view(), 0.0);
    fill(ctx, grad_e_.view(), 0.0);
  }

  index_t num_trainable(index_t in, index_t out) const noexcept {
    return config_.init_r * (in + out + 1);
  }

 private:
  /// The diagonal of a square matrix as an [r, 1] view (stride r + 1).
  static MatrixView<P, B> diagonal(MatrixView<P, B> square) {
    return MatrixView<P, B>(square.data(), square.rows(), 1, square.stride() + 1);
  }

  AdaLoraConfig config_;
  Matrix<P, B> a_, e_, grad_a_, grad_e_;
  Matrix<P, B> diag_e_;  // diag(E) for the r x r products (its off-diagonal stays zero)
  Matrix<P, B> gram_;    // dA_eff Aᵀ, whose diagonal is dE
};

}  // namespace detail

/// AdaLora<T, B>(ctx, w0, AdaLoraConfig, LayerOptions = {}, bias = {}): the shared layer (see
/// LowRankLayer) with AdaLoRA's parametrisation.
template <class T, class B>
class AdaLora : public detail::LowRankLayer<AdaLora<T, B>, detail::AdaLoraFactors<T, B>, T, B> {
 public:
  using detail::LowRankLayer<AdaLora<T, B>, detail::AdaLoraFactors<T, B>, T, B>::LowRankLayer;

  /// PEFT's ranknum: the initial rank, which the scaling divides by (fixed).
  double ranknum() const noexcept { return this->method_.ranknum(); }
};

}  // namespace peft
