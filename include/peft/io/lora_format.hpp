#pragma once
// Hugging Face PEFT's LoRA checkpoint (peft_type LORA):
//
//   adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in]
//                              base_model.model.<module>.lora_B.weight [out, r]
//
// Per-module ranks and alphas go through PEFT's rank_pattern and alpha_pattern: a key k
// applies to module m when m matches the regular expression `(.*\.)?(k)$` in full, and the
// first matching key in the file's order wins. All layers of a checkpoint share lora_dropout,
// use_rslora, fan_in_fan_out and init_lora_weights.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "../adapters/lora.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "lora_fields.hpp"
#include "patterns.hpp"

namespace peft {

/// adapter_config.json of a LORA checkpoint (PEFT's LoraConfig), parsed and checked.
struct LoraAdapterConfig : LoraFields {
  PatternMap<index_t> rank_pattern;
  PatternMap<double> alpha_pattern;

  void add_rank(std::string key, index_t value) { rank_pattern.add(std::move(key), value); }
  void add_alpha(std::string key, double value) { alpha_pattern.add(std::move(key), value); }

  /// r and alpha of `module` as PEFT resolves them, with the shared fields.
  LoraConfig for_module(std::string_view module, std::uint64_t seed = 0) const {
    return layer_config(rank_pattern.value_for(module, r),
                        alpha_pattern.value_for(module, lora_alpha), seed);
  }

  /// Parses the fields; `source` names the file in messages. Refuses what Lora does not
  /// implement (DoRA, trained biases, modules_to_save, ...).
  static LoraAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source,
                                     const LoadOptions& options = {}) {
    const ConfigReader in(j, source);
    in.expect_peft_type("LORA");
    LoraAdapterConfig c;
    c.read(in, c, "LoRA", options);
    warn_unknown_lora_fields(in, options);
    return c;
  }
};

struct LoraFormat : FormatTypes<Lora, LoraAdapterConfig> {
  static constexpr std::string_view peft_type = "LORA", name = "LoRA";
  static constexpr ParameterKey parameter_keys[] = {{"lora_A", "lora_A.weight"},
                                                    {"lora_B", "lora_B.weight"}};
  static constexpr std::array<std::string_view, 0> extra_keys = {};
  static constexpr std::string_view unsupported =
      "embedding LoRA, DoRA magnitudes, biases and modules_to_save are not supported";

  template <class T, class B>
  static LoadedModule<param_t<T>, LoraConfig> read_module(const FileConfig& file,
                                                          const ModuleSource& src,
                                                          const BaseLinear<T, B>& base,
                                                          const LoadOptions& options) {
    const LoraConfig config = file.for_module(src.module(), options.seed);
    return {config, read_lora_factors<param_t<T>>(src, parameter_keys, config, base).values};
  }

  template <class T, class B>
  static void save(SaveJob<LoraFormat, T, B>& job, const MethodOptions&) {
    const LoraLayers lora = lora_layers(job, [](const Lora<T, B>& l) { return l.config(); });
    write_lora_fields(job.fields, lora, detail::make_patterns(job.modules, lora.ranks, lora.r),
                      detail::make_patterns(job.modules, lora.alphas, lora.alpha));
    job.fields["use_dora"] = false;
    for (std::size_t i = 0; i < job.layers.size(); ++i) job.add_parameters(i);
  }
};

}  // namespace peft
