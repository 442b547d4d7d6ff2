#pragma once
// NOLA checkpoints (peft_type NOLA), peft-cpp's own format: there is no NOLA in Hugging Face
// PEFT, and the reference code saves the dense A0 and draws its bases from the framework's
// generators. Ours is self-describing: adapter_config.json holds everything that regenerates
// A0 and the bases (the generator, its version, the counter layout, the seed and each module's
// stream and shape), and the weights hold the coefficients only:
//
//   adapter_config.json        {"peft_type": "NOLA", "r": 8, "lora_alpha": 8,
//                               "num_basis_a": 512, "num_basis_b": 512, "lora_dropout": 0.0,
//                               "fan_in_fan_out": false, "seed": 0,
//                               "generator": {"name": "philox4x32-10", "version": 1, ...},
//                               "modules": {"<module>": {"basis_stream_id": 123,
//                                           "in_features": 4096, "out_features": 4096}, ...},
//                               ...}
//   adapter_model.safetensors  base_model.model.<module>.nola_alpha [num_basis_a]
//                              base_model.model.<module>.nola_beta  [num_basis_b]
//
// All modules of a checkpoint share r, alpha, the basis counts, dropout, fan_in_fan_out and the
// seed (the file's seed keys the loaded layers; LoadOptions::seed is not used). Loading rebuilds
// each layer with its recorded stream, so the bases are the saved ones whatever stream_id the
// loading set would give the module, and refuses a base layer whose shape differs from the recorded
// one (its bases would differ). io/lora_export.hpp writes the generated factors as a plain PEFT
// LoRA checkpoint instead.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../adapters/nola.hpp"
#include "../model/base_model.hpp"
#include "adapter_format.hpp"
#include "config_reader.hpp"
#include "config_writer.hpp"
#include "layer_shape.hpp"
#include "module_tensors.hpp"

namespace peft {

/// The generator NOLA checkpoints name; a file with another name or version is refused.
inline constexpr std::string_view kNolaGenerator = "philox4x32-10";
inline constexpr std::int64_t kNolaGeneratorVersion = 1;

/// What adapter_config.json records of one module.
struct NolaModuleRecord {
  std::uint32_t basis_stream_id = 0;
  index_t in_features = 0;
  index_t out_features = 0;
};

/// adapter_config.json of a NOLA checkpoint, parsed and checked.
struct NolaAdapterConfig {
  index_t r = 8;
  double lora_alpha = 8;
  index_t num_basis_a = 512;
  index_t num_basis_b = 512;
  double lora_dropout = 0;
  bool fan_in_fan_out = false;
  std::uint64_t seed = 0;
  std::vector<std::pair<std::string, NolaModuleRecord>> modules;

  const NolaModuleRecord* find(std::string_view module) const {
    for (const auto& [name, record] : modules)
      if (name == module) return &record;
    return nullptr;
  }

  NolaConfig layer_config(std::uint32_t basis_stream_id) const {
    auto c = detail::low_rank_layer_config<NolaConfig>(*this);
    c.num_basis_a = num_basis_a;
    c.num_basis_b = num_basis_b;
    c.basis_stream_id = basis_stream_id;
    return c;
  }

  /// Parses the fields; `source` names the file in messages. Every field that the bases depend
  /// on is required.
  static NolaAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source,
                                     const LoadOptions& options = {}) {
    const ConfigReader in(j, source);
    in.expect_peft_type("NOLA");
    NolaAdapterConfig c;
    for (const char* key :
         {"r", "lora_alpha", "num_basis_a", "num_basis_b", "seed", "generator", "modules"})
      if (in.given(key) == nullptr)
        in.fail(key, " is missing (NOLA needs it to regenerate the bases)");
    in.read_positive("r", c.r);
    in.read("lora_alpha", c.lora_alpha);
    in.read_positive("num_basis_a", c.num_basis_a);
    in.read_positive("num_basis_b", c.num_basis_b);
    in.read_fraction("lora_dropout", c.lora_dropout, false);
    in.read("fan_in_fan_out", c.fan_in_fan_out);
    if (options.fan_in_fan_out) c.fan_in_fan_out = *options.fan_in_fan_out;
    constexpr std::int64_t kMaxBases = 0xFFFFFFFF;
    if (c.num_basis_a > kMaxBases || c.num_basis_b > kMaxBases)
      in.fail("num_basis_a and num_basis_b must be at most ", kMaxBases, ", got ", c.num_basis_a,
              " and ", c.num_basis_b);
    if (const auto* bias = in.given("bias"); bias && !(bias->is_string() && *bias == "none"))
      in.fail("bias ", bias->dump(), " is not supported (only \"none\")");
    in.refuse_set({"modules_to_save"}, "NOLA");

    const auto& seed = *in.given("seed");
    if (!seed.is_number_unsigned() && !(seed.is_number_integer() && seed.get<std::int64_t>() >= 0))
      in.fail("seed must be an integer in [0, 2^64), got ", seed.dump());
    c.seed = seed.get<std::uint64_t>();

    const auto& g = *in.given("generator");
    const auto* name = g.is_object() && g.contains("name") ? &g["name"] : nullptr;
    const auto* version = g.is_object() && g.contains("version") ? &g["version"] : nullptr;
    if (name == nullptr || !name->is_string() || version == nullptr ||
        !version->is_number_integer())
      in.fail("generator must be an object with a name and an integer version, got ", g.dump());
    if (name->get<std::string>() != kNolaGenerator ||
        version->get<std::int64_t>() != kNolaGeneratorVersion)
      in.fail("generator ", name->dump(), " version ", version->dump(),
              " is not supported: peft-cpp regenerates NOLA bases with \"", kNolaGenerator,
              "\" version ", kNolaGeneratorVersion);

    const auto& m = *in.given("modules");
    if (!m.is_object()) in.fail("modules must be an object, got ", m.dump());
    for (const auto& item : m.items()) {
      // Named references, not a structured binding: clang before 16 cannot capture one.
      const std::string& module = item.key();
      const auto& record = item.value();
      const auto field = [&](const char* key, std::int64_t max) -> std::int64_t {
        const auto* v = record.is_object() && record.contains(key) ? &record[key] : nullptr;
        if (v == nullptr || !v->is_number_integer() || v->get<std::int64_t>() < 0 ||
            v->get<std::int64_t>() > max)
          in.fail("modules['", module, "'].", key, " must be an integer in [0, ", max, "], got ",
                  v ? v->dump() : "nothing");
        return v->get<std::int64_t>();
      };
      NolaModuleRecord r;
      r.basis_stream_id = static_cast<std::uint32_t>(field("basis_stream_id", 0xFFFFFFFF));
      r.in_features = field("in_features", std::int64_t{1} << 40);
      r.out_features = field("out_features", std::int64_t{1} << 40);
      c.modules.emplace_back(module, r);
    }
    return c;
  }
};

struct NolaFormat : FormatTypes<Nola, NolaAdapterConfig> {
  static constexpr std::string_view peft_type = "NOLA", name = "NOLA";
  static constexpr ParameterKey parameter_keys[] = {{"nola_alpha", "nola_alpha"},
                                                    {"nola_beta", "nola_beta"}};
  static constexpr std::array<std::string_view, 0> extra_keys = {};
  static constexpr std::string_view unsupported =
      "a NOLA checkpoint holds nola_alpha and nola_beta only";

  template <class T, class B>
  static LoadedModule<param_t<T>, NolaConfig> read_module(const FileConfig& file,
                                                          const ModuleSource& src,
                                                          const BaseLinear<T, B>& base,
                                                          const LoadOptions&) {
    using P = param_t<T>;
    const NolaModuleRecord* record = file.find(src.module());
    if (record == nullptr)
      src.fail("adapter_config.json's modules has no entry for it (its basis stream and shape)");
    const detail::LayerFeatures features =
        detail::checked_layer_features(src, base, file.fan_in_fan_out);
    const index_t in = features.in, out = features.out;
    if (in != record->in_features || out != record->out_features)
      src.fail("the base weight is ", shape_string(base.weight),
               file.fan_in_fan_out ? " [in, out]" : " [out, in]",
               ", the adapter was trained on in_features ", record->in_features,
               " and out_features ", record->out_features, " (its bases depend on the shape)");
    LoadedModule<P, NolaConfig> loaded{file.layer_config(record->basis_stream_id)};
    for (const ParameterKey& key : parameter_keys) {
      const index_t k = key.parameter == "nola_alpha" ? file.num_basis_a : file.num_basis_b;
      const SafetensorsTensorInfo* t = src.tensors.find(key.suffix);
      if (t == nullptr) src.fail("it has no ", key.suffix);
      const bool vector = (t->shape.size() == 1 && t->shape[0] == k) ||
                          (t->shape.size() == 2 && t->shape[0] == k && t->shape[1] == 1);
      if (!vector)
        src.fail(key.suffix, " is ", SafetensorsReader::shape_text(t->shape), ", expected [", k,
                 "] (", key.parameter == "nola_alpha" ? "num_basis_a" : "num_basis_b", ")");
      Matrix<P, Cpu> value(k, 1);
      src.reader.read_into(
          t->name, t->shape.size() == 1 ? MatrixView<P, Cpu>(value.data(), 1, k) : value.view());
      loaded.values.emplace_back(std::string(key.parameter), std::move(value));
    }
    return loaded;
  }

  template <class T, class B>
  static void save(SaveJob<NolaFormat, T, B>& job, const MethodOptions&) {
    const NolaConfig& c = job.layers.front()->config();
    job.require_same("r, alpha, num_basis_a, num_basis_b, dropout, fan_in_fan_out or seed",
                     [&](std::size_t i) {
                       const NolaConfig& o = job.layers[i]->config();
                       return o.r == c.r && o.alpha == c.alpha && o.num_basis_a == c.num_basis_a &&
                              o.num_basis_b == c.num_basis_b && o.dropout == c.dropout &&
                              o.fan_in_fan_out == c.fan_in_fan_out && o.seed == c.seed;
                     });
    ConfigFields& f = job.fields;
    f["bias"] = "none";
    f["fan_in_fan_out"] = c.fan_in_fan_out;
    f["generator"] = generator_description();
    f["lora_alpha"] = detail::json_number(c.alpha);
    f["lora_dropout"] = detail::json_real(c.dropout);
    f["modules_to_save"] = nullptr;
    f["num_basis_a"] = c.num_basis_a;
    f["num_basis_b"] = c.num_basis_b;
    f["r"] = c.r;
    f["seed"] = c.seed;
    nlohmann::ordered_json modules = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < job.layers.size(); ++i) {
      const auto& layer = *job.layers[i];
      modules[job.modules[i]] = {{"basis_stream_id", layer.basis_stream_id()},
                                 {"in_features", layer.in_features()},
                                 {"out_features", layer.out_features()}};
      auto params = job.layers[i]->parameters();
      for (const ParameterKey& key : parameter_keys)
        for (const auto& p : params)
          if (p.name == key.parameter)
            job.writer.add(tensor_key(job.modules[i], key.suffix),
                           as_const(detail::host_copy(job.ctx, p.value).view()), job.dtype,
                           std::vector<index_t>{p.value.size()});
    }
    f["modules"] = std::move(modules);
  }

  /// Everything another implementation needs to draw the same A0 and bases.
  static nlohmann::ordered_json generator_description() {
    using Json = nlohmann::ordered_json;
    return Json{
        {"name", kNolaGenerator},
        {"version", kNolaGeneratorVersion},
        {"library", "peft-cpp"},
        {"key", "[seed mod 2^32, seed div 2^32]"},
        {"counter", "[entry div 4, basis index, purpose, basis_stream_id]; 10 rounds"},
        {"word", "entry mod 4 of the block's 4 output words"},
        {"entry",
         "float32: ((word >> 8) * 2^-24 * 2 - 1) * bound, one rounding (the product); "
         "converted exactly to wider types"},
        {"layout", "A [r, in] and B [out, r] row-major: entry = row * cols + col"},
        {"a0", Json{{"purpose", static_cast<std::uint32_t>(RandomPurpose::init)},
                    {"basis_index", 0},
                    {"bound", "float32(1 / sqrt(in_features))"}}},
        {"basis_a", Json{{"purpose", static_cast<std::uint32_t>(RandomPurpose::nola_basis_a)},
                         {"bound", "float32(1 / sqrt(num_basis_a))"}}},
        {"basis_b", Json{{"purpose", static_cast<std::uint32_t>(RandomPurpose::nola_basis_b)},
                         {"bound", "float32(1 / sqrt(num_basis_b))"}}},
        {"factors",
         "A = A0 + sum_i nola_alpha[i] A_i, B = sum_j nola_beta[j] B_j, "
         "delta_W = (lora_alpha / r) B A"}};
  }
};

}  // namespace peft
