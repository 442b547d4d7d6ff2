#pragma once
// NOLA (Koohpayegani et al., ICLR 2024): LoRA's factors as linear combinations of frozen random
// bases, of which only the mixing coefficients train:
//   A = A0 + Σ_{i<kA} α_i A_i   [r, in],    B = Σ_{j<kB} β_j B_j   [out, r],
//   y = x W0ᵀ + b + s (dropout(x) Aᵀ) Bᵀ,   s = alpha / r.
// A0 is kaiming-uniform (U(±1/√in), LoRA's A for the same seed and stream), the bases are
// U(-1, 1)/√kA and U(-1, 1)/√kB, and α = β = 0 at init, so the layer starts as the base.
//
// Unlike the reference code, nothing random is stored or taken from a framework generator: A0
// and every basis are pure functions of (seed, stream_id, basis index, entry index) through the
// library's Philox (RandomBasis in core/random.hpp), drawn in fp32 and converted exactly, so the
// same (seed, coefficients) give bit-identical bases on the CPU and the GPU for every dtype. The
// bases are never held: as a parametrisation of the shared low-rank layer, generate() builds
// A_eff and B_eff tile by tile (nola_combine) once per optimizer step, and pull_back()
// regenerates the same tiles once per step to project dA_eff and dB_eff onto them
// (nola_project: dα_i = ⟨dA_eff, A_i⟩, dβ_j = ⟨dB_eff, B_j⟩). A layer holds O(r (in + out))
// numbers (the path's factors and their gradients) plus kA + kB coefficients and their
// gradients; the CPU primitives hold one tile of basis entries per thread, the GPU kernels none.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "../core/random.hpp"
#include "lora.hpp"  // validate_low_rank_config
#include "low_rank_layer.hpp"

namespace peft {

/// NOLA's options. There is no PEFT NOLA; the names follow the paper and LoraConfig.
struct NolaConfig {
  index_t r = 8;                // rank of A [r, in] and B [out, r]
  double alpha = 8;             // scaling s = alpha / r
  index_t num_basis_a = 512;    // kA: bases of A (trainable α has kA entries)
  index_t num_basis_b = 512;    // kB: bases of B (trainable β has kB entries)
  double dropout = 0.0;         // on the adapter path's input, in [0, 1)
  bool fan_in_fan_out = false;  // the frozen weight is given [in, out] (GPT-2's Conv1D)
  std::uint64_t seed = 0;       // with LayerOptions::stream_id, keys A0, the bases and dropout
  /// The stream of A0 and the bases when set (LayerOptions::stream_id otherwise, which still
  /// keys dropout): a checkpoint records each layer's and its loader sets it here.
  std::optional<std::uint32_t> basis_stream_id = std::nullopt;

  double scaling() const { return alpha / double(r); }
  std::uint32_t basis_stream(const LayerOptions& options) const {
    return basis_stream_id.value_or(options.stream_id);
  }
};

namespace detail {

/// NOLA's parametrisation: nola_alpha [kA, 1] and nola_beta [kB, 1] make A_eff and B_eff.
template <class T, class B>
class NolaFactors {
 public:
  static constexpr const char* name = "Nola";
  using Config = NolaConfig;
  using P = param_t<T>;

  NolaFactors(const NolaConfig& config, index_t in, index_t out)
      : config_(validated(config, in, out)),
        alpha_(config.num_basis_a, 1),
        beta_(config.num_basis_b, 1),
        grad_alpha_(config.num_basis_a, 1),
        grad_beta_(config.num_basis_b, 1),
        one_(1, 1) {}

  const NolaConfig& config() const noexcept { return config_; }

  LowRankShape shape(index_t in, index_t out, const LayerOptions& options) const {
    return low_rank_shape(config_, in, out, options);
  }

  /// α = β = 0; the streams of A0 (LoRA's kaiming-uniform A: purpose init, member 0) and of the
  /// bases (purposes nola_basis_a and nola_basis_b, member = basis index).
  void initialise(Context<B>& ctx, LowRankPath<T, B>& path, const LayerOptions& options) {
    const index_t in = path.shape().in;
    const std::uint32_t stream = config_.basis_stream(options);
    a0_ = make_basis(config_.seed, stream, RandomPurpose::init,
                     static_cast<float>(1.0 / std::sqrt(double(in))));
    basis_a_ = make_basis(config_.seed, stream, RandomPurpose::nola_basis_a,
                          static_cast<float>(1.0 / std::sqrt(double(config_.num_basis_a))));
    basis_b_ = make_basis(config_.seed, stream, RandomPurpose::nola_basis_b,
                          static_cast<float>(1.0 / std::sqrt(double(config_.num_basis_b))));
    fill(ctx, alpha_.view(), 0.0);
    fill(ctx, beta_.view(), 0.0);
    fill(ctx, grad_alpha_.view(), 0.0);
    fill(ctx, grad_beta_.view(), 0.0);
    fill(ctx, one_.view(), 1.0);
  }

  std::vector<Parameter<P, B>> parameters(LowRankPath<T, B>&) {
    return {{"nola_alpha", alpha_.view(), grad_alpha_.view()},
            {"nola_beta", beta_.view(), grad_beta_.view()}};
  }

  /// A_eff = A0 + Σ α_i A_i, B_eff = Σ β_j B_j, tile by tile (bases with a zero coefficient
  /// cost nothing, so a fresh layer generates A0 only).
  void generate(Context<B>& ctx, LowRankPath<T, B>& path) {
    nola_combine(ctx, a0_, as_const(one_.view()), 0.0, path.a());
    nola_combine(ctx, basis_a_, as_const(alpha_.view()), 1.0, path.a());
    nola_combine(ctx, basis_b_, as_const(beta_.view()), 0.0, path.b());
  }

  /// dα += ⟨dA_eff, A_i⟩, dβ += ⟨dB_eff, B_j⟩; dA_eff and dB_eff restart at zero, so pulling back
  /// twice adds nothing (and, with no backward in between, regenerates no basis).
  void pull_back(Context<B>& ctx, LowRankPath<T, B>& path) {
    if (!pending_) return;
    nola_project(ctx, basis_a_, as_const(path.grad_a()), grad_alpha_.view());
    nola_project(ctx, basis_b_, as_const(path.grad_b()), grad_beta_.view());
    fill(ctx, path.grad_a(), 0.0);
    fill(ctx, path.grad_b(), 0.0);
    pending_ = false;
  }

  /// A backward accumulated into dA_eff and dB_eff: the next pull_back has work to do.
  void mark_pending() noexcept { pending_ = true; }

  void zero_grad(Context<B>& ctx, LowRankPath<T, B>&) {
    fill(ctx, grad_alpha_.view(), 0.0);
    fill(ctx, grad_beta_.view(), 0.0);
    pending_ = false;  // the layer zeroed dA_eff and dB_eff just before
  }

  index_t num_trainable(index_t, index_t) const noexcept {
    return config_.num_basis_a + config_.num_basis_b;
  }

  /// Workspace of pull_back (its two projections run one after the other).
  index_t workspace_bytes(const Context<B>& ctx, index_t in, index_t out) const {
    return std::max(nola_project_workspace_bytes(ctx, config_.num_basis_a, config_.r * in),
                    nola_project_workspace_bytes(ctx, config_.num_basis_b, out * config_.r));
  }

  /// The families A0, A_i and B_j are drawn from.
  const RandomBasis& a0_basis() const noexcept { return a0_; }
  const RandomBasis& a_basis() const noexcept { return basis_a_; }
  const RandomBasis& b_basis() const noexcept { return basis_b_; }

 private:
  static NolaConfig validated(const NolaConfig& config, index_t in, index_t out) {
    validate_low_rank_config("Nola", config.r, config.alpha, config.dropout);
    constexpr index_t kMaxBases = index_t{0xFFFFFFFF};
    PEFT_CHECK_ARG(config.num_basis_a >= 1 && config.num_basis_a <= kMaxBases,
                   "Nola: num_basis_a is ", config.num_basis_a, ", expected 1 to ", kMaxBases);
    PEFT_CHECK_ARG(config.num_basis_b >= 1 && config.num_basis_b <= kMaxBases,
                   "Nola: num_basis_b is ", config.num_basis_b, ", expected 1 to ", kMaxBases);
    constexpr auto kMax = static_cast<index_t>(kMaxStreamElements);
    PEFT_CHECK_ARG(
        config.r <= kMax / std::max<index_t>(in, 1) && config.r <= kMax / std::max<index_t>(out, 1),
        "Nola: r = ", config.r, " with in = ", in, " and out = ", out,
        " makes a factor of more than ", kMax, " entries, the most one random stream can draw");
    return config;
  }

  NolaConfig config_;
  Matrix<P, B> alpha_, beta_, grad_alpha_, grad_beta_;
  Matrix<P, B> one_;  // the coefficient of A0
  RandomBasis a0_, basis_a_, basis_b_;
  bool pending_ = false;
};

}  // namespace detail

template <class T, class B>
class Nola : public detail::LowRankLayer<Nola<T, B>, detail::NolaFactors<T, B>, T, B> {
  using Base = detail::LowRankLayer<Nola<T, B>, detail::NolaFactors<T, B>, T, B>;
  friend Base;

 public:
  static constexpr const char* name = "Nola";

  /// w0 is [out, in] ([in, out] with fan_in_fan_out) and is never copied: it must outlive the
  /// layer. bias, when given, has out elements.
  Nola(typename Base::Ctx& ctx, typename Base::ConstView w0, const NolaConfig& config,
       const LayerOptions& options = {}, VectorView<const T, B> bias = {})
      : Base(ctx, w0, config, options, bias) {}

  const NolaConfig& config() const noexcept { return this->method_.config(); }

  /// The random families of A0 ([r, in], coefficient 1), the A bases ([r, in]) and the B bases
  /// ([out, r]); entry e of basis i is family.entry(i, e), e the row-major index.
  const RandomBasis& a0_basis() const noexcept { return this->method_.a0_basis(); }
  const RandomBasis& a_basis() const noexcept { return this->method_.a_basis(); }
  const RandomBasis& b_basis() const noexcept { return this->method_.b_basis(); }
  /// The stream A0 and the bases are drawn from (config().basis_stream_id or the layer's).
  std::uint32_t basis_stream_id() const noexcept { return this->method_.a_basis().stream_id; }

  /// The generated factors A_eff [r, in] and B_eff [out, r] (current after parameters_updated),
  /// e.g. to export the adapter as a plain LoRA.
  MatrixView<const typename Base::param_type, B> effective_a() const noexcept {
    return this->path_.a();
  }
  MatrixView<const typename Base::param_type, B> effective_b() const noexcept {
    return this->path_.b();
  }

 protected:
  /// Every backward accumulates into dA_eff and dB_eff (the path does): remember that the next
  /// prepare_gradients has something to pull back.
  void extra_backward(typename Base::Ctx&, typename Base::ConstView, typename Base::ConstView,
                      typename Base::View) {
    this->method_.mark_pending();
  }
  index_t extra_workspace_bytes(const typename Base::Ctx& ctx, index_t) const {
    return this->method_.workspace_bytes(ctx, this->in_features(), this->out_features());
  }
};

}  // namespace peft
