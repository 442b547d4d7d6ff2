#pragma once
// RoSA checkpoints (peft_type ROSA) in the layout of the reference implementation,
// IST-DASLab/peft-rosa (a fork of Hugging Face PEFT), so that adapters move between the two:
//
//   adapter_config.json        {"peft_type": "ROSA", "r": 8, "d": 0.003, "lora_alpha": 8,
//                               "impl": "auto", "spa_store_transpose": true,
//                               "rosa_dtype": "bf16", "rank_pattern": {}, "density_pattern": {},
//                               "alpha_pattern": {}, ...}: PEFT's LoRA fields and RoSA's
//   adapter_model.safetensors  base_model.model.<module>.rosa_A.weight [r, in]
//                              base_model.model.<module>.rosa_B.weight [out, r]
//                              and S's CSR arrays (rosa_sparse.hpp)
//
// (The reference's layer keeps its adapters in ModuleDicts under the adapter name, e.g.
// rosa_A.default.weight; PEFT's get_peft_model_state_dict drops ".default" when it saves.)
// Per-module r, d and lora_alpha follow the reference's pattern rule (rosa_patterns.hpp).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../adapters/rosa.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "lora_fields.hpp"
#include "rosa_patterns.hpp"
#include "rosa_sparse.hpp"
#include "rosa_sparse_read.hpp"

namespace peft {

/// The save options of RoSA checkpoints.
struct RosaSaveOptions {
  /// Index tensors (row_idx, col_idx, tr_*): unset writes I16, the reference's, unless a layer
  /// has a dimension above 32768, then I32 with "peft_cpp_index_dtype": "int32" in the config;
  /// I16 refuses such layers; I32 always uses the extension.
  std::optional<SafetensorsDtype> index_dtype = std::nullopt;
  /// The reference's mask-generation fields, recorded in adapter_config.json.
  std::int64_t spa_num_grads = 1;
  std::string grad_acc_mode = "mean_squared";  // or "mean"
  std::string schedule = {};                   // e.g. "wl64"; empty: null
};

/// adapter_config.json of a ROSA checkpoint (the reference's RosaConfig), parsed and checked.
/// Absent fields take the reference's defaults.
struct RosaAdapterConfig : LoraFields {
  double d = 0.003;
  RosaForward impl = RosaForward::automatic;  // "auto", "sp_add" (dense_add), "spmm"
  bool spa_store_transpose = true;
  std::string rosa_dtype = "bf16";
  // Mask generation (recorded for the reference; RosaMaskBuilder takes its own options).
  std::int64_t spa_num_grads = 1;
  std::string grad_acc_mode = "mean_squared";
  std::optional<std::string> schedule = std::nullopt;
  /// I16 (the reference's) or I32 (the extension, "peft_cpp_index_dtype": "int32").
  SafetensorsDtype index_dtype = SafetensorsDtype::I16;
  RosaPatterns patterns;

  RosaPatterns::Resolved resolve(std::string_view module) const {
    return patterns.resolve(module, r, d, lora_alpha);
  }

  /// The layer configuration of `module` (density: its resolved d).
  RosaConfig for_module(std::string_view module, std::uint64_t seed = 0) const {
    const RosaPatterns::Resolved v = resolve(module);
    return RosaConfig{.lora = layer_config(v.r, v.alpha, seed), .density = v.d, .forward = impl};
  }

  /// Parses the fields; `source` names the file in messages. Refuses what Rosa does not
  /// implement (trained biases, modules_to_save, LoftQ, ...).
  static RosaAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source,
                                     const LoadOptions& options = {}) {
    const ConfigReader in(j, source);
    in.expect_peft_type("ROSA");
    RosaAdapterConfig c;
    c.read(in, c.patterns, "RoSA", options);
    in.read_fraction("d", c.d, true);
    in.read("spa_store_transpose", c.spa_store_transpose);
    bool terminate = false;
    in.read("terminate_after_mask_generation", terminate);
    in.read_choice("impl", c.impl,
                   {{"auto", RosaForward::automatic},
                    {"sp_add", RosaForward::dense_add},
                    {"spmm", RosaForward::spmm}});
    in.read("rosa_dtype", c.rosa_dtype);
    in.read_positive("spa_num_grads", c.spa_num_grads);
    in.read_choice<std::string>("grad_acc_mode", c.grad_acc_mode,
                                {{"mean_squared", "mean_squared"}, {"mean", "mean"}});
    std::string text;
    in.read("schedule", text);
    if (in.given("schedule")) c.schedule = text;
    in.read("mask_load_path", text);
    in.read("mask_save_path", text);
    in.read_choice(kRosaIndexDtypeKey, c.index_dtype,
                   {{"int16", SafetensorsDtype::I16}, {"int32", SafetensorsDtype::I32}});
    in.refuse_set({"loftq_config", "megatron_config"}, "RoSA");
    in.read_patterns(
        "density_pattern", "a number in [0, 1]",
        [](const auto& v) { return ConfigReader::is_fraction(v, true); },
        [&](const std::string& k, const auto& v) {
          c.patterns.add_density(k, v.template get<double>());
        });
    return c;
  }
};

struct RosaFormat : FormatTypes<Rosa, RosaAdapterConfig, RosaSaveOptions> {
  static constexpr std::string_view peft_type = "ROSA", name = "RoSA";
  /// rosa_S is not among them: S's tensors (its used entries and the CSR arrays) are written
  /// by write_rosa_sparse and read by read_rosa_sparse.
  static constexpr ParameterKey parameter_keys[] = {{"lora_A", "rosa_A.weight"},
                                                    {"lora_B", "rosa_B.weight"}};
  static constexpr auto extra_keys = detail::RosaSparseKey::all;
  static constexpr std::string_view unsupported =
      "embedding RoSA, biases and modules_to_save are not supported";

  template <class T, class B>
  static LoadedModule<param_t<T>, RosaConfig, std::optional<CsrPattern>> read_module(
      const FileConfig& file, const ModuleSource& src, const BaseLinear<T, B>& base,
      const LoadOptions& options) {
    using P = param_t<T>;
    RosaConfig config = file.for_module(src.module(), options.seed);
    LoraFactors<P> factors = read_lora_factors<P>(src, parameter_keys, config.lora, base);
    auto sparse =
        detail::read_rosa_sparse<P>(src, file.index_dtype, config.density, factors.out, factors.in);
    if (!sparse) return {config, std::move(factors.values)};
    // The layer's capacity must be the file's nnz.
    const index_t nnz = sparse->values.cols();
    if (config.capacity(factors.out, factors.in) != nnz)
      config.density = RosaConfig::density_for(nnz, factors.out, factors.in);
    factors.values.emplace_back("rosa_S", std::move(sparse->values));
    return {config, std::move(factors.values), std::move(sparse->pattern)};
  }

  template <class T, class B>
  static void restore(Context<B>& ctx, Rosa<T, B>& layer, const std::optional<CsrPattern>& mask) {
    if (mask) layer.set_mask(ctx, *mask);
  }

  template <class T, class B>
  static void save(SaveJob<RosaFormat, T, B>& job, const MethodOptions& options) {
    const LoraLayers lora = lora_layers(job, [](const Rosa<T, B>& l) { return l.config().lora; });
    job.require_same("the forward mode (impl)", [&](std::size_t i) {
      return job.layers[i]->config().forward == job.layers.front()->config().forward;
    });
    const SafetensorsDtype index_dtype = index_dtype_for(job, options);
    PEFT_CHECK_ARG(options.spa_num_grads >= 1, "save_adapter: RosaSaveOptions::spa_num_grads is ",
                   options.spa_num_grads, ", expected >= 1");
    PEFT_CHECK_ARG(options.grad_acc_mode == "mean_squared" || options.grad_acc_mode == "mean",
                   "save_adapter: RosaSaveOptions::grad_acc_mode is '", options.grad_acc_mode,
                   "', expected 'mean_squared' or 'mean'");

    std::vector<detail::RosaSparseSnapshot<param_t<T>>> sparse;
    std::vector<double> densities;
    for (const auto* layer : job.layers) {
      sparse.emplace_back(job.ctx, *layer);
      densities.push_back(sparse.back().d);
    }
    const double d = detail::most_common(densities);
    const RosaPatternKeys keys = detail::rosa_make_patterns(job.modules, lora.ranks, densities,
                                                            lora.alphas, lora.r, d, lora.alpha);
    const RosaForward forward = job.layers.front()->config().forward;

    ConfigFields& f = job.fields;
    write_lora_fields(f, lora, keys.rank, keys.alpha);
    f["d"] = d;
    f["density_pattern"] = detail::pattern_object(keys.density, [](double v) { return v; });
    f["grad_acc_mode"] = options.grad_acc_mode;
    f["impl"] = forward == RosaForward::dense_add ? "sp_add"
                : forward == RosaForward::spmm    ? "spmm"
                                                  : "auto";
    f["loftq_config"] = nlohmann::ordered_json::object();
    f["mask_load_path"] = nullptr;
    f["mask_save_path"] = nullptr;
    f["megatron_config"] = nullptr;
    f["megatron_core"] = "megatron.core";
    if (index_dtype == SafetensorsDtype::I32) f[kRosaIndexDtypeKey] = "int32";
    // The reference has no fp64; it builds fp32 layers for any other name.
    f["rosa_dtype"] = job.dtype == SafetensorsDtype::BF16  ? "bf16"
                      : job.dtype == SafetensorsDtype::F16 ? "fp16"
                                                           : "fp32";
    f["schedule"] = detail::string_or_null(options.schedule);
    f["spa_num_grads"] = options.spa_num_grads;
    f["spa_store_transpose"] = true;
    f["terminate_after_mask_generation"] = false;

    for (std::size_t i = 0; i < job.layers.size(); ++i) {
      job.add_parameters(i);
      detail::write_rosa_sparse(job.writer, job.modules[i], sparse[i], job.dtype, index_dtype,
                                forward == RosaForward::spmm);  // spa_store_transpose
    }
  }

 private:
  /// I16 unless a layer is too large for it or the options ask for I32.
  template <class T, class B>
  static SafetensorsDtype index_dtype_for(const SaveJob<RosaFormat, T, B>& job,
                                          const MethodOptions& options) {
    bool wide = false;
    for (const auto* l : job.layers)
      wide = wide || l->out_features() > kRosaInt16DimensionLimit ||
             l->in_features() > kRosaInt16DimensionLimit;
    if (!options.index_dtype) return wide ? SafetensorsDtype::I32 : SafetensorsDtype::I16;
    PEFT_CHECK_ARG(*options.index_dtype == SafetensorsDtype::I16 ||
                       *options.index_dtype == SafetensorsDtype::I32,
                   "save_adapter: RosaSaveOptions::index_dtype is ",
                   to_string(*options.index_dtype), ", expected I16 or I32");
    PEFT_CHECK_ARG(!wide || *options.index_dtype == SafetensorsDtype::I32,
                   "save_adapter: a RoSA layer has a dimension above ", kRosaInt16DimensionLimit,
                   ", which int16 indices (the reference's format) cannot address; save with "
                   "RosaSaveOptions::index_dtype = I32 (or unset) to use peft-cpp's int32 "
                   "extension");
    return *options.index_dtype;
  }
};

}  // namespace peft
