#pragma once
// PEFT's LoraConfig fields, which every checkpoint format that embeds LoRA carries (LORA; the
// ROSA config extends them), and the low-rank factors A [r, in] and B [out, r] such formats
// hold per module: read, checked and written here only.

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../adapters/lora.hpp"
#include "../model/base_model.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "config_writer.hpp"
#include "module_tensors.hpp"

namespace peft {

/// The LoRA fields of adapter_config.json, with PEFT's defaults.
struct LoraFields {
  using Dropout = decltype(LoraConfig::dropout);

  index_t r = 8;
  double lora_alpha = 8;
  Dropout lora_dropout = 0;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  LoraInit init = LoraInit::kaiming_uniform;

  /// The configuration of a layer of rank `rank` and alpha `alpha` with the shared fields.
  LoraConfig layer_config(index_t rank, double alpha, std::uint64_t seed) const {
    return LoraConfig{.r = rank,
                      .alpha = alpha,
                      .dropout = lora_dropout,
                      .use_rslora = use_rslora,
                      .fan_in_fan_out = fan_in_fan_out,
                      .init = init,
                      .seed = seed};
  }

  /// Reads the fields, and rank_pattern / alpha_pattern into patterns.add_rank(key, r) and
  /// patterns.add_alpha(key, alpha); applies the options' fan_in_fan_out. Refuses what would
  /// change the layer's math in ways the layers do not implement (trained biases,
  /// modules_to_save, initialisations that rewrite the base weights); `method` names the format.
  template <class Patterns>
  void read(const ConfigReader& in, Patterns& patterns, std::string_view method,
            const LoadOptions& options) {
    in.read_positive("r", r);
    in.read("lora_alpha", lora_alpha);
    in.read_fraction("lora_dropout", lora_dropout, false);
    in.read("use_rslora", use_rslora);
    in.read("fan_in_fan_out", fan_in_fan_out);
    if (options.fan_in_fan_out) fan_in_fan_out = *options.fan_in_fan_out;
    read_init(in);
    if (const auto* bias = in.given("bias"); bias && !(bias->is_string() && *bias == "none"))
      in.fail("bias ", bias->dump(), " is not supported (only \"none\")");
    in.refuse_set({"modules_to_save"}, method);
    // PEFT 0.21's LoRA variants and extensions: each changes the layer's math while its tensors
    // can still look like plain lora_A / lora_B.
    in.refuse_set({"use_dora", "lora_bias", "use_qalora", "use_bdlora", "kasa_config",
                   "velora_config", "monteclora_config", "arrow_config", "alora_invocation_tokens",
                   "layer_replication", "target_parameters", "trainable_token_indices"},
                  method);
    in.read_patterns("rank_pattern", "an integer >= 1", ConfigReader::is_positive_integer,
                     [&](const std::string& k, const auto& v) {
                       patterns.add_rank(k, v.template get<index_t>());
                     });
    in.read_patterns(
        "alpha_pattern", "a number", [](const auto& v) { return v.is_number(); },
        [&](const std::string& k, const auto& v) {
          patterns.add_alpha(k, v.template get<double>());
        });
  }

 private:
  void read_init(const ConfigReader& in) {
    const auto* v = in.given("init_lora_weights");
    if (v == nullptr) return;
    if (v->is_boolean()) {
      init = v->get<bool>() ? LoraInit::kaiming_uniform : LoraInit::none;
    } else if (v->is_string()) {
      const std::string name = v->get<std::string>();
      if (name == "gaussian")
        init = LoraInit::gaussian;
      else if (name == "eva" || name == "orthogonal")
        init = LoraInit::kaiming_uniform;  // A and B come from the file
      else
        in.fail("init_lora_weights \"", name, "\" is not supported: ",
                "PiSSA, OLoRA, CorDA and LoftQ adapters need their modified base weights; "
                "convert them to plain LoRA in PEFT first");
    } else {
      in.fail("init_lora_weights must be a boolean or a string, got ", v->dump());
    }
  }
};

/// Every field of PEFT 0.21's LoraConfig (and PeftConfig): a LORA config holding another one
/// comes from a newer PEFT, whose meaning peft-cpp cannot know.
inline constexpr std::string_view kPeftLoraConfigFields[] = {"alora_invocation_tokens",
                                                             "alpha_pattern",
                                                             "arrow_config",
                                                             "auto_mapping",
                                                             "base_model_name_or_path",
                                                             "bias",
                                                             "corda_config",
                                                             "ensure_weight_tying",
                                                             "eva_config",
                                                             "exclude_modules",
                                                             "fan_in_fan_out",
                                                             "inference_mode",
                                                             "init_lora_weights",
                                                             "kasa_config",
                                                             "layer_replication",
                                                             "layers_pattern",
                                                             "layers_to_transform",
                                                             "loftq_config",
                                                             "lora_alpha",
                                                             "lora_bias",
                                                             "lora_dropout",
                                                             "lora_ga_config",
                                                             "megatron_config",
                                                             "megatron_core",
                                                             "modules_to_save",
                                                             "monteclora_config",
                                                             "peft_type",
                                                             "peft_version",
                                                             "qalora_group_size",
                                                             "r",
                                                             "rank_pattern",
                                                             "revision",
                                                             "runtime_config",
                                                             "target_modules",
                                                             "target_parameters",
                                                             "task_type",
                                                             "trainable_token_indices",
                                                             "use_bdlora",
                                                             "use_dora",
                                                             "use_qalora",
                                                             "use_rslora",
                                                             "velora_config"};

/// Warns (LoadOptions::warn) about the fields that PEFT 0.21's LoraConfig does not have and that
/// are set to anything but null, false or an empty container.
inline void warn_unknown_lora_fields(const ConfigReader& in, const LoadOptions& options) {
  std::string unknown;
  for (const auto& [key, value] : in.json().items()) {
    if (std::find(std::begin(kPeftLoraConfigFields), std::end(kPeftLoraConfigFields), key) !=
        std::end(kPeftLoraConfigFields))
      continue;
    if (value.is_null() || (value.is_boolean() && !value.get<bool>()) ||
        ((value.is_array() || value.is_object()) && value.empty()))
      continue;
    unknown += detail::concat(unknown.empty() ? "" : ", ", key, " = ", value.dump());
  }
  if (!unknown.empty())
    detail::warn(options,
                 detail::concat(
                     in.source(),
                     ": fields PEFT 0.21 does not have (from a newer PEFT?), ignored: ", unknown));
}

// ---- saving --------------------------------------------------------------------------------

/// The LoRA configurations of the layers being saved: per-module ranks and alphas, the most
/// common of each (the config's r and lora_alpha), and the fields held once.
struct LoraLayers {
  std::vector<index_t> ranks;
  std::vector<double> alphas;
  index_t r = 0;
  double alpha = 0;
  LoraConfig shared;
};

/// Collects config_of(layer) (a LoraConfig) of every layer of the job; refuses layers that
/// differ in the fields the config holds once.
template <class F, class T, class B, class ConfigOf>
LoraLayers lora_layers(const SaveJob<F, T, B>& job, ConfigOf&& config_of) {
  std::vector<LoraConfig> c;
  LoraLayers l;
  for (const auto* layer : job.layers) {
    c.push_back(config_of(*layer));
    l.ranks.push_back(c.back().r);
    l.alphas.push_back(c.back().alpha);
  }
  l.shared = c.front();
  job.require_same("lora_dropout, use_rslora or fan_in_fan_out", [&](std::size_t i) {
    return c[i].dropout == l.shared.dropout && c[i].use_rslora == l.shared.use_rslora &&
           c[i].fan_in_fan_out == l.shared.fan_in_fan_out;
  });
  job.require_same("init_lora_weights", [&](std::size_t i) { return c[i].init == l.shared.init; });
  l.r = detail::most_common(l.ranks);
  l.alpha = detail::most_common(l.alphas);
  return l;
}

namespace detail {

/// Pattern entries as a JSON object, in their order.
template <class V, class Convert>
nlohmann::ordered_json pattern_object(const std::vector<std::pair<std::string, V>>& entries,
                                      Convert&& convert) {
  nlohmann::ordered_json o = nlohmann::ordered_json::object();
  for (const auto& [key, value] : entries) o[key] = convert(value);
  return o;
}

}  // namespace detail

/// Writes the LoRA fields of `layers`, with the format's rank_pattern and alpha_pattern entries
/// (each format resolves patterns its own way).
inline void write_lora_fields(ConfigFields& fields, const LoraLayers& layers,
                              const std::vector<std::pair<std::string, index_t>>& rank_pattern,
                              const std::vector<std::pair<std::string, double>>& alpha_pattern) {
  const LoraConfig& c = layers.shared;
  fields["alpha_pattern"] = detail::pattern_object(alpha_pattern, detail::json_number);
  fields["bias"] = "none";
  fields["fan_in_fan_out"] = c.fan_in_fan_out;
  if (c.init == LoraInit::gaussian)
    fields["init_lora_weights"] = "gaussian";
  else
    fields["init_lora_weights"] = c.init == LoraInit::kaiming_uniform;
  fields["layers_pattern"] = nullptr;
  fields["layers_to_transform"] = nullptr;
  fields["lora_alpha"] = detail::json_number(layers.alpha);
  fields["lora_dropout"] = detail::json_real(c.dropout);
  fields["modules_to_save"] = nullptr;
  fields["r"] = layers.r;
  fields["rank_pattern"] =
      detail::pattern_object(rank_pattern, [](index_t v) { return nlohmann::ordered_json(v); });
  fields["use_rslora"] = c.use_rslora;
}

// ---- loading -------------------------------------------------------------------------------

/// A module's low-rank factors, read and checked, with the layer's features.
template <class P>
struct LoraFactors {
  index_t in = 0, out = 0;
  std::vector<NamedMatrix<P>> values;  // lora_A [r, in], lora_B [out, r]
};

/// Reads the factors lora_A and lora_B of a module (under the format's `keys` for them) for a
/// layer of configuration `c` over `base`, after checking them against both.
template <class P, class T, class B>
LoraFactors<P> read_lora_factors(const ModuleSource& src, std::span<const ParameterKey> keys,
                                 const LoraConfig& c, const BaseLinear<T, B>& base) {
  const MatrixView<const T, B>& w = base.weight;
  LoraFactors<P> f;
  f.in = c.fan_in_fan_out ? w.rows() : w.cols();
  f.out = c.fan_in_fan_out ? w.cols() : w.rows();

  std::string_view names[2];
  const SafetensorsTensorInfo* t[2] = {};
  for (int i = 0; i < 2; ++i) {
    const std::string_view parameter = i == 0 ? "lora_A" : "lora_B";
    for (const ParameterKey& key : keys)
      if (key.parameter == parameter) {
        names[i] = key.suffix.substr(0, key.suffix.find('.'));
        t[i] = src.tensors.find(key.suffix);
      }
  }
  if (t[0] == nullptr || t[1] == nullptr) {
    const bool one = t[0] != nullptr || t[1] != nullptr;
    const std::string_view has = t[0] ? names[0] : names[1], lacks = t[0] ? names[1] : names[0];
    throw Error(ErrorKind::io, detail::concat(src.where, ": module '", src.module(), "' has ",
                                              one ? has : "neither ", one ? " but no " : names[0],
                                              one ? lacks : " nor ", one ? "" : names[1]));
  }
  const std::string a =
      detail::concat(names[0], " is ", SafetensorsReader::shape_text(t[0]->shape));
  const std::string b =
      detail::concat(names[1], " is ", SafetensorsReader::shape_text(t[1]->shape));
  if (t[0]->shape.size() != 2 || t[1]->shape.size() != 2)
    src.fail(a, " and ", b, ", expected two matrices");
  if (t[0]->shape[0] != t[1]->shape[1]) src.fail(a, " and ", b, ": their ranks differ");
  if (t[0]->shape[0] != c.r) src.fail("the config gives rank ", c.r, " (r / rank_pattern), ", a);
  if (t[0]->shape[1] != f.in || t[1]->shape[0] != f.out)
    src.fail(a, " and ", b, ", the base weight is ", shape_string(w),
             c.fan_in_fan_out ? " [in, out]" : " [out, in]",
             " (fan_in_fan_out = ", c.fan_in_fan_out ? "true" : "false", ")");
  if (!base.bias.empty() && base.bias.size() != f.out)
    src.fail("the bias has ", base.bias.size(), " elements, out_features is ", f.out);
  f.values.emplace_back("lora_A", src.reader.read_matrix<P>(t[0]->name));
  f.values.emplace_back("lora_B", src.reader.read_matrix<P>(t[1]->name));
  return f;
}

}  // namespace peft
