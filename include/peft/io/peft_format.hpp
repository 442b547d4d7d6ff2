#pragma once
// Hugging Face PEFT's adapter checkpoint: a directory with
//
//   adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in]
//                              base_model.model.<module>.lora_B.weight [out, r]
//
// save_adapter writes it from an AdapterSet, load_adapter builds an AdapterSet from it (also
// from files PEFT wrote). Per-module ranks and alphas go through PEFT's rank_pattern and
// alpha_pattern: a key k applies to module m when m matches the regular expression
// `(.*\.)?(k)$` in full, and the first matching key in the file's order wins.
//
// Both files are written atomically (temporary file, fsync, rename). They are tied together:
// the SHA-256 of the exact bytes of adapter_config.json is stored in the safetensors metadata
// under "peft_cpp_config_sha256" (what `sha256sum adapter_config.json` prints), so a config
// and weights from two different saves (e.g. a save interrupted between its two renames) are
// detected on load. Files without the key (PEFT writes none) are accepted.
//
// The format is dispatched on peft_type: LORA here, ROSA (the layout of IST-DASLab/peft-rosa)
// in peft_rosa_format.hpp; other adapter types add a branch to load_adapter and save_adapter.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s regex compiler at -O2/-O3
// (std::function copied in _Compiler::_M_assertion); silence it for this header's users.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adapter_set.hpp"
#include "file.hpp"
#include "json.hpp"
#include "safetensors.hpp"
#include "sha256.hpp"

namespace peft {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";
/// safetensors metadata key holding the SHA-256 (hex) of adapter_config.json's bytes.
inline constexpr const char* kAdapterConfigHashKey = "peft_cpp_config_sha256";

/// RoSA-only fields of save_adapter (peft_rosa_format.hpp).
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

struct SaveOptions {
  /// Dtype of the saved factors: F32, F16, BF16 or F64. Default: the parameters' own type
  /// (F32, or F64 for a double model), so nothing is rounded unless asked for.
  std::optional<SafetensorsDtype> dtype = std::nullopt;
  /// adapter_config.json fields; empty strings are written as null.
  std::string base_model_name_or_path = {};
  std::string revision = {};
  std::string task_type = {};  // e.g. "CAUSAL_LM"
  /// target_modules; default: the full names of the set's modules.
  std::optional<std::vector<std::string>> target_modules = std::nullopt;
  /// For sets of RoSA layers.
  RosaSaveOptions rosa = {};
};

struct LoadOptions {
  SafetensorsAccess access = SafetensorsAccess::mmap;
  /// LoraConfig::seed of the loaded layers (their dropout streams).
  std::uint64_t seed = 0;
  /// Training mode of the loaded layers; PEFT's from_pretrained loads for inference too.
  bool training = false;
  /// Refuse a config whose SHA-256 differs from the one recorded in the weights' metadata.
  bool verify_config_hash = true;
  /// Overrides the config's fan_in_fan_out (PEFT itself corrects it per layer by module
  /// type, which the file does not record).
  std::optional<bool> fan_in_fan_out = std::nullopt;
  std::uint64_t max_config_bytes = std::uint64_t{16} << 20;
};

// ---- rank_pattern / alpha_pattern ----------------------------------------------------------

/// An ordered pattern dictionary with PEFT's matching (utils.other.get_pattern_key): key k
/// applies to module m when std::regex_match(m, "(.*\.)?(k)$"); the first such key wins.
template <class V>
class PatternMap {
 public:
  struct Entry {
    std::string key;
    V value;
  };

  /// Appends key -> value; an io error when the key is not an ECMAScript regular expression.
  void add(std::string key, V value) {
    std::regex re;
    try {
      re = std::regex("(.*\\.)?(" + key + ")$", std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(ErrorKind::io,
                  detail::concat("pattern key '", key,
                                 "' is not a regular expression std::regex accepts: ", e.what()));
    }
    entries_.push_back({std::move(key), std::move(value)});
    regexes_.push_back(std::move(re));
  }

  /// The first entry whose key matches `module`, or null.
  const Entry* match(std::string_view module) const {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (std::regex_match(module.begin(), module.end(), regexes_[i])) return &entries_[i];
    return nullptr;
  }
  V value_for(std::string_view module, V fallback) const {
    const Entry* e = match(module);
    return e != nullptr ? e->value : fallback;
  }

  const std::vector<Entry>& entries() const noexcept { return entries_; }
  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  std::vector<Entry> entries_;
  std::vector<std::regex> regexes_;
};

namespace detail {

/// `text` with the regular-expression metacharacters escaped.
inline std::string regex_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

/// The double whose shortest decimal form equals the float's (0.05f -> 0.05, not
/// 0.0500000007...), so configs read as written.
inline double float_for_json(float value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  *result.ptr = '\0';
  return std::strtod(buffer, nullptr);
}

/// A number for JSON: integral values as integers (PEFT's configs write lora_alpha: 16).
inline nlohmann::ordered_json json_number(double value) {
  if (std::isfinite(value) && value == std::trunc(value) && std::abs(value) < 9.0e15)
    return static_cast<std::int64_t>(value);
  return value;
}

/// The most frequent value, the first seen among equals.
template <class V>
V most_common(const std::vector<V>& values) {
  V best = values.front();
  std::size_t best_count = 0;
  for (const V& v : values) {
    const auto count = static_cast<std::size_t>(std::count(values.begin(), values.end(), v));
    if (count > best_count) {
      best = v;
      best_count = count;
    }
  }
  return best;
}

/// Pattern entries that give each module its value, with `fallback` the config's default.
/// Plain module names are tried first (readable, what PEFT users write); they must resolve
/// every module correctly in the written order and in sorted order (PEFT re-sorts keys when it
/// saves a config again). Where names are suffixes of each other, or contain characters a
/// regular expression reads, anchored escaped keys (^name, matching that module only) are
/// written for every module instead.
template <class V>
std::vector<std::pair<std::string, V>> make_patterns(const std::vector<std::string>& modules,
                                                     const std::vector<V>& values, V fallback) {
  auto resolves = [&](std::vector<std::pair<std::string, V>> keys) {
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1)
        std::sort(keys.begin(), keys.end(),
                  [](const auto& a, const auto& b) { return a.first < b.first; });
      PatternMap<V> map;
      for (const auto& [k, v] : keys) map.add(k, v);
      for (std::size_t i = 0; i < modules.size(); ++i)
        if (map.value_for(modules[i], fallback) != values[i]) return false;
    }
    return true;
  };
  std::vector<std::pair<std::string, V>> plain;
  for (std::size_t i = 0; i < modules.size(); ++i)
    if (values[i] != fallback) plain.emplace_back(modules[i], values[i]);
  if (plain.empty() || resolves(plain)) return plain;
  std::vector<std::pair<std::string, V>> anchored;
  for (std::size_t i = 0; i < modules.size(); ++i)
    anchored.emplace_back(concat("^", regex_escape(modules[i])), values[i]);
  PEFT_CHECK(resolves(anchored), ErrorKind::state,
             "save_adapter: could not express the per-module values as patterns");
  return anchored;
}

inline const nlohmann::ordered_json* json_field(const nlohmann::ordered_json& j,
                                                std::string_view key) {
  const auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

inline bool json_is_unset(const nlohmann::ordered_json* j) {
  return j == nullptr || j->is_null() || ((j->is_array() || j->is_object()) && j->empty()) ||
         (j->is_boolean() && !j->get<bool>());
}

}  // namespace detail

// ---- adapter_config.json -------------------------------------------------------------------

/// adapter_config.json as read: the text (hashed), the JSON in the file's key order, and
/// peft_type.
struct AdapterConfigFile {
  std::string text;
  nlohmann::ordered_json json;
  std::string peft_type;
};

/// Reads and parses `<dir>/adapter_config.json`.
inline AdapterConfigFile read_adapter_config(const std::filesystem::path& dir,
                                             std::uint64_t max_bytes = std::uint64_t{16} << 20) {
  const std::filesystem::path path = dir / kAdapterConfigName;
  AdapterConfigFile config;
  config.text = detail::read_file_text(path, max_bytes);
  std::string error;
  PEFT_CHECK(detail::parse_json_ordered(config.text, 64, config.json, error), ErrorKind::io,
             detail::quoted(path), ": ", error);
  PEFT_CHECK(config.json.is_object(), ErrorKind::io, detail::quoted(path),
             ": expected a JSON object, got ", config.json.type_name());
  const auto* type = detail::json_field(config.json, "peft_type");
  PEFT_CHECK(type != nullptr && type->is_string(), ErrorKind::io, detail::quoted(path),
             ": no peft_type string");
  config.peft_type = type->get<std::string>();
  return config;
}

/// The LoRA fields of adapter_config.json (PEFT's LoraConfig), parsed and checked.
struct LoraAdapterConfig {
  index_t r = 8;
  double lora_alpha = 8;
  float lora_dropout = 0.0f;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  LoraInit init = LoraInit::kaiming_uniform;
  PatternMap<index_t> rank_pattern;
  PatternMap<double> alpha_pattern;

  /// r and alpha of `module` as PEFT resolves them, with the shared fields.
  LoraConfig for_module(std::string_view module, std::uint64_t seed = 0) const {
    return LoraConfig{.r = rank_pattern.value_for(module, r),
                      .alpha = alpha_pattern.value_for(module, lora_alpha),
                      .dropout = lora_dropout,
                      .use_rslora = use_rslora,
                      .fan_in_fan_out = fan_in_fan_out,
                      .init = init,
                      .seed = seed};
  }

  /// Parses the LoRA fields; `source` names the file in messages. Refuses what would change
  /// the layer's math in ways Lora does not implement (DoRA, trained biases, modules_to_save,
  /// initialisations that rewrite the base weights, ...).
  static LoraAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    auto fail = [&](const std::string& what) -> void {
      throw Error(ErrorKind::io, detail::concat(source, ": ", what));
    };
    LoraAdapterConfig c;
    const auto* type = detail::json_field(j, "peft_type");
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "LORA")
      fail("peft_type must be \"LORA\"");

    if (const auto* r = detail::json_field(j, "r")) {
      if (!r->is_number_integer() || r->get<std::int64_t>() < 1)
        fail(detail::concat("r must be an integer >= 1, got ", r->dump()));
      c.r = r->get<std::int64_t>();
    }
    if (const auto* a = detail::json_field(j, "lora_alpha")) {
      if (!a->is_number()) fail(detail::concat("lora_alpha must be a number, got ", a->dump()));
      c.lora_alpha = a->get<double>();
    }
    if (const auto* d = detail::json_field(j, "lora_dropout")) {
      if (!d->is_number() || d->get<double>() < 0 || d->get<double>() >= 1)
        fail(detail::concat("lora_dropout must be a number in [0, 1), got ", d->dump()));
      c.lora_dropout = static_cast<float>(d->get<double>());
    }
    auto flag = [&](const char* key, bool& out) {
      if (const auto* v = detail::json_field(j, key)) {
        if (!v->is_boolean()) fail(detail::concat(key, " must be true or false, got ", v->dump()));
        out = v->get<bool>();
      }
    };
    flag("use_rslora", c.use_rslora);
    flag("fan_in_fan_out", c.fan_in_fan_out);

    if (const auto* init = detail::json_field(j, "init_lora_weights")) {
      if (init->is_boolean()) {
        c.init = init->get<bool>() ? LoraInit::kaiming_uniform : LoraInit::none;
      } else if (init->is_string()) {
        const std::string name = init->get<std::string>();
        if (name == "gaussian") {
          c.init = LoraInit::gaussian;
        } else if (name == "eva" || name == "orthogonal") {
          c.init = LoraInit::kaiming_uniform;  // A and B come from the file
        } else {
          fail(detail::concat(
              "init_lora_weights \"", name, "\" is not supported: ",
              "PiSSA, OLoRA, CorDA and LoftQ adapters need their modified base weights; "
              "convert them to plain LoRA in PEFT first"));
        }
      } else {
        fail(detail::concat("init_lora_weights must be a boolean or a string, got ", init->dump()));
      }
    }

    if (const auto* bias = detail::json_field(j, "bias")) {
      if (!bias->is_null() && !(bias->is_string() && bias->get<std::string>() == "none"))
        fail(detail::concat("bias ", bias->dump(), " is not supported (only \"none\")"));
    }
    for (const char* key :
         {"use_dora", "lora_bias", "use_qalora", "modules_to_save", "layer_replication",
          "target_parameters", "trainable_token_indices", "alora_invocation_tokens"}) {
      const auto* v = detail::json_field(j, key);
      if (!detail::json_is_unset(v))
        fail(detail::concat(key, " = ", v->dump(), " is not supported by peft-cpp's LoRA"));
    }

    if (const auto* rp = detail::json_field(j, "rank_pattern"); rp != nullptr && !rp->is_null()) {
      if (!rp->is_object()) fail("rank_pattern must be an object");
      for (const auto& [key, value] : rp->items()) {
        if (!value.is_number_integer() || value.get<std::int64_t>() < 1)
          fail(detail::concat("rank_pattern['", key, "'] must be an integer >= 1, got ",
                              value.dump()));
        try {
          c.rank_pattern.add(key, value.get<std::int64_t>());
        } catch (const Error& e) {
          fail(detail::concat("rank_pattern: ", e.what()));
        }
      }
    }
    if (const auto* ap = detail::json_field(j, "alpha_pattern"); ap != nullptr && !ap->is_null()) {
      if (!ap->is_object()) fail("alpha_pattern must be an object");
      for (const auto& [key, value] : ap->items()) {
        if (!value.is_number())
          fail(detail::concat("alpha_pattern['", key, "'] must be a number, got ", value.dump()));
        try {
          c.alpha_pattern.add(key, value.get<double>());
        } catch (const Error& e) {
          fail(detail::concat("alpha_pattern: ", e.what()));
        }
      }
    }
    return c;
  }
};

namespace detail {

/// PEFT's safetensors key of a LoRA factor.
inline std::string lora_key(std::string_view module, const char* factor) {
  return detail::concat("base_model.model.", module, ".", factor, ".weight");
}

/// Splits "base_model.model.<module>.lora_A.weight" into (module, 'A'); nothing otherwise.
inline std::optional<std::pair<std::string, char>> parse_lora_key(std::string_view key) {
  constexpr std::string_view prefix = "base_model.model.";
  constexpr std::string_view suffix_a = ".lora_A.weight", suffix_b = ".lora_B.weight";
  if (!key.starts_with(prefix)) return std::nullopt;
  for (auto [suffix, which] : {std::pair{suffix_a, 'A'}, std::pair{suffix_b, 'B'}}) {
    if (key.size() > prefix.size() + suffix.size() && key.ends_with(suffix))
      return std::pair{
          std::string(key.substr(prefix.size(), key.size() - prefix.size() - suffix.size())),
          which};
  }
  return std::nullopt;
}

/// LoRA's adapter_config.json for the layers of a set, as text (PEFT's layout: sorted keys,
/// two-space indent).
template <class T, class B>
std::string lora_config_text(const std::vector<std::string>& modules,
                             const std::vector<const Lora<T, B>*>& layers,
                             const SaveOptions& options) {
  const LoraConfig& first = layers.front()->config();
  std::vector<index_t> ranks;
  std::vector<double> alphas;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LoraConfig& c = layers[i]->config();
    PEFT_CHECK_ARG(c.dropout == first.dropout && c.use_rslora == first.use_rslora &&
                       c.fan_in_fan_out == first.fan_in_fan_out,
                   "save_adapter: module '", modules[i], "' differs from module '", modules.front(),
                   "' in lora_dropout, use_rslora or fan_in_fan_out, which PEFT's config holds "
                   "once for all modules");
    ranks.push_back(c.r);
    alphas.push_back(c.alpha);
  }
  const index_t r = most_common(ranks);
  const double alpha = most_common(alphas);
  auto string_or_null = [](const std::string& s) {
    return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
  };

  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object();
  for (const auto& [key, value] : make_patterns(modules, ranks, r)) rank_pattern[key] = value;
  nlohmann::ordered_json alpha_pattern = nlohmann::ordered_json::object();
  for (const auto& [key, value] : make_patterns(modules, alphas, alpha))
    alpha_pattern[key] = json_number(value);

  nlohmann::ordered_json init;
  if (first.init == LoraInit::gaussian)
    init = "gaussian";
  else
    init = first.init == LoraInit::kaiming_uniform;

  // Keys in sorted order, as PEFT writes them.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["alpha_pattern"] = std::move(alpha_pattern);
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = string_or_null(options.base_model_name_or_path);
  j["bias"] = "none";
  j["fan_in_fan_out"] = first.fan_in_fan_out;
  j["inference_mode"] = true;
  j["init_lora_weights"] = std::move(init);
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = json_number(alpha);
  j["lora_dropout"] = float_for_json(first.dropout);
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = r;
  j["rank_pattern"] = std::move(rank_pattern);
  j["revision"] = string_or_null(options.revision);
  j["target_modules"] = options.target_modules.value_or(modules);
  j["task_type"] = string_or_null(options.task_type);
  j["use_dora"] = false;
  j["use_rslora"] = first.use_rslora;
  return j.dump(2);
}

/// Writes the two files atomically: both go to temporary files and are flushed first, then
/// the weights are renamed into place, then the config. A crash between the renames leaves new
/// weights (holding the new config's hash) beside the old config: load refuses the pair.
inline void commit_adapter_files(const std::filesystem::path& dir, const std::string& config,
                                 const SafetensorsWriter& weights) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  PEFT_CHECK(!error, ErrorKind::io, "save_adapter: cannot create ", quoted(dir), ": ",
             error.message());
  AtomicFile weights_file(dir / kAdapterWeightsName);
  weights.write_to([&](std::span<const std::byte> bytes) { weights_file.write(bytes); });
  weights_file.finish();
  AtomicFile config_file(dir / kAdapterConfigName);
  config_file.write(config);
  config_file.finish();
  weights_file.commit();
  config_file.commit();
  sync_directory(dir);
}

}  // namespace detail

// ---- save ----------------------------------------------------------------------------------

namespace detail {

// RoSA, in peft_rosa_format.hpp (included at the end of this file).
template <class T, class B>
void save_rosa(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
               const SaveOptions& options, SafetensorsDtype dtype);
template <class T, class B>
AdapterSet<T, B> load_rosa(const std::filesystem::path& dir, const AdapterConfigFile& file,
                           const BaseModel<T, B>& base, Context<B>& ctx,
                           const LoadOptions& options);

}  // namespace detail

/// Writes `set` to `dir` (created if missing) as adapter_config.json and
/// adapter_model.safetensors, in PEFT's format. The set is not modified (it is taken by
/// reference because reading parameters needs non-const access). All layers must be LoRA
/// with one lora_dropout, use_rslora and fan_in_fan_out; ranks and alphas may differ (written
/// as rank_pattern / alpha_pattern around the most common values). A set of RoSA layers is
/// written as peft-rosa's ROSA checkpoint (peft_rosa_format.hpp); one set holds one type.
template <class T, class B>
void save_adapter(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
                  const SaveOptions& options = {}) {
  using P = param_t<T>;
  PEFT_CHECK_ARG(!set.empty(), "save_adapter: the adapter set is empty");
  const SafetensorsDtype dtype = options.dtype.value_or(native_safetensors_dtype<P>());
  PEFT_CHECK_ARG(dtype == SafetensorsDtype::F32 || dtype == SafetensorsDtype::F16 ||
                     dtype == SafetensorsDtype::BF16 || dtype == SafetensorsDtype::F64,
                 "save_adapter: dtype ", to_string(dtype), " is not F32, F16, BF16 or F64");

  bool any_lora = false, any_rosa = false;
  set.for_each([&](const std::string&, auto& layer) {
    using L = std::remove_cvref_t<decltype(layer)>;
    (std::is_same_v<L, Rosa<T, B>> ? any_rosa : any_lora) = true;
  });
  PEFT_CHECK_ARG(!(any_lora && any_rosa),
                 "save_adapter: the set holds LoRA and RoSA layers; one checkpoint holds one "
                 "adapter type");
  if (any_rosa) {
    detail::save_rosa(dir, set, ctx, options, dtype);
    return;
  }

  std::vector<std::string> modules;
  std::vector<const Lora<T, B>*> layers;
  set.for_each([&](const std::string& module, auto& layer) {
    using L = std::remove_cvref_t<decltype(layer)>;
    if constexpr (std::is_same_v<L, Lora<T, B>>) {
      modules.push_back(module);
      layers.push_back(&layer);
    } else {
      throw Error(ErrorKind::invalid_argument,
                  detail::concat("save_adapter: module '", module,
                                 "' is not a LoRA layer; one checkpoint holds one adapter type"));
    }
  });
  const std::string config = detail::lora_config_text(modules, layers, options);

  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata(kAdapterConfigHashKey, sha256_hex(config));
  for (const std::string& module : modules) {
    auto& layer = set.template get<Lora<T, B>>(module);
    for (auto& p : layer.parameters()) {
      Matrix<P, Cpu> host(p.value.rows(), p.value.cols());
      download(ctx, as_const(p.value), host.view());
      writer.add(detail::lora_key(module, p.name.c_str()), as_const(host.view()), dtype);
    }
  }
  detail::commit_adapter_files(dir, config, writer);
}

// ---- load ----------------------------------------------------------------------------------

namespace detail {

/// Opens `<dir>/adapter_model.safetensors` and checks the config hash it records (if any).
inline SafetensorsReader open_adapter_weights(const std::filesystem::path& dir,
                                              const AdapterConfigFile& file,
                                              const LoadOptions& options) {
  SafetensorsReader reader =
      SafetensorsReader::open(dir / kAdapterWeightsName, {.access = options.access});
  if (options.verify_config_hash) {
    const auto it = reader.metadata().find(kAdapterConfigHashKey);
    if (it != reader.metadata().end()) {
      const std::string actual = sha256_hex(file.text);
      PEFT_CHECK(it->second == actual, ErrorKind::io, "load_adapter: ", quoted(dir), ": ",
                 kAdapterConfigName, " (SHA-256 ", actual, ") is not the config ",
                 kAdapterWeightsName, " was saved with (", it->second,
                 "): the two files come from different saves (an interrupted save?)");
    }
  }
  return reader;
}

template <class T, class B>
AdapterSet<T, B> load_lora(const std::filesystem::path& dir, const AdapterConfigFile& file,
                           const BaseModel<T, B>& base, Context<B>& ctx,
                           const LoadOptions& options) {
  using P = param_t<T>;
  const std::string where = detail::concat("load_adapter: ", quoted(dir));
  LoraAdapterConfig config =
      LoraAdapterConfig::from_json(file.json, detail::concat(where, ": ", kAdapterConfigName));
  if (options.fan_in_fan_out) config.fan_in_fan_out = *options.fan_in_fan_out;

  const SafetensorsReader reader = open_adapter_weights(dir, file, options);

  // Group the tensors by module, in the file's order.
  struct Factors {
    std::string module;
    const SafetensorsTensorInfo* a = nullptr;
    const SafetensorsTensorInfo* b = nullptr;
  };
  std::vector<Factors> found;
  std::map<std::string, std::size_t, std::less<>> slot;
  for (const SafetensorsTensorInfo& t : reader.tensors()) {
    const auto parsed = parse_lora_key(t.name);
    PEFT_CHECK(parsed.has_value(), ErrorKind::io, where, ": ", kAdapterWeightsName,
               " has the tensor '", t.name,
               "', which is not base_model.model.<module>.lora_A.weight or .lora_B.weight "
               "(embedding LoRA, DoRA magnitudes, biases and modules_to_save are not supported)");
    auto [it, added] = slot.emplace(parsed->first, found.size());
    if (added) found.push_back({parsed->first});
    (parsed->second == 'A' ? found[it->second].a : found[it->second].b) = &t;
  }
  PEFT_CHECK(!found.empty(), ErrorKind::io, where, ": ", kAdapterWeightsName,
             " holds no LoRA tensors");

  // Check everything before building anything.
  std::vector<LoraConfig> configs;
  std::vector<Matrix<P, Cpu>> factors;
  for (const Factors& f : found) {
    PEFT_CHECK(f.a != nullptr && f.b != nullptr, ErrorKind::io, where, ": module '", f.module,
               "' has ", f.a ? "lora_A but no lora_B" : "lora_B but no lora_A");
    const auto base_it = base.find(f.module);
    PEFT_CHECK(base_it != base.end(), ErrorKind::io, where, ": the adapter has module '", f.module,
               "', which is not among the ", base.size(), " base layers given");
    const LoraConfig c = config.for_module(f.module, options.seed);
    const MatrixView<const T, B>& w = base_it->second.weight;
    const index_t in = c.fan_in_fan_out ? w.rows() : w.cols();
    const index_t out = c.fan_in_fan_out ? w.cols() : w.rows();
    const std::string shape_a = SafetensorsReader::shape_text(f.a->shape);
    const std::string shape_b = SafetensorsReader::shape_text(f.b->shape);
    PEFT_CHECK(f.a->shape.size() == 2 && f.b->shape.size() == 2, ErrorKind::io, where, ": module '",
               f.module, "': lora_A is ", shape_a, " and lora_B is ", shape_b,
               ", expected two matrices");
    PEFT_CHECK(f.a->shape[0] == f.b->shape[1], ErrorKind::io, where, ": module '", f.module,
               "': lora_A is ", shape_a, " and lora_B is ", shape_b, ": their ranks differ");
    PEFT_CHECK(f.a->shape[0] == c.r, ErrorKind::io, where, ": module '", f.module,
               "': the config gives rank ", c.r, " (r / rank_pattern), lora_A is ", shape_a);
    PEFT_CHECK(f.a->shape[1] == in && f.b->shape[0] == out, ErrorKind::io, where, ": module '",
               f.module, "': lora_A is ", shape_a, " and lora_B is ", shape_b,
               ", the base weight is ", shape_string(w),
               (c.fan_in_fan_out ? " [in, out]" : " [out, in]"),
               " (fan_in_fan_out = ", c.fan_in_fan_out ? "true" : "false", ")");
    PEFT_CHECK(base_it->second.bias.empty() || base_it->second.bias.size() == out, ErrorKind::io,
               where, ": module '", f.module, "': the bias has ", base_it->second.bias.size(),
               " elements, out_features is ", out);
    configs.push_back(c);
    factors.push_back(reader.read_matrix<P>(f.a->name));
    factors.push_back(reader.read_matrix<P>(f.b->name));
  }

  AdapterSet<T, B> set;
  for (std::size_t i = 0; i < found.size(); ++i) {
    Lora<T, B>& layer =
        set.add_lora(ctx, found[i].module, base.find(found[i].module)->second, configs[i]);
    auto params = layer.parameters();
    upload(ctx, as_const(factors[2 * i].view()), params[0].value);
    upload(ctx, as_const(factors[2 * i + 1].view()), params[1].value);
    layer.parameters_updated(ctx);
  }
  set.set_training(options.training);
  return set;
}

}  // namespace detail

/// Builds the adapters saved in `dir` over the frozen layers `base` (by module name, as in
/// the base model; it may hold more modules than the adapter). Everything is read and checked
/// before the set is built: on any error nothing is returned. Supports peft_type LORA,
/// including PEFT's rank_pattern / alpha_pattern, rsLoRA and fan_in_fan_out, and peft_type
/// ROSA (peft-rosa's checkpoints, see peft_rosa_format.hpp); the factors may be stored as F32,
/// F16 or BF16 (F64 too for a double model).
template <class T, class B>
AdapterSet<T, B> load_adapter(const std::filesystem::path& dir, const BaseModel<T, B>& base,
                              Context<B>& ctx, const LoadOptions& options = {}) {
  const AdapterConfigFile file = read_adapter_config(dir, options.max_config_bytes);
  if (file.peft_type == "LORA") return detail::load_lora(dir, file, base, ctx, options);
  if (file.peft_type == "ROSA") return detail::load_rosa(dir, file, base, ctx, options);
  throw Error(ErrorKind::io,
              detail::concat("load_adapter: ", detail::quoted(dir), ": peft_type \"",
                             file.peft_type, "\" is not supported (supported: LORA, ROSA)"));
}

}  // namespace peft

#include "peft_rosa_format.hpp"  // IWYU pragma: export

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
