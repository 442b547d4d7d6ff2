#pragma once
// What the checkpoint format traits of an adapter method provide, and what save_adapter and
// load_adapter hand them. One struct per method, in io/<method>_format.hpp, listed in
// model/adapter_types.hpp; AdapterSet holds the listed layer types, and the checkpoint code
// reads and writes them through the traits alone:
//
//   struct XFormat : FormatTypes<X, XFileConfig, XSaveOptions> {  // Layer<T, B> = X<T, B>
//     // adapter_config.json's peft_type, and the method in messages.
//     static constexpr std::string_view peft_type = "X", name = "X";
//     // Tensors that hold a parameter whole, by parameter name (Layer::parameters()), in the
//     // order they are written: base_model.model.<module>.<suffix>.
//     static constexpr ParameterKey parameter_keys[] = {{"x_A", "x_A.weight"}, ...};
//     // The suffixes of the format's other tensors (its own hook writes and reads them), and
//     // what a file may hold that the format refuses, for the error.
//     static constexpr std::array<std::string_view, N> extra_keys = {...};
//     static constexpr std::string_view unsupported = "embedding X ... are not supported";
//     // FileConfig (XFileConfig): adapter_config.json, parsed and checked, by
//     //   static FileConfig from_json(const nlohmann::ordered_json&, const std::string& source,
//     //                               const LoadOptions&);  // refusals: io errors naming source
//     // MethodOptions (XSaveOptions): the method's own save options, if any.
//
//     // Loading one module (everything is checked before any layer is built): its layer
//     // configuration, and the values of its parameters by name. With an Extra (RoSA: the
//     // mask), restore(ctx, layer, extra) runs after the layer is built, before the values
//     // are uploaded.
//     template <class T, class B>
//     static LoadedModule<param_t<T>, XConfig> read_module(const FileConfig&, const ModuleSource&,
//                                                          const BaseLinear<T, B>&,
//                                                          const LoadOptions&);
//     // Saving: the method's config fields into job.fields, and its tensors into job.writer
//     // (job.add_parameters(i) writes module i's parameter_keys tensors).
//     template <class T, class B>
//     static void save(SaveJob<XFormat, T, B>& job, const MethodOptions&);
//   };
//
// A format whose config embeds PEFT's LoRA fields, or whose modules hold factors A and B,
// reads and writes them with lora_fields.hpp; patterns.hpp chooses pattern keys.

#include <algorithm>
#include <array>
#include <concepts>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/buffer.hpp"
#include "../core/dtype.hpp"
#include "checkpoint_options.hpp"
#include "config_writer.hpp"
#include "module_tensors.hpp"
#include "safetensors.hpp"

namespace peft {

/// The types of a format's traits: the layer template, the parsed adapter_config.json and the
/// method's own save options.
template <template <class, class> class L, class Config, class Options = NoMethodOptions>
struct FormatTypes {
  template <class T, class B>
  using Layer = L<T, B>;
  using FileConfig = Config;
  using MethodOptions = Options;
};

/// A tensor that holds the parameter `parameter` whole, under key suffix `suffix`.
struct ParameterKey {
  std::string_view parameter;
  std::string_view suffix;
};

/// A parameter's value by name, on the host.
template <class P>
using NamedMatrix = std::pair<std::string, Matrix<P, Cpu>>;

/// One module of a checkpoint, read and checked: the layer configuration, the parameters'
/// values by name, and what else the format needs to restore the layer (Extra).
template <class P, class Config, class Extra = std::monostate>
struct LoadedModule {
  Config config;
  std::vector<NamedMatrix<P>> values = {};
  Extra extra = {};
};

/// The layers of a set being saved as format F, and what the format fills in.
template <class F, class T, class B>
struct SaveJob {
  using Layer = typename F::template Layer<T, B>;

  Context<B>& ctx;
  SafetensorsDtype dtype;  // of the floating-point tensors
  std::vector<std::string> modules;
  std::vector<Layer*> layers;
  ConfigFields fields = {};
  SafetensorsWriter writer = {};

  /// Writes module i's tensors of F::parameter_keys, in their order, from the parameters of
  /// those names.
  void add_parameters(std::size_t i) {
    auto params = layers[i]->parameters();
    for (const ParameterKey& key : F::parameter_keys) {
      const auto p = std::find_if(params.begin(), params.end(),
                                  [&](const auto& q) { return q.name == key.parameter; });
      PEFT_CHECK(p != params.end(), ErrorKind::state, "save_adapter: module '", modules[i],
                 "' has no parameter '", key.parameter, "'");
      writer.add(tensor_key(modules[i], key.suffix),
                 as_const(detail::host_copy(ctx, p->value).view()), dtype);
    }
  }

  /// Refuses layers that differ from the first in what `same(i)` compares: fields that
  /// adapter_config.json holds once for all modules.
  template <class Same>
  void require_same(std::string_view fields, Same&& same) const {
    for (std::size_t i = 1; i < layers.size(); ++i)
      PEFT_CHECK_ARG(same(i), "save_adapter: module '", modules[i], "' differs from module '",
                     modules.front(), "' in ", fields,
                     ", which adapter_config.json holds once for all modules");
  }
};

/// The parts of the traits that need no layer type (the rest is checked where it is used).
template <class F>
concept AdapterFormat = requires {
  typename F::FileConfig;
  typename F::MethodOptions;
  { F::peft_type } -> std::convertible_to<std::string_view>;
  { F::name } -> std::convertible_to<std::string_view>;
  { F::unsupported } -> std::convertible_to<std::string_view>;
  std::span<const ParameterKey>(F::parameter_keys);
  std::span<const std::string_view>(F::extra_keys);
  {
    F::FileConfig::from_json(std::declval<const nlohmann::ordered_json&>(), std::string(),
                             LoadOptions{})
    } -> std::same_as<typename F::FileConfig>;
};

}  // namespace peft
