#pragma once
// save_adapter and load_adapter: an AdapterSet as a Hugging Face PEFT adapter directory
// (adapter_config.json and adapter_model.safetensors, checkpoint.hpp), in the format of its
// adapter type: LORA (lora_format.hpp), ROSA (rosa_format.hpp), ... Every type of
// AdapterFormats (model/adapter_types.hpp) is saved and loaded through its format traits
// (adapter_format.hpp); nothing here names a method.

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../model/adapter_set.hpp"
#include "../model/adapter_types.hpp"
#include "adapter_format.hpp"
#include "checkpoint.hpp"
#include "checkpoint_options.hpp"
#include "module_selection.hpp"
#include "module_tensors.hpp"
#include "regex.hpp"

namespace peft {

namespace detail {

/// The format's own save options from the one given: `given` itself when it is of F's type,
/// F's defaults when none was given; an error when it is meant for another format.
template <class F, class Given>
typename F::MethodOptions method_options(const Given& given) {
  if constexpr (std::is_same_v<Given, typename F::MethodOptions>) {
    return given;
  } else {
    PEFT_CHECK_ARG((std::is_same_v<Given, NoMethodOptions>),
                   "save_adapter: the options given are for another adapter type than the set's (",
                   F::name, ")");
    return {};
  }
}

/// target_modules that select exactly `modules` in PEFT: a list of names would also select
/// every module whose name ends in ".<name>" (block.fc for fc), so a regular expression that
/// re.fullmatch matches with these names only.
inline std::string exact_target_modules(const std::vector<std::string>& modules) {
  std::string regex = exact_selection_regex(modules);
  try {
    const PyRegex check(regex);
    for (const std::string& m : modules)
      PEFT_CHECK(check.full_match(m), ErrorKind::state, "save_adapter: target_modules '", regex,
                 "' does not select module '", m, "'");
  } catch (const Error& e) {
    throw Error(ErrorKind::state, concat("save_adapter: cannot write the ", modules.size(),
                                         " modules as one target_modules pattern (", e.what(),
                                         "); give SaveOptions::target_modules"));
  }
  return regex;
}

template <class F, class T, class B, class Given>
void save_as(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
             const SaveOptions& options, const Given& given, SafetensorsDtype dtype) {
  using Layer = typename F::template Layer<T, B>;
  SaveJob<F, T, B> job{.ctx = ctx, .dtype = dtype, .modules = {}, .layers = {}};
  set.for_each([&](const std::string& module, auto& layer) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(layer)>, Layer>) {
      job.modules.push_back(module);
      job.layers.push_back(&layer);
    }
  });
  F::save(job, method_options<F>(given));
  ConfigFields& f = job.fields;
  f["auto_mapping"] = nullptr;
  f["base_model_name_or_path"] = string_or_null(options.base_model_name_or_path);
  f["inference_mode"] = true;
  f["peft_type"] = F::peft_type;
  f["revision"] = string_or_null(options.revision);
  if (options.target_modules)
    f["target_modules"] = *options.target_modules;
  else
    f["target_modules"] = exact_target_modules(job.modules);
  f["task_type"] = string_or_null(options.task_type);
  commit_adapter_files(dir, f.text(), job.writer);
}

/// Sets a config's fan_in_fan_out per layer from the layers' declared layouts, as PEFT sets it
/// from the module's type: the file's flag holds for layers of layout from_config; where it
/// contradicts a declared layout, the layout wins with a warning (as PEFT warns). An explicit
/// LoadOptions::fan_in_fan_out that contradicts a declared layout is refused.
template <class Config>
class LayoutApplier {
 public:
  static constexpr bool has_flag = requires(Config c) { c.fan_in_fan_out = true; };

  LayoutApplier(Config& config, const std::string& where, const LoadOptions& options)
      : config_(config), where_(where), options_(options) {
    if constexpr (has_flag) flag_ = config.fan_in_fan_out;
  }

  /// The config for the layer of `module`.
  const Config& apply(const std::string& module, WeightLayout layout) {
    if constexpr (has_flag) {
      const bool wanted = layout_fan_in_fan_out(layout, flag_);
      if (layout != WeightLayout::from_config) {
        PEFT_CHECK_ARG(!options_.fan_in_fan_out || *options_.fan_in_fan_out == wanted, where_,
                       ": LoadOptions::fan_in_fan_out = ", flag_ ? "true" : "false",
                       " contradicts module '", module, "', declared ", to_string(layout));
        if (wanted != flag_ && !warned_) {
          warned_ = true;
          warn(options_, concat(where_, ": fan_in_fan_out is ", flag_ ? "true" : "false",
                                " but module '", module, "' is declared ", to_string(layout),
                                ": each layer's declared layout is used, as PEFT uses the "
                                "module's type"));
        }
      }
      config_.fan_in_fan_out = wanted;
    } else {
      (void)module;
      (void)layout;
    }
    return config_;
  }

 private:
  Config& config_;
  const std::string& where_;
  const LoadOptions& options_;
  bool flag_ = false;
  bool warned_ = false;
};

template <class F, class T, class B>
AdapterSet<T, B> load_as(const std::filesystem::path& dir, const AdapterConfigFile& file,
                         const BaseModel<T, B>& base, Context<B>& ctx, const LoadOptions& options) {
  const std::string where = concat("load_adapter: ", quoted(dir));
  typename F::FileConfig config =
      F::FileConfig::from_json(file.json, concat(where, ": ", kAdapterConfigName), options);
  const ModuleSelection selection =
      ModuleSelection::read(ConfigReader(file.json, concat(where, ": ", kAdapterConfigName)));
  const SafetensorsReader reader = open_adapter_weights(dir, file, options);
  std::vector<std::string_view> suffixes;
  for (const ParameterKey& key : F::parameter_keys) suffixes.push_back(key.suffix);
  suffixes.insert(suffixes.end(), F::extra_keys.begin(), F::extra_keys.end());
  const std::vector<ModuleTensors> modules =
      group_module_tensors(reader, suffixes, where, F::name, F::unsupported);

  // Everything is read and checked before any layer is built.
  using Loaded = decltype(F::read_module(config, std::declval<const ModuleSource&>(),
                                         base.begin()->second, options));
  std::vector<Loaded> loaded;
  LayoutApplier<typename F::FileConfig> layouts(config, where, options);
  for (const ModuleTensors& m : modules) {
    PEFT_CHECK(selection.selects(m.module()), ErrorKind::io, where, ": ", kAdapterWeightsName,
               " has tensors for module '", m.module(), "', which ", kAdapterConfigName,
               " does not select (target_modules, exclude_modules, layers_to_transform): PEFT "
               "would not apply them");
    const auto it = base.find(m.module());
    PEFT_CHECK(it != base.end(), ErrorKind::io, where, ": the adapter has module '", m.module(),
               "', which is not among the ", base.size(), " base layers given");
    loaded.push_back(F::read_module(layouts.apply(m.module(), it->second.layout),
                                    ModuleSource{where, m, reader}, it->second, options));
  }

  AdapterSet<T, B> set;
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const std::string& module = modules[i].module();
    auto& layer = set.template add<F::template Layer>(ctx, module, base.find(module)->second,
                                                      loaded[i].config);
    if constexpr (!std::is_same_v<decltype(loaded[i].extra), std::monostate>)
      F::restore(ctx, layer, loaded[i].extra);
    auto params = layer.parameters();
    for (const auto& [name, value] : loaded[i].values) {
      auto p =
          std::find_if(params.begin(), params.end(), [&](const auto& q) { return q.name == name; });
      PEFT_CHECK(
          p != params.end() && p->value.rows() == value.rows() && p->value.cols() == value.cols(),
          ErrorKind::state, where, ": module '", module, "': the layer's ", name, " is ",
          p != params.end() ? shape_string(p->value) : "missing", ", the file's ",
          shape_string(value.view()));
      if (value.size() > 0) upload(ctx, as_const(value.view()), p->value);
    }
    layer.parameters_updated(ctx);
  }
  set.set_training(options.training);
  return set;
}

}  // namespace detail

/// Writes `set` to `dir` (created if missing) as adapter_config.json and
/// adapter_model.safetensors, in the PEFT format of the set's adapter type (one set holds one
/// type): LoRA layers as PEFT's LORA checkpoint, RoSA layers as peft-rosa's ROSA checkpoint.
/// Fields that the config holds once (lora_dropout, use_rslora, fan_in_fan_out,
/// init_lora_weights, ...) must agree between the layers; ranks and alphas (and RoSA's
/// densities) may differ, written as patterns around the most common values. `method_options`
/// are the save options of the set's method, e.g. RosaSaveOptions. The set is not modified (it
/// is taken by reference because reading parameters needs non-const access).
template <class T, class B, class MethodOptions = NoMethodOptions>
void save_adapter(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
                  const SaveOptions& options = {}, const MethodOptions& method_options = {}) {
  static_assert(std::is_same_v<MethodOptions, NoMethodOptions> ||
                    AdapterFormats::has_method_options<MethodOptions>,
                "save_adapter: method_options must be the save options of an adapter type");
  PEFT_CHECK_ARG(!set.empty(), "save_adapter: the adapter set is empty");
  const SafetensorsDtype dtype = options.dtype.value_or(native_safetensors_dtype<param_t<T>>());
  PEFT_CHECK_ARG(dtype == SafetensorsDtype::F32 || dtype == SafetensorsDtype::F16 ||
                     dtype == SafetensorsDtype::BF16 || dtype == SafetensorsDtype::F64,
                 "save_adapter: dtype ", to_string(dtype), " is not F32, F16, BF16 or F64");
  std::vector<bool> present(AdapterFormats::size, false);
  for (const std::string& module : set.modules()) present[set.at(module).index()] = true;
  std::vector<std::string_view> names;
  AdapterFormats::for_each([&]<class F>() { names.push_back(F::name); });
  std::string held;
  for (std::size_t i = 0; i < names.size(); ++i)
    if (present[i]) held += detail::concat(held.empty() ? "" : " and ", names[i]);
  PEFT_CHECK_ARG(std::count(present.begin(), present.end(), true) == 1,
                 "save_adapter: the set holds ", held,
                 " layers; one checkpoint holds one adapter type");
  const auto index =
      static_cast<std::size_t>(std::find(present.begin(), present.end(), true) - present.begin());
  AdapterFormats::visit(index, [&]<class F>() {
    static_assert(AdapterFormat<F>, "an entry of AdapterFormats lacks part of the traits");
    detail::save_as<F>(dir, set, ctx, options, method_options, dtype);
  });
}

/// Builds the adapters saved in `dir` over the frozen layers `base` (by module name, as in
/// the base model; it may hold more modules than the adapter). The config's peft_type picks
/// the format (LORA: PEFT's, including rank_pattern / alpha_pattern, rsLoRA and
/// fan_in_fan_out; ROSA: peft-rosa's). Everything is read and checked before the set is built:
/// on any error nothing is returned. The parameters may be stored as F32, F16 or BF16 (F64 too
/// for a double model).
template <class T, class B>
AdapterSet<T, B> load_adapter(const std::filesystem::path& dir, const BaseModel<T, B>& base,
                              Context<B>& ctx, const LoadOptions& options = {}) {
  const AdapterConfigFile file = read_adapter_config(dir, options.max_config_bytes);
  std::optional<AdapterSet<T, B>> set;
  std::string supported;
  AdapterFormats::for_each([&]<class F>() {
    static_assert(AdapterFormat<F>, "an entry of AdapterFormats lacks part of the traits");
    supported += detail::concat(supported.empty() ? "" : ", ", F::peft_type);
    if (!set && file.peft_type == F::peft_type)
      set = detail::load_as<F>(dir, file, base, ctx, options);
  });
  PEFT_CHECK(set.has_value(), ErrorKind::io, "load_adapter: ", detail::quoted(dir),
             ": peft_type \"", file.peft_type, "\" is not supported (supported: ", supported, ")");
  return std::move(*set);
}

}  // namespace peft
