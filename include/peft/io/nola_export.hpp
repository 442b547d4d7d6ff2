#pragma once
// export_as_lora: a set of NOLA layers written as a plain Hugging Face PEFT LoRA checkpoint
// (peft_type LORA, lora_A = the generated A [r, in], lora_B = the generated B [out, r], the same
// r and lora_alpha, so ΔW = (lora_alpha / r) B A is NOLA's). PEFT, llama.cpp's converter and any
// LoRA loader read it unchanged; it is r (in + out) numbers per module instead of the NOLA
// checkpoint's num_basis_a + num_basis_b.

#include <filesystem>
#include <string>

#include "../adapters/lora.hpp"
#include "../adapters/nola.hpp"
#include "../model/adapter_set.hpp"
#include "peft_format.hpp"

namespace peft {

/// Writes the NOLA layers of `set` (which must hold nothing else) to `dir` as a PEFT LoRA
/// adapter with their current generated factors. Builds a temporary LoRA layer per module (its
/// factors: r (in + out) numbers in param_t<T>).
template <class T, class B>
void export_as_lora(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
                    const SaveOptions& options = {}) {
  PEFT_CHECK_ARG(!set.empty(), "export_as_lora: the adapter set is empty");
  AdapterSet<T, B> lora;
  set.for_each([&](const std::string& module, auto& layer) {
    using Layer = std::remove_cvref_t<decltype(layer)>;
    PEFT_CHECK_ARG((std::is_same_v<Layer, Nola<T, B>>), "export_as_lora: module '", module,
                   "' is a ", Layer::name, " layer; only NOLA layers are exported");
    if constexpr (std::is_same_v<Layer, Nola<T, B>>) {
      const NolaConfig& c = layer.config();
      auto& out =
          lora.template add<Lora>(ctx, module, BaseLinear<T, B>(layer.base_weight(), layer.bias()),
                                  LoraConfig{.r = c.r,
                                             .alpha = c.alpha,
                                             .dropout = c.dropout,
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
