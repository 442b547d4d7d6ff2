#pragma once
// Hugging Face PEFT's AdaLoRA checkpoint (peft_type ADALORA), as save_pretrained writes it:
//
//   adapter_config.json        {"peft_type": "ADALORA", "init_r": 12, "target_r": 8,
//                               "lora_alpha": 8, "tinit": 0, "tfinal": 0, "deltaT": 1,
//                               "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5,
//                               "total_step": 1000,
//                               "rank_pattern": {"<module>.lora_E": [true, false, ...]}, ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A [k, in]
//                              base_model.model.<module>.lora_E [k, 1]
//                              base_model.model.<module>.lora_B [out, k]
//
// (no ".weight": the factors are parameters, not modules). PEFT prunes each module to its kept
// ranks when it saves: rank_pattern lists, per module, which of its init_r ranks are kept (k of
// them); a module without an entry keeps all init_r. The scaling still divides by init_r
// (PEFT's ranknum, which it does not save; a file that holds a <module>.ranknum must agree).
// All modules share init_r, lora_alpha, lora_dropout, fan_in_fan_out and init_lora_weights.
//
// Saving: the pattern comes from the allocator (AdaLoraSaveOptions::rank_pattern =
// RankAllocator::rank_pattern(ctx)), over each layer's current ranks (or, for a compacted
// layer, over its initial ranks); without one every current rank is written. The allocator's
// schedule goes into the config from AdaLoraSaveOptions::allocator. Its statistics, which PEFT
// does not save, go to a file of their own (io/adalora_allocator_state.hpp).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../adapters/adalora.hpp"
#include "../model/base_model.hpp"
#include "../train/rank_allocator.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "config_writer.hpp"
#include "layer_shape.hpp"
#include "module_tensors.hpp"

namespace peft {

/// The kept ranks of each layer by name: RankAllocator::rank_pattern's form.
using AdaLoraRankPattern = std::vector<std::pair<std::string, std::vector<bool>>>;

/// AdaLoRA's own save options (save_adapter's method_options).
struct AdaLoraSaveOptions {
  /// Which ranks each module keeps (RankAllocator::rank_pattern(ctx), its names the set's
  /// module names): the file holds those only, as PEFT's does. Modules not listed keep all.
  AdaLoraRankPattern rank_pattern = {};
  /// The schedule recorded in the config (the allocator's options()). PEFT refuses a config
  /// without total_step: when none is given (total_step 0), 1 is written.
  RankAllocatorOptions allocator = {};
  double orth_reg_weight = 0.5;
};

/// adapter_config.json of an ADALORA checkpoint (PEFT's AdaLoraConfig), parsed and checked.
struct AdaLoraAdapterConfig {
  index_t init_r = 12;
  double lora_alpha = 8;
  double lora_dropout = 0;
  bool fan_in_fan_out = false;
  bool init_lora_weights = true;
  RankAllocatorOptions allocator = {};  // total_step 0 when the file has none
  double orth_reg_weight = 0.5;
  /// The kept ranks of the modules rank_pattern lists (init_r entries each), by module name.
  AdaLoraRankPattern rank_pattern;

  /// The kept ranks of `module`'s init_r, or null when rank_pattern does not list it.
  const std::vector<bool>* pattern_of(std::string_view module) const {
    for (const auto& [name, keep] : rank_pattern)
      if (name == module) return &keep;
    return nullptr;
  }

  /// The layer of `module`: its kept ranks, dividing by init_r.
  AdaLoraConfig for_module(std::string_view module, std::uint64_t seed) const {
    index_t kept = init_r;
    if (const auto* keep = pattern_of(module))
      kept = index_t(std::count(keep->begin(), keep->end(), true));
    return AdaLoraConfig{.init_r = kept,
                         .alpha = lora_alpha,
                         .dropout = lora_dropout,
                         .fan_in_fan_out = fan_in_fan_out,
                         .init_weights = init_lora_weights,
                         .seed = seed,
                         .ranknum = init_r};
  }

  static AdaLoraAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source,
                                        const LoadOptions& options = {}) {
    const ConfigReader in(j, source);
    in.expect_peft_type("ADALORA");
    AdaLoraAdapterConfig c;
    in.read_positive("init_r", c.init_r);
    in.read("lora_alpha", c.lora_alpha);
    if (!std::isfinite(c.lora_alpha)) in.fail("lora_alpha must be finite");
    in.read_fraction("lora_dropout", c.lora_dropout, false);
    in.read("fan_in_fan_out", c.fan_in_fan_out);
    if (options.fan_in_fan_out) c.fan_in_fan_out = *options.fan_in_fan_out;
    if (const auto* init = in.given("init_lora_weights")) {
      if (!init->is_boolean())
        in.fail("init_lora_weights must be true or false, got ", init->dump());
      c.init_lora_weights = init->get<bool>();
    }
    if (const auto* bias = in.given("bias"); bias && !(bias->is_string() && *bias == "none"))
      in.fail("bias ", bias->dump(), " is not supported (only \"none\")");
    in.refuse_set({"modules_to_save", "use_dora", "loftq_config", "layer_replication"}, "AdaLoRA");
    read_schedule(in, c);
    read_rank_pattern(in, c);
    return c;
  }

 private:
  static void read_schedule(const ConfigReader& in, AdaLoraAdapterConfig& c) {
    RankAllocatorOptions& a = c.allocator;
    a.total_step = 0;
    const auto count = [&](const char* key, auto& out, std::int64_t min) {
      if (const auto* v = in.given(key)) {
        if (!v->is_number_integer() || v->get<std::int64_t>() < min)
          in.fail(key, " must be an integer >= ", min, ", got ", v->dump());
        out = v->get<std::int64_t>();
      }
    };
    count("target_r", a.target_r, 0);
    count("tinit", a.tinit, 0);
    count("tfinal", a.tfinal, 0);
    count("deltaT", a.delta_t, 1);
    count("total_step", a.total_step, 1);
    for (auto [key, beta] : {std::pair{"beta1", &a.beta1}, std::pair{"beta2", &a.beta2}}) {
      in.read(key, *beta);
      if (!(*beta > 0 && *beta < 1)) in.fail(key, " must be in (0, 1), got ", *beta);
    }
    in.read("orth_reg_weight", c.orth_reg_weight);
    if (!(std::isfinite(c.orth_reg_weight) && c.orth_reg_weight >= 0))
      in.fail("orth_reg_weight must be a finite number >= 0, got ", c.orth_reg_weight);
    if (a.total_step > 0 && !(a.tinit < a.total_step - a.tfinal))
      in.fail("tinit (", a.tinit, ") must be below total_step - tfinal (", a.total_step, " - ",
              a.tfinal, ")");
  }

  /// PEFT's keys are "<module>.lora_E" (".lora_E.default" before it strips the adapter name)
  /// and its values a list of init_r booleans.
  static void read_rank_pattern(const ConfigReader& in, AdaLoraAdapterConfig& c) {
    in.read_patterns(
        "rank_pattern", "a list of booleans (init_r of them)",
        [&](const auto& v) {
          if (!v.is_array() || index_t(v.size()) != c.init_r) return false;
          for (const auto& b : v)
            if (!b.is_boolean()) return false;
          return true;
        },
        [&](const std::string& key, const auto& v) {
          std::string_view name = key;
          for (std::string_view suffix : {".lora_E.default", ".lora_E"})
            if (name.size() > suffix.size() && name.ends_with(suffix)) {
              name.remove_suffix(suffix.size());
              break;
            }
          PEFT_CHECK(name.size() < key.size(), ErrorKind::io, "key '", key,
                     "' is not <module>.lora_E");
          PEFT_CHECK(c.pattern_of(name) == nullptr, ErrorKind::io, "module '", name,
                     "' is listed twice");
          std::vector<bool> keep;
          for (const auto& b : v) keep.push_back(b.template get<bool>());
          c.rank_pattern.emplace_back(std::string(name), std::move(keep));
        });
  }
};

struct AdaLoraFormat : FormatTypes<AdaLora, AdaLoraAdapterConfig, AdaLoraSaveOptions> {
  static constexpr std::string_view peft_type = "ADALORA", name = "AdaLoRA";
  static constexpr ParameterKey parameter_keys[] = {
      {"lora_A", "lora_A"}, {"lora_E", "lora_E"}, {"lora_B", "lora_B"}};
  static constexpr std::array<std::string_view, 1> extra_keys = {"ranknum"};
  static constexpr std::string_view unsupported =
      "an AdaLoRA checkpoint holds lora_A, lora_E, lora_B and optionally ranknum per module; "
      "embedding and convolution AdaLoRA, biases and modules_to_save are not supported";

  template <class T, class B>
  static LoadedModule<param_t<T>, AdaLoraConfig> read_module(const FileConfig& file,
                                                             const ModuleSource& src,
                                                             const BaseLinear<T, B>& base,
                                                             const LoadOptions& options) {
    using P = param_t<T>;
    const MatrixView<const T, B>& w = base.weight;
    const detail::LayerFeatures features =
        detail::checked_layer_features(src, base, file.fan_in_fan_out);
    const index_t in = features.in, out = features.out;
    for (const auto& [listed, keep] : file.rank_pattern)
      if (!src.reader.contains(tensor_key(listed, "lora_E")))
        throw Error(ErrorKind::io, detail::concat(src.where, ": rank_pattern lists module '",
                                                  listed, "', which the weights do not hold"));
    const AdaLoraConfig config = file.for_module(src.module(), options.seed);
    const index_t k = config.init_r;
    const std::string rank_source =
        file.pattern_of(src.module())
            ? detail::concat("rank_pattern keeps ", k, " of init_r = ", file.init_r)
            : detail::concat("init_r = ", file.init_r, " (no rank_pattern entry)");
    if (k == 0)
      src.fail("rank_pattern keeps none of its ", file.init_r,
               " ranks; peft-cpp's AdaLora needs at least one (drop the module from the adapter)");
    const auto read = [&](std::string_view suffix, index_t rows, index_t cols) {
      const SafetensorsTensorInfo* t = src.tensors.find(suffix);
      if (t == nullptr) src.fail("it has no ", suffix);
      if (t->shape != std::vector<index_t>{rows, cols})
        src.fail(suffix, " is ", SafetensorsReader::shape_text(t->shape), ", expected [", rows,
                 ", ", cols, "] (", rank_source, "; the base weight is ", shape_string(w),
                 file.fan_in_fan_out ? " [in, out])" : " [out, in])");
      Matrix<P, Cpu> m(rows, cols);
      src.reader.read_into(t->name, m.view());
      for (index_t i = 0; i < m.size(); ++i)
        if (!std::isfinite(static_cast<double>(m.data()[i])))
          src.fail(suffix, " holds a non-finite value at element ", i);
      return m;
    };
    LoadedModule<P, AdaLoraConfig> loaded{config};
    loaded.values.emplace_back("lora_A", read("lora_A", k, in));
    loaded.values.emplace_back("lora_E", read("lora_E", k, 1));
    loaded.values.emplace_back("lora_B", read("lora_B", out, k));
    if (const SafetensorsTensorInfo* t = src.tensors.find("ranknum")) {
      if (t->numel() != 1 || t->shape.size() > 1)
        src.fail("ranknum is ", SafetensorsReader::shape_text(t->shape), ", expected [1]");
      const double ranknum = src.reader.read_matrix<double>(t->name).data()[0];
      if (ranknum != double(file.init_r))
        src.fail("ranknum is ", ranknum, ", expected init_r = ", file.init_r,
                 " (the scaling divides by the initial rank)");
    }
    return loaded;
  }

  template <class T, class B>
  static void save(SaveJob<AdaLoraFormat, T, B>& job, const MethodOptions& options) {
    using P = param_t<T>;
    const AdaLoraConfig& c = job.layers.front()->config();
    job.require_same(
        "lora_alpha (the scaling), dropout, fan_in_fan_out, init_weights or the "
        "initial rank (ranknum)",
        [&](std::size_t i) {
          const AdaLoraConfig& o = job.layers[i]->config();
          return job.layers[i]->ranknum() == job.layers.front()->ranknum() &&
                 o.scaling() == c.scaling() && o.dropout == c.dropout &&
                 o.fan_in_fan_out == c.fan_in_fan_out && o.init_weights == c.init_weights;
        });
    for (const auto& [name, keep] : options.rank_pattern) {
      (void)keep;
      PEFT_CHECK_ARG(std::find(job.modules.begin(), job.modules.end(), name) != job.modules.end(),
                     "save_adapter: AdaLoraSaveOptions::rank_pattern names '", name,
                     "', which is not a module of the set");
    }
    const index_t init_r = c.effective_ranknum();
    const RankAllocatorOptions& a = options.allocator;
    const std::int64_t total_step = a.total_step > 0 ? a.total_step : 1;
    PEFT_CHECK_ARG(a.tinit < total_step - a.tfinal,
                   "save_adapter: AdaLoraSaveOptions::allocator: ", "tinit (", a.tinit,
                   ") must be below total_step - tfinal (", total_step, " - ", a.tfinal, ")");
    PEFT_CHECK_ARG(std::isfinite(options.orth_reg_weight) && options.orth_reg_weight >= 0,
                   "save_adapter: AdaLoraSaveOptions::orth_reg_weight is ", options.orth_reg_weight,
                   ", expected a finite value >= 0");

    nlohmann::ordered_json pattern = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < job.layers.size(); ++i) {
      auto& layer = *job.layers[i];
      const std::string& module = job.modules[i];
      const index_t r = layer.rank();
      // kept: which current ranks are written; peft: the entry over the initial ranks.
      std::vector<index_t> kept;
      std::vector<bool> peft(std::size_t(init_r), false);
      const std::vector<bool>* given = nullptr;
      for (const auto& [name, keep] : options.rank_pattern)
        if (name == module) given = &keep;
      const index_t given_kept =
          given ? index_t(std::count(given->begin(), given->end(), true)) : r;
      if (given && index_t(given->size()) == r) {  // over the current ranks
        for (index_t k = 0; k < r; ++k)
          if ((*given)[std::size_t(k)]) kept.push_back(k);
        for (std::size_t k = 0; k < kept.size(); ++k)  // a layer below init_r: first positions
          peft[std::size_t(r == init_r ? kept[k] : index_t(k))] = true;
      } else if (given && index_t(given->size()) == init_r && given_kept == r) {  // compacted
        for (index_t k = 0; k < r; ++k) kept.push_back(k);
        peft = *given;
      } else {
        PEFT_CHECK_ARG(!given, "save_adapter: AdaLoraSaveOptions::rank_pattern gives module '",
                       module, "' ", given ? given->size() : 0, " ranks (", given_kept,
                       " kept); its layer has ", r, " of initial ", init_r);
        for (index_t k = 0; k < r; ++k) kept.push_back(k);
        for (index_t k = 0; k < r; ++k) peft[std::size_t(k)] = true;
      }
      PEFT_CHECK_ARG(!kept.empty(), "save_adapter: module '", module,
                     "' keeps no rank (peft-cpp cannot load such a module back)");
      if (index_t(kept.size()) != init_r) pattern[module + ".lora_E"] = peft;

      auto params = layer.parameters();  // lora_A, lora_E, lora_B
      for (std::size_t k = 0; k < params.size(); ++k) {
        const auto host = detail::host_copy(job.ctx, params[k].value);
        const bool columns = params[k].name == "lora_B";
        Matrix<P, Cpu> pruned(columns ? host.rows() : index_t(kept.size()),
                              columns ? index_t(kept.size()) : host.cols());
        for (index_t i2 = 0; i2 < pruned.rows(); ++i2)
          for (index_t j = 0; j < pruned.cols(); ++j)
            pruned.view()(i2, j) = columns ? host.view()(i2, kept[std::size_t(j)])
                                           : host.view()(kept[std::size_t(i2)], j);
        job.writer.add(tensor_key(module, params[k].name), as_const(pruned.view()), job.dtype);
      }
    }

    ConfigFields& f = job.fields;
    f["beta1"] = a.beta1;
    f["beta2"] = a.beta2;
    f["bias"] = "none";
    f["deltaT"] = a.delta_t;
    f["fan_in_fan_out"] = c.fan_in_fan_out;
    f["init_lora_weights"] = c.init_weights;
    f["init_r"] = init_r;
    f["layers_pattern"] = nullptr;
    f["layers_to_transform"] = nullptr;
    f["lora_alpha"] = detail::json_number(c.alpha > 0 ? c.alpha : c.scaling());
    f["lora_dropout"] = detail::json_real(c.dropout);
    f["modules_to_save"] = nullptr;
    f["orth_reg_weight"] = options.orth_reg_weight;
    f["r"] = 8;  // PEFT's LoraConfig default, which AdaLoRA ignores (and warns about otherwise)
    f["rank_pattern"] = pattern.empty() ? nlohmann::ordered_json(nullptr) : pattern;
    f["target_r"] = a.target_r;
    f["tfinal"] = a.tfinal;
    f["tinit"] = a.tinit;
    f["total_step"] = total_step;
    f["use_dora"] = false;
    f["use_rslora"] = false;
  }
};

}  // namespace peft
