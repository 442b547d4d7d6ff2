#pragma once
// LoRA (Hu et al. 2021) with Hugging Face PEFT's semantics:
//   y = x W0ᵀ + b + s · (dropout(x) Aᵀ) Bᵀ,   A [r, in], B [out, r],   s = alpha / r
// (alpha / sqrt(r) with rsLoRA). The simplest parametrisation of the shared low-rank layer: the
// trainable tensors are the effective factors themselves, so nothing is generated or pulled back.

#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/random.hpp"
#include "low_rank_layer.hpp"

namespace peft {

/// PEFT's `init_lora_weights`.
enum class LoraInit {
  kaiming_uniform,  // default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (the layer starts as a no-op)
  gaussian,         // A ~ N(0, std = 1/r), B = 0
  none,             // PEFT's False: A and B both random (kaiming uniform), for tests
};

/// PEFT's LoraConfig fields, with PEFT's defaults.
struct LoraConfig {
  index_t r = 8;
  double alpha = 8;             // lora_alpha
  double dropout = 0.0;         // lora_dropout, on the adapter path only, in [0, 1)
  bool use_rslora = false;      // scale alpha / sqrt(r) instead of alpha / r
  bool fan_in_fan_out = false;  // the frozen weight is given [in, out] (GPT-2's Conv1D)
  LoraInit init = LoraInit::kaiming_uniform;
  std::uint64_t seed = 0;  // with LayerOptions::stream_id, keys init and dropout

  double scaling() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }
};

namespace detail {

/// Checks the fields every low-rank method shares; `who` names the method in messages.
inline void validate_low_rank_config(const char* who, index_t r, double alpha, double dropout) {
  PEFT_CHECK_ARG(r >= 1, who, ": r is ", r, ", expected >= 1");
  PEFT_CHECK_ARG(std::isfinite(alpha), who, ": alpha is ", alpha, ", expected a finite value");
  PEFT_CHECK_ARG(dropout >= 0.0 && dropout < 1.0, who, ": dropout is ", dropout,
                 ", expected in [0, 1)");
}

/// nn.Linear's kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a stream.
template <class P>
void fill_kaiming_uniform(MatrixView<P, Cpu> m, const RandomStream& s) {
  const float bound = static_cast<float>(1.0 / std::sqrt(double(m.cols())));
  for (index_t i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<P>(uniform_symmetric(s.bits(std::uint64_t(i)), bound));
}

/// LoRA's parametrisation: lora_A and lora_B are A_eff and B_eff.
template <class T, class B>
class LoraFactors {
 public:
  using Config = LoraConfig;
  using P = param_t<T>;
  static constexpr const char* name = "Lora";

  LoraFactors(const LoraConfig& config, index_t, index_t) : config_(config) {
    validate_low_rank_config("Lora", config.r, config.alpha, config.dropout);
  }

  const LoraConfig& config() const noexcept { return config_; }

  LowRankShape shape(index_t in, index_t out, const LayerOptions& options) const {
    return low_rank_shape(config_, in, out, options);
  }

  /// PEFT's inits, drawn on the host from Philox (bit-identical on every backend).
  void initialise(Context<B>& ctx, LowRankPath<T, B>& path, const LayerOptions& options) const {
    Matrix<P, Cpu> host_a(path.a().rows(), path.a().cols());
    Matrix<P, Cpu> host_b(path.b().rows(), path.b().cols());
    const auto stream_a = make_stream(config_.seed, options.stream_id, RandomPurpose::init, 0);
    const auto stream_b = make_stream(config_.seed, options.stream_id, RandomPurpose::init, 1);
    switch (config_.init) {
      case LoraInit::kaiming_uniform:
        fill_kaiming_uniform(host_a.view(), stream_a);
        break;
      case LoraInit::gaussian: {
        const double std_dev = 1.0 / double(config_.r);
        for (index_t i = 0; i < host_a.size(); ++i)
          host_a.data()[i] =
              static_cast<P>(std_dev * normal_from_stream(stream_a, std::uint64_t(i)));
        break;
      }
      case LoraInit::none:
        fill_kaiming_uniform(host_a.view(), stream_a);
        fill_kaiming_uniform(host_b.view(), stream_b);
        break;
    }
    upload(ctx, as_const(host_a.view()), path.a());
    upload(ctx, as_const(host_b.view()), path.b());
  }

  std::vector<Parameter<P, B>> parameters(LowRankPath<T, B>& path) const {
    return {{"lora_A", path.a(), path.grad_a()}, {"lora_B", path.b(), path.grad_b()}};
  }

  void generate(Context<B>&, LowRankPath<T, B>&) const {}   // the factors are the parameters
  void pull_back(Context<B>&, LowRankPath<T, B>&) const {}  // and so are their gradients
  void zero_grad(Context<B>&, LowRankPath<T, B>&) const {}

  index_t num_trainable(index_t in, index_t out) const noexcept { return config_.r * (in + out); }

 private:
  LoraConfig config_;
};

}  // namespace detail

/// Lora<T, B>(ctx, w0, LoraConfig, LayerOptions = {}, bias = {}): the shared layer (see
/// LowRankLayer) with LoRA's parametrisation.
template <class T, class B>
class Lora : public detail::LowRankLayer<Lora<T, B>, detail::LoraFactors<T, B>, T, B> {
 public:
  using detail::LowRankLayer<Lora<T, B>, detail::LoraFactors<T, B>, T, B>::LowRankLayer;
};

}  // namespace peft
