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
#include <string_view>
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
  /// PEFT's ranknum, the rank the scaling divides by; 0: init_r. A layer loaded from a pruned
  /// checkpoint, or compacted (AdaLora::keep_ranks), has fewer ranks than it started with and
  /// keeps dividing by its initial rank, as PEFT does.
  index_t ranknum = 0;

  double scaling() const { return alpha > 0 ? alpha : double(init_r); }
  index_t effective_ranknum() const { return ranknum > 0 ? ranknum : init_r; }
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
    PEFT_CHECK_ARG(config.ranknum == 0 || config.ranknum >= config.init_r, "AdaLora: ranknum is ",
                   config.ranknum, ", expected 0 (init_r) or the initial rank >= init_r (",
                   config.init_r, ")");
  }

  const AdaLoraConfig& config() const noexcept { return config_; }
  /// PEFT's ranknum: the initial rank, which the scaling divides by.
  double ranknum() const noexcept { return double(config_.effective_ranknum()); }

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

  /// Shrinks the layer to the ranks `kept` (increasing indices below rank()): lora_A's and
  /// lora_E's rows and lora_B's columns, values and gradients, with the same scaling and
  /// ranknum, so that outputs and gradients of the kept ranks do not change while a step costs
  /// what a LoRA of kept.size() ranks costs. Pending gradients are pulled back first. The
  /// parameters live in new buffers afterwards: views of the old ones (an optimizer's) are
  /// stale; AdamW::reshape follows the change (RankAllocator::compact does both).
  void keep_ranks(Context<B>& ctx, const std::vector<index_t>& kept) {
    const index_t r = this->rank();
    PEFT_CHECK_ARG(!kept.empty(), "AdaLora::keep_ranks: no rank kept (a layer needs one)");
    for (std::size_t i = 0; i < kept.size(); ++i)
      PEFT_CHECK_ARG(kept[i] >= 0 && kept[i] < r && (i == 0 || kept[i] > kept[i - 1]),
                     "AdaLora::keep_ranks: kept ranks must be increasing indices below the rank ",
                     r, ", got ", kept[i], " at position ", i);
    this->check_unmerged(detail::CallSite{"AdaLora", "keep_ranks"});
    if (index_t(kept.size()) == r) return;
    this->method_.pull_back(ctx, this->path_);
    AdaLoraConfig c = this->method_.config();
    c.alpha = this->method_.config().scaling();  // the scaling stays, also for alpha <= 0
    c.ranknum = this->method_.config().effective_ranknum();
    c.init_r = index_t(kept.size());
    detail::AdaLoraFactors<T, B> method(c, this->in_features(), this->out_features());
    auto path = this->path_.reshaped(
        ctx, method.shape(this->in_features(), this->out_features(), this->options_));
    auto from = this->method_.parameters(this->path_);
    auto to = method.parameters(path);
    for (std::size_t k = 0; k < from.size(); ++k) {
      gather_ranks(ctx, from[k].name, as_const(from[k].value), to[k].value, kept);
      gather_ranks(ctx, from[k].name, as_const(from[k].grad), to[k].grad, kept);
    }
    method.generate(ctx, path);
    this->method_ = std::move(method);
    this->path_ = std::move(path);
  }

  /// dst = the ranks `kept` of src, a tensor shaped like the parameter `name` (lora_A and
  /// lora_E: rows; lora_B: columns). For the optimizer's moments of a layer being shrunk.
  template <class P>
  static void gather_ranks(Context<B>& ctx, std::string_view name, MatrixView<const P, B> src,
                           MatrixView<P, B> dst, const std::vector<index_t>& kept) {
    const bool columns = name == "lora_B";
    PEFT_CHECK_SHAPE((columns ? dst.cols() : dst.rows()) == index_t(kept.size()) &&
                         (columns ? dst.rows() == src.rows() : dst.cols() == src.cols()),
                     "AdaLora::gather_ranks: ", name, " is ", shape_string(src),
                     ", the destination ", shape_string(dst), " for ", kept.size(), " kept ranks");
    for (std::size_t i = 0; i < kept.size(); ++i) {
      const auto k = index_t(i);
      if (columns)
        copy(ctx, MatrixView<const P, B>(src.data() + kept[i], src.rows(), 1, src.stride()),
             MatrixView<P, B>(dst.data() + k, dst.rows(), 1, dst.stride()));
      else
        copy(ctx, MatrixView<const P, B>(src.data() + kept[i] * src.stride(), 1, src.cols()),
             MatrixView<P, B>(dst.data() + k * dst.stride(), 1, dst.cols()));
    }
  }
};

}  // namespace peft
