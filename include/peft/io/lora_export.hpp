#pragma once
// export_as_lora: adapters whose ΔW is s · B_eff A_eff over effective factors (NOLA, LoRA-XS)
// written as a plain Hugging Face PEFT LoRA checkpoint: peft_type LORA, lora_A = A_eff [r, in],
// lora_B = B_eff [out, r], and lora_alpha chosen so that PEFT's lora_alpha / r is the layer's
// scaling s. PEFT, llama.cpp's converter and any LoRA loader read it unchanged. It costs
// r (in + out) numbers per module instead of the method's own checkpoint (NOLA's kA + kB
// coefficients, LoRA-XS's r²), and it is final: it cannot be trained further as the method.

#include <concepts>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>

#include "../adapters/lora.hpp"
#include "../model/adapter_set.hpp"
#include "peft_format.hpp"

namespace peft {

/// A layer that exposes the effective factors of its low-rank update ΔW = scaling() ·
/// effective_b() · effective_a(), current as of its last parameters_updated (Nola, LoraXs).
template <class L>
concept ExportableAsLora = requires(const L& layer) {
  {
    layer.effective_a()
    } -> std::convertible_to<MatrixView<const typename L::param_type, typename L::backend_type>>;
  {
    layer.effective_b()
    } -> std::convertible_to<MatrixView<const typename L::param_type, typename L::backend_type>>;
  { layer.rank() } -> std::convertible_to<index_t>;
  { layer.scaling() } -> std::convertible_to<double>;
  { layer.config().dropout } -> std::convertible_to<double>;
  { layer.config().fan_in_fan_out } -> std::convertible_to<bool>;
  { layer.config().seed } -> std::convertible_to<std::uint64_t>;
};

/// The lora_alpha whose alpha / r is the layer's scaling: its own alpha when the method scales
/// as LoRA does (s = alpha / r: NOLA, LoRA-XS), so the file reads as the user configured it;
/// otherwise s · r.
template <ExportableAsLora L>
double exported_lora_alpha(const L& layer) {
  const double r = double(layer.rank());
  if constexpr (requires { double(layer.config().alpha); }) {
    if (double(layer.config().alpha) / r == layer.scaling()) return double(layer.config().alpha);
  }
  return layer.scaling() * r;
}

/// Writes the layers of `set` to `dir` as a PEFT LoRA adapter with their current effective
/// factors. Every layer must be ExportableAsLora, and all must share dropout and
/// fan_in_fan_out (adapter_config.json holds them once); r and lora_alpha may differ per module
/// (rank_pattern / alpha_pattern). Builds a temporary Lora layer per module, holding
/// r (in + out) numbers in param_t<T>.
template <class T, class B>
void export_as_lora(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
                    const SaveOptions& options = {}) {
  PEFT_CHECK_ARG(!set.empty(), "export_as_lora: the adapter set is empty");
  AdapterSet<T, B> lora;
  set.for_each([&](const std::string& module, auto& layer) {
    using Layer = std::remove_cvref_t<decltype(layer)>;
    PEFT_CHECK_ARG(ExportableAsLora<Layer>, "export_as_lora: module '", module, "' is a ",
                   Layer::name,
                   " layer, which has no effective low-rank factors to export (NOLA and LoRA-XS "
                   "layers have; save LoRA layers with save_adapter)");
    if constexpr (ExportableAsLora<Layer>) {
      const auto& c = layer.config();
      auto& out =
          lora.template add<Lora>(ctx, module, BaseLinear<T, B>(layer.base_weight(), layer.bias()),
                                  LoraConfig{.r = layer.rank(),
                                             .alpha = exported_lora_alpha(layer),
                                             .dropout = double(c.dropout),
                                             .fan_in_fan_out = c.fan_in_fan_out,
                                             .seed = c.seed});
      auto params = out.parameters();  // lora_A, lora_B
      copy(ctx, layer.effective_a(), params[0].value);
      copy(ctx, layer.effective_b(), params[1].value);
      out.parameters_updated(ctx);
    }
  });
  save_adapter(dir, lora, ctx, options);
}

}  // namespace peft
