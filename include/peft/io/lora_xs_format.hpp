#pragma once
// LoRA-XS checkpoints (peft_type LORA_XS), peft-cpp's own format: stock PEFT has no LoRA-XS, and
// the reference code writes its frozen factors and R into a LoRA file that stock PEFT cannot
// load. Here the config says how the frozen factors were made, and the weights hold R with or
// without them (LoraXsSaveOptions::factors):
//
//   adapter_config.json        {"peft_type": "LORA_XS", "r": 8, "lora_alpha": 16,
//                               "lora_dropout": 0.0, "fan_in_fan_out": false,
//                               "init_lora_xs": "gaussian", "init_std": 1e-05, "seed": 0,
//                               "frozen_factors": "stored" | "regenerated",
//                               "svd": {"algorithm": "randomized_range_finder", "version": 1,
//                                       "oversampling": 10, "power_iterations": 10, "seed": 0},
//                               ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_xs_R [r, r]
//                              base_model.model.<module>.lora_A.weight [r, in]   Σ_r V_rᵀ  (stored)
//                              base_model.model.<module>.lora_B.weight [out, r]  U_r       (stored)
//
// "stored": any reader can use the factors; loading runs no SVD. "regenerated": R alone (r²
// numbers per module); loading recomputes the factors from the base weights with the recorded
// SVD options, bit-identical to the saved layer's on the same backend, dtype and thread count,
// within rounding elsewhere; it needs the same base weights. All modules of a checkpoint share
// r, alpha, dropout, fan_in_fan_out, the init, the seed and the SVD options; the file's seed keys
// the loaded layers' dropout (LoadOptions::seed is not used). export_as_lora writes a plain PEFT
// LoRA checkpoint instead (lora_A = R Σ_r V_rᵀ, lora_B = U_r).

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "../adapters/lora_xs.hpp"
#include "../model/base_model.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "config_writer.hpp"
#include "layer_shape.hpp"
#include "module_tensors.hpp"

namespace peft {

/// The SVD that LORA_XS files name; a file with another name or version is refused.
inline constexpr std::string_view kLoraXsSvdAlgorithm = "randomized_range_finder";
inline constexpr std::int64_t kLoraXsSvdVersion = 1;

/// How a LORA_XS checkpoint holds the frozen factors.
enum class LoraXsFactorStorage {
  stored,       // lora_A.weight and lora_B.weight beside R: portable, loads without an SVD
  regenerated,  // R alone: recomputed from the base weights on load
};

/// LoRA-XS's own save options (save_adapter's method_options).
struct LoraXsSaveOptions {
  LoraXsFactorStorage factors = LoraXsFactorStorage::stored;
};

/// adapter_config.json of a LORA_XS checkpoint, parsed and checked.
struct LoraXsAdapterConfig {
  index_t r = 8;
  double lora_alpha = 16;
  double lora_dropout = 0;
  bool fan_in_fan_out = false;
  LoraXsInit init = LoraXsInit::gaussian;
  double init_std = 1e-5;
  std::uint64_t seed = 0;
  LoraXsFactorStorage factors = LoraXsFactorStorage::stored;
  SvdOptions svd = {};

  /// The layers' config: with stored factors, no SVD at construction (they are restored).
  LoraXsConfig layer_config() const {
    auto c = detail::low_rank_layer_config<LoraXsConfig>(*this);
    c.init = init;
    c.init_std = init_std;
    c.svd = svd;
    c.frozen = factors == LoraXsFactorStorage::stored ? LoraXsFrozen::later : LoraXsFrozen::svd;
    return c;
  }

  /// Parses the fields; `source` names the file in messages. Every field that the factors or R's
  /// meaning depend on is required.
  static LoraXsAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source,
                                       const LoadOptions& options = {}) {
    const ConfigReader in(j, source);
    in.expect_peft_type("LORA_XS");
    LoraXsAdapterConfig c;
    for (const char* key : {"r", "lora_alpha", "frozen_factors", "svd"})
      if (in.given(key) == nullptr) in.fail(key, " is missing");
    in.read_positive("r", c.r);
    in.read("lora_alpha", c.lora_alpha);
    if (!std::isfinite(c.lora_alpha)) in.fail("lora_alpha must be finite");
    in.read_fraction("lora_dropout", c.lora_dropout, false);
    in.read("fan_in_fan_out", c.fan_in_fan_out);
    if (options.fan_in_fan_out) c.fan_in_fan_out = *options.fan_in_fan_out;
    in.read_choice("init_lora_xs", c.init,
                   {{"gaussian", LoraXsInit::gaussian}, {"zeros", LoraXsInit::zeros}});
    in.read("init_std", c.init_std);
    if (!(std::isfinite(c.init_std) && c.init_std >= 0))
      in.fail("init_std must be a finite number >= 0, got ", c.init_std);
    if (const auto* seed = in.given("seed")) c.seed = unsigned_integer(in, "seed", *seed);
    in.read_choice("frozen_factors", c.factors,
                   {{"stored", LoraXsFactorStorage::stored},
                    {"regenerated", LoraXsFactorStorage::regenerated}});
    if (const auto* bias = in.given("bias"); bias && !(bias->is_string() && *bias == "none"))
      in.fail("bias ", bias->dump(), " is not supported (only \"none\")");
    in.refuse_set({"modules_to_save"}, "LoRA-XS");

    const auto& s = *in.given("svd");
    if (!s.is_object()) in.fail("svd must be an object, got ", s.dump());
    const auto field = [&](const char* key) -> const nlohmann::ordered_json& {
      if (!s.contains(key)) in.fail("svd.", key, " is missing");
      return s[key];
    };
    const auto& algorithm = field("algorithm");
    const auto& version = field("version");
    if (!algorithm.is_string() || algorithm.get<std::string>() != kLoraXsSvdAlgorithm ||
        !version.is_number_integer() || version.get<std::int64_t>() != kLoraXsSvdVersion)
      in.fail("svd ", algorithm.dump(), " version ", version.dump(),
              " is not supported: peft-cpp computes LoRA-XS factors with \"", kLoraXsSvdAlgorithm,
              "\" version ", kLoraXsSvdVersion);
    constexpr std::uint64_t kMaxCount = std::uint64_t{1} << 31;
    const std::uint64_t oversampling =
        unsigned_integer(in, "svd.oversampling", field("oversampling"));
    const std::uint64_t iterations =
        unsigned_integer(in, "svd.power_iterations", field("power_iterations"));
    if (oversampling > kMaxCount || iterations > kMaxCount)
      in.fail("svd.oversampling and svd.power_iterations must be at most ", kMaxCount);
    c.svd = SvdOptions{.oversampling = static_cast<index_t>(oversampling),
                       .power_iterations = static_cast<index_t>(iterations),
                       .seed = unsigned_integer(in, "svd.seed", field("seed"))};
    return c;
  }

 private:
  static std::uint64_t unsigned_integer(const ConfigReader& in, const char* key,
                                        const nlohmann::ordered_json& v) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
      in.fail(key, " must be an integer in [0, 2^64), got ", v.dump());
    return v.get<std::uint64_t>();
  }
};

/// The frozen factors of one module as a file holds them (host memory).
template <class P>
struct LoraXsStoredFactors {
  Matrix<P, Cpu> a;  // Σ_r V_rᵀ [r, in]
  Matrix<P, Cpu> b;  // U_r [out, r]
};

struct LoraXsFormat : FormatTypes<LoraXs, LoraXsAdapterConfig, LoraXsSaveOptions> {
  static constexpr std::string_view peft_type = "LORA_XS", name = "LoRA-XS";
  static constexpr ParameterKey parameter_keys[] = {{"lora_xs_R", "lora_xs_R"}};
  static constexpr std::array<std::string_view, 2> extra_keys = {"lora_A.weight", "lora_B.weight"};
  static constexpr std::string_view unsupported =
      "a LoRA-XS checkpoint holds lora_xs_R and, when stored, lora_A.weight and lora_B.weight";

  template <class T, class B>
  static LoadedModule<param_t<T>, LoraXsConfig, std::optional<LoraXsStoredFactors<param_t<T>>>>
  read_module(const FileConfig& file, const ModuleSource& src, const BaseLinear<T, B>& base,
              const LoadOptions&) {
    using P = param_t<T>;
    const detail::LayerFeatures features =
        detail::checked_layer_features(src, base, file.fan_in_fan_out);
    const index_t in = features.in, out = features.out;
    const index_t r = file.r;
    if (r > std::min(in, out))
      src.fail("r = ", r, " exceeds min(in_features, out_features) = ", std::min(in, out),
               " of the base weight ", shape_string(base.weight));
    const auto read = [&](std::string_view suffix, index_t rows, index_t cols, const char* what) {
      const SafetensorsTensorInfo* t = src.tensors.find(suffix);
      if (t == nullptr) src.fail("it has no ", suffix, " (", what, ")");
      if (t->shape != std::vector<index_t>{rows, cols})
        src.fail(suffix, " is ", SafetensorsReader::shape_text(t->shape), ", expected [", rows,
                 ", ", cols, "] (", what, ")");
      Matrix<P, Cpu> m(rows, cols);
      src.reader.read_into(t->name, m.view());
      for (index_t i = 0; i < m.size(); ++i)
        if (!std::isfinite(static_cast<double>(m.data()[i])))
          src.fail(suffix, " holds a non-finite value at element ", i);
      return m;
    };
    LoadedModule<P, LoraXsConfig, std::optional<LoraXsStoredFactors<P>>> loaded{
        file.layer_config()};
    loaded.values.emplace_back("lora_xs_R", read("lora_xs_R", r, r, "R, r x r"));
    if (file.factors == LoraXsFactorStorage::stored) {
      loaded.extra = LoraXsStoredFactors<P>{
          read("lora_A.weight", r, in, "the frozen Σ_r V_rᵀ, r x in_features"),
          read("lora_B.weight", out, r, "the frozen U_r, out_features x r")};
    } else if (src.tensors.find("lora_A.weight") != nullptr ||
               src.tensors.find("lora_B.weight") != nullptr) {
      src.fail(
          "frozen_factors is \"regenerated\", yet the file holds lora_A.weight or "
          "lora_B.weight");
    }
    return loaded;
  }

  /// Stored factors into the layer (built without an SVD), before R is uploaded.
  template <class T, class B>
  static void restore(Context<B>& ctx, LoraXs<T, B>& layer,
                      const std::optional<LoraXsStoredFactors<param_t<T>>>& factors) {
    if (!factors) return;
    using P = param_t<T>;
    Matrix<P, B> a(factors->a.rows(), factors->a.cols()), b(factors->b.rows(), factors->b.cols());
    upload(ctx, as_const(factors->a.view()), a.view());
    upload(ctx, as_const(factors->b.view()), b.view());
    layer.set_frozen_factors(ctx,
                             LoraXsFrozenFactors<P, B>(as_const(a.view()), as_const(b.view())));
  }

  template <class T, class B>
  static void save(SaveJob<LoraXsFormat, T, B>& job, const MethodOptions& options) {
    const LoraXsConfig& c = job.layers.front()->config();
    job.require_same("r, alpha, dropout, fan_in_fan_out, init, init_std, seed or the SVD options",
                     [&](std::size_t i) {
                       const LoraXsConfig& o = job.layers[i]->config();
                       return o.r == c.r && o.alpha == c.alpha && o.dropout == c.dropout &&
                              o.fan_in_fan_out == c.fan_in_fan_out && o.init == c.init &&
                              o.init_std == c.init_std && o.seed == c.seed &&
                              o.svd.oversampling == c.svd.oversampling &&
                              o.svd.power_iterations == c.svd.power_iterations &&
                              o.svd.seed == c.svd.seed;
                     });
    const bool stored = options.factors == LoraXsFactorStorage::stored;
    if (!stored)
      for (std::size_t i = 0; i < job.layers.size(); ++i)
        PEFT_CHECK_ARG(job.layers[i]->frozen_from_svd(), "save_adapter: module '", job.modules[i],
                       "' holds frozen factors that were given, not computed from its base "
                       "weight: they cannot be regenerated on load (save them: "
                       "LoraXsFactorStorage::stored)");
    ConfigFields& f = job.fields;
    f["bias"] = "none";
    f["fan_in_fan_out"] = c.fan_in_fan_out;
    f["frozen_factors"] = stored ? "stored" : "regenerated";
    f["init_lora_xs"] = c.init == LoraXsInit::gaussian ? "gaussian" : "zeros";
    f["init_std"] = detail::json_real(c.init_std);
    f["lora_alpha"] = detail::json_number(c.alpha);
    f["lora_dropout"] = detail::json_real(c.dropout);
    f["modules_to_save"] = nullptr;
    f["r"] = c.r;
    f["seed"] = c.seed;
    f["svd"] = nlohmann::ordered_json{{"algorithm", kLoraXsSvdAlgorithm},
                                      {"version", kLoraXsSvdVersion},
                                      {"oversampling", c.svd.oversampling},
                                      {"power_iterations", c.svd.power_iterations},
                                      {"seed", c.svd.seed}};
    for (std::size_t i = 0; i < job.layers.size(); ++i) {
      job.add_parameters(i);
      if (!stored) continue;
      const auto& layer = *job.layers[i];
      job.writer.add(tensor_key(job.modules[i], "lora_A.weight"),
                     as_const(detail::host_copy(job.ctx, layer.frozen_a()).view()), job.dtype);
      job.writer.add(tensor_key(job.modules[i], "lora_B.weight"),
                     as_const(detail::host_copy(job.ctx, layer.frozen_b()).view()), job.dtype);
    }
  }
};

}  // namespace peft
