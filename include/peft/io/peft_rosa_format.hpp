#pragma once
// RoSA checkpoints in the layout of the reference implementation, IST-DASLab/peft-rosa (a fork
// of Hugging Face PEFT), so that adapters move between the two:
//
//   adapter_config.json        {"peft_type": "ROSA", "r": 8, "d": 0.003, "lora_alpha": 8,
//                               "impl": "auto", "spa_store_transpose": true,
//                               "rosa_dtype": "bf16", "rank_pattern": {}, "density_pattern": {},
//                               "alpha_pattern": {}, ...}
//   adapter_model.safetensors  base_model.model.<module>.rosa_A.weight     [r, in]
//                              base_model.model.<module>.rosa_B.weight     [out, r]
//                              base_model.model.<module>.rosa_spa.values   [nnz]    rosa_dtype
//                              base_model.model.<module>.rosa_spa.row_offs [out + 1] I32
//                              base_model.model.<module>.rosa_spa.row_idx  [out]    I16
//                              base_model.model.<module>.rosa_spa.col_idx  [nnz]    I16
//                              (impl "spmm" adds tr_perm [nnz] I32, tr_row_offs [in + 1] I32,
//                               tr_row_idx [in] I16 and tr_col_idx [nnz] I16: S transposed)
//
// (The reference's layer keeps its adapters in ModuleDicts under the adapter name, e.g.
// rosa_A.default.weight; PEFT's get_peft_model_state_dict drops ".default" when it saves.)
//
// S is CSR with int32 row offsets and int16 column indices; row_idx lists the rows by number
// of entries, most first (the reference's argsort(-diff(row_offs)); any order of equal rows is
// accepted). nnz is fixed when a layer is built, as int(d * out * in) in float64, and a saved
// mask always has exactly that many entries: a layer whose mask has fewer entries than its
// capacity is written with a d (a density_pattern entry) whose int(d * out * in) is its nnz.
// Before its mask exists a layer holds row_offs of zeros (and zero values, row_idx and
// col_idx); such layers are written the same way and load back without a mask. Modules with
// d = 0 have no rosa_spa tensors (the reference's nn.Identity).
//
// Per-module r, d and lora_alpha follow the reference's RosaModel._create_and_replace, which is
// not PEFT's LoRA rule: the keys of rank_pattern, density_pattern and alpha_pattern are tried
// in that order (each in the file's order) and the first key k for which Python's
// re.match(".*\." + k + "$", module) succeeds is then looked up in all three dictionaries
// (missing: the default); when none matches, the module's own name is looked up.
//
// Extension (peft-cpp only): int16 indices cannot address a dimension larger than 32768. When
// a layer has one, save_adapter writes every index tensor (row_idx, col_idx, tr_row_idx,
// tr_col_idx) as I32 and adds "peft_cpp_index_dtype": "int32" to the config; it never writes
// wrapped int16 values. The loader reads both: without the field (or with "int16") index
// tensors must be I16, with "int32" they must be I32. The reference cannot use such files.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft_format.hpp"

namespace peft {

/// Largest dimension int16 indices can address (indices 0 ... 32767).
inline constexpr index_t kRosaInt16DimensionLimit = 32768;
/// adapter_config.json field of the int32-index extension.
inline constexpr const char* kRosaIndexDtypeKey = "peft_cpp_index_dtype";

/// The reference's per-module lookup of r, d and lora_alpha (see the top of this file).
class RosaPatterns {
 public:
  struct Resolved {
    index_t r;
    double d;
    double alpha;
  };

  void add_rank(std::string key, index_t value) { add(rank_, std::move(key), value); }
  void add_density(std::string key, double value) { add(density_, std::move(key), value); }
  void add_alpha(std::string key, double value) { add(alpha_, std::move(key), value); }

  /// The key every dictionary is looked up with for `module`.
  std::string key_for(std::string_view module) const {
    const std::regex* hit = nullptr;
    const std::string* key = nullptr;
    auto scan = [&](const auto& entries) {
      for (const auto& e : entries) {
        if (hit != nullptr) return;
        if (std::regex_search(module.begin(), module.end(), e.re,
                              std::regex_constants::match_continuous)) {
          hit = &e.re;
          key = &e.key;
        }
      }
    };
    scan(rank_);
    scan(density_);
    scan(alpha_);
    return key != nullptr ? *key : std::string(module);
  }

  Resolved resolve(std::string_view module, index_t r, double d, double alpha) const {
    const std::string key = key_for(module);
    return {lookup(rank_, key, r), lookup(density_, key, d), lookup(alpha_, key, alpha)};
  }

  bool empty() const noexcept { return rank_.empty() && density_.empty() && alpha_.empty(); }

 private:
  template <class V>
  struct Entry {
    std::string key;
    V value;
    std::regex re;
  };

  template <class V>
  static void add(std::vector<Entry<V>>& to, std::string key, V value) {
    std::regex re;
    try {
      re = std::regex(".*\\." + key + "$", std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(ErrorKind::io,
                  detail::concat("pattern key '", key,
                                 "' is not a regular expression std::regex accepts: ", e.what()));
    }
    to.push_back({std::move(key), value, std::move(re)});
  }

  template <class V>
  static V lookup(const std::vector<Entry<V>>& from, const std::string& key, V fallback) {
    for (const auto& e : from)
      if (e.key == key) return e.value;
    return fallback;
  }

  std::vector<Entry<index_t>> rank_;
  std::vector<Entry<double>> density_, alpha_;
};

/// The fields of the reference's RosaConfig, parsed and checked. Absent fields take the
/// reference's defaults.
struct RosaAdapterConfig {
  index_t r = 8;
  double d = 0.003;
  double lora_alpha = 8;
  float lora_dropout = 0.0f;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  LoraInit init = LoraInit::kaiming_uniform;
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
    return RosaConfig{.lora = LoraConfig{.r = v.r,
                                         .alpha = v.alpha,
                                         .dropout = lora_dropout,
                                         .use_rslora = use_rslora,
                                         .fan_in_fan_out = fan_in_fan_out,
                                         .init = init,
                                         .seed = seed},
                      .density = v.d,
                      .forward = impl};
  }

  /// Parses the fields; `source` names the file in messages. Refuses what the layer does not
  /// implement (r = 0, trained biases, modules_to_save, LoftQ, ...).
  static RosaAdapterConfig from_json(const nlohmann::ordered_json& j, const std::string& source) {
    auto fail = [&](const std::string& what) -> void {
      throw Error(ErrorKind::io, detail::concat(source, ": ", what));
    };
    RosaAdapterConfig c;
    const auto* type = detail::json_field(j, "peft_type");
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "ROSA")
      fail("peft_type must be \"ROSA\"");

    auto density_ok = [](const nlohmann::ordered_json& v) {
      return v.is_number() && v.get<double>() >= 0.0 && v.get<double>() <= 1.0;
    };
    if (const auto* r = detail::json_field(j, "r")) {
      if (!r->is_number_integer() || r->get<std::int64_t>() < 1)
        fail(detail::concat("r must be an integer >= 1, got ", r->dump(),
                            " (r = 0, S without LoRA, is not supported)"));
      c.r = r->get<std::int64_t>();
    }
    if (const auto* d = detail::json_field(j, "d")) {
      if (!density_ok(*d)) fail(detail::concat("d must be a number in [0, 1], got ", d->dump()));
      c.d = d->get<double>();
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
    flag("spa_store_transpose", c.spa_store_transpose);
    bool terminate = false;
    flag("terminate_after_mask_generation", terminate);

    if (const auto* impl = detail::json_field(j, "impl")) {
      const std::string name = impl->is_string() ? impl->get<std::string>() : std::string();
      if (name == "auto")
        c.impl = RosaForward::automatic;
      else if (name == "sp_add")
        c.impl = RosaForward::dense_add;
      else if (name == "spmm")
        c.impl = RosaForward::spmm;
      else
        fail(detail::concat("impl must be \"auto\", \"sp_add\" or \"spmm\", got ", impl->dump()));
    }
    if (const auto* v = detail::json_field(j, "rosa_dtype")) {
      if (!v->is_string()) fail(detail::concat("rosa_dtype must be a string, got ", v->dump()));
      c.rosa_dtype = v->get<std::string>();
    }
    if (const auto* v = detail::json_field(j, "spa_num_grads"); v != nullptr && !v->is_null()) {
      if (!v->is_number_integer() || v->get<std::int64_t>() < 1)
        fail(detail::concat("spa_num_grads must be an integer >= 1, got ", v->dump()));
      c.spa_num_grads = v->get<std::int64_t>();
    }
    if (const auto* v = detail::json_field(j, "grad_acc_mode"); v != nullptr && !v->is_null()) {
      if (!v->is_string() ||
          (v->get<std::string>() != "mean_squared" && v->get<std::string>() != "mean"))
        fail(detail::concat("grad_acc_mode must be \"mean_squared\" or \"mean\", got ", v->dump()));
      c.grad_acc_mode = v->get<std::string>();
    }
    if (const auto* v = detail::json_field(j, "schedule"); v != nullptr && !v->is_null()) {
      if (!v->is_string())
        fail(detail::concat("schedule must be a string or null, got ", v->dump()));
      c.schedule = v->get<std::string>();
    }
    for (const char* key : {"mask_load_path", "mask_save_path"}) {
      const auto* v = detail::json_field(j, key);
      if (v != nullptr && !v->is_null() && !v->is_string())
        fail(detail::concat(key, " must be a string or null, got ", v->dump()));
    }

    if (const auto* init = detail::json_field(j, "init_lora_weights")) {
      if (init->is_boolean()) {
        c.init = init->get<bool>() ? LoraInit::kaiming_uniform : LoraInit::none;
      } else if (init->is_string() && init->get<std::string>() == "gaussian") {
        c.init = LoraInit::gaussian;
      } else {
        fail(detail::concat("init_lora_weights ", init->dump(),
                            " is not supported (true, false or \"gaussian\"; LoftQ adapters need "
                            "their modified base weights)"));
      }
    }
    if (const auto* bias = detail::json_field(j, "bias")) {
      if (!bias->is_null() && !(bias->is_string() && bias->get<std::string>() == "none"))
        fail(detail::concat("bias ", bias->dump(), " is not supported (only \"none\")"));
    }
    for (const char* key : {"modules_to_save", "loftq_config", "megatron_config"}) {
      const auto* v = detail::json_field(j, key);
      if (!detail::json_is_unset(v))
        fail(detail::concat(key, " = ", v->dump(), " is not supported by peft-cpp's RoSA"));
    }

    if (const auto* v = detail::json_field(j, kRosaIndexDtypeKey); v != nullptr) {
      const std::string name = v->is_string() ? v->get<std::string>() : std::string();
      if (name == "int16")
        c.index_dtype = SafetensorsDtype::I16;
      else if (name == "int32")
        c.index_dtype = SafetensorsDtype::I32;
      else
        fail(
            detail::concat(kRosaIndexDtypeKey, " must be \"int16\" or \"int32\", got ", v->dump()));
    }

    auto patterns = [&](const char* name, auto&& check, auto&& add) {
      const auto* p = detail::json_field(j, name);
      if (p == nullptr || p->is_null()) return;
      if (!p->is_object()) fail(detail::concat(name, " must be an object"));
      for (const auto& [key, value] : p->items()) {
        const std::string problem = check(value);
        if (!problem.empty())
          fail(detail::concat(name, "['", key, "'] must be ", problem, ", got ", value.dump()));
        try {
          add(key, value);
        } catch (const Error& e) {
          fail(detail::concat(name, ": ", e.what()));
        }
      }
    };
    patterns(
        "rank_pattern",
        [](const nlohmann::ordered_json& v) {
          return v.is_number_integer() && v.get<std::int64_t>() >= 1 ? std::string()
                                                                     : "an integer >= 1";
        },
        [&](const std::string& k, const nlohmann::ordered_json& v) {
          c.patterns.add_rank(k, v.get<std::int64_t>());
        });
    patterns(
        "density_pattern",
        [&](const nlohmann::ordered_json& v) {
          return density_ok(v) ? std::string() : "a number in [0, 1]";
        },
        [&](const std::string& k, const nlohmann::ordered_json& v) {
          c.patterns.add_density(k, v.get<double>());
        });
    patterns(
        "alpha_pattern",
        [](const nlohmann::ordered_json& v) { return v.is_number() ? std::string() : "a number"; },
        [&](const std::string& k, const nlohmann::ordered_json& v) {
          c.patterns.add_alpha(k, v.get<double>());
        });
    return c;
  }
};

namespace detail {

/// The reference's nnz of a layer: int(d * np.prod(shape)), a float64 product truncated.
inline index_t rosa_reference_nnz(double d, index_t out, index_t in) {
  return static_cast<index_t>(d * static_cast<double>(out * in));
}

/// A d whose reference nnz for an out x in layer is `nnz`: `preferred` when it fits, else the
/// plainest value that does.
inline double rosa_density_for(index_t nnz, index_t out, index_t in, double preferred) {
  const double total = static_cast<double>(out * in);
  if (rosa_reference_nnz(preferred, out, in) == nnz) return preferred;
  if (total == 0) return preferred;
  for (double d : {double(nnz) / total, (double(nnz) + 0.5) / total}) {
    if (d == 0 && preferred > 0) continue;  // d = 0 would drop the sparse part
    if (d >= 0 && d <= 1 && rosa_reference_nnz(d, out, in) == nnz) return d;
  }
  throw Error(ErrorKind::state, concat("save_adapter: no density gives ", nnz, " entries for a ",
                                       out, " x ", in, " layer"));
}

/// The tensors of one RoSA module, by the suffix after base_model.model.<module>.
enum class RosaTensor {
  rosa_a,
  rosa_b,
  values,
  row_offs,
  row_idx,
  col_idx,
  tr_perm,
  tr_row_offs,
  tr_row_idx,
  tr_col_idx,
};
inline constexpr std::size_t kRosaTensorCount = 10;

inline constexpr std::string_view rosa_suffix(RosaTensor t) {
  constexpr std::string_view names[kRosaTensorCount] = {
      ".rosa_A.weight",       ".rosa_B.weight",      ".rosa_spa.values",  ".rosa_spa.row_offs",
      ".rosa_spa.row_idx",    ".rosa_spa.col_idx",   ".rosa_spa.tr_perm", ".rosa_spa.tr_row_offs",
      ".rosa_spa.tr_row_idx", ".rosa_spa.tr_col_idx"};
  return names[static_cast<std::size_t>(t)];
}

inline std::string rosa_key(std::string_view module, RosaTensor t) {
  return concat("base_model.model.", module, rosa_suffix(t));
}

/// Splits a key into (module, tensor); nothing for keys of another form.
inline std::optional<std::pair<std::string, RosaTensor>> parse_rosa_key(std::string_view key) {
  constexpr std::string_view prefix = "base_model.model.";
  if (!key.starts_with(prefix)) return std::nullopt;
  for (std::size_t i = 0; i < kRosaTensorCount; ++i) {
    const std::string_view suffix = rosa_suffix(static_cast<RosaTensor>(i));
    if (key.size() > prefix.size() + suffix.size() && key.ends_with(suffix))
      return std::pair{
          std::string(key.substr(prefix.size(), key.size() - prefix.size() - suffix.size())),
          static_cast<RosaTensor>(i)};
  }
  return std::nullopt;
}

/// The rows by number of entries, most first; equal rows in ascending order.
inline std::vector<std::int32_t> rosa_row_order(const std::vector<std::int32_t>& row_offs) {
  const std::size_t rows = row_offs.empty() ? 0 : row_offs.size() - 1;
  std::vector<std::int32_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return row_offs[a + 1] - row_offs[a] > row_offs[b + 1] - row_offs[b];
  });
  return order;
}

/// Per-module values as the reference reads them: plain module names when the reference's
/// lookup resolves every module correctly (in the written order and sorted, as PEFT re-saves
/// configs); otherwise keys "$|^<escaped name>", whose regular expression matches that module
/// only.
struct RosaPatternKeys {
  std::vector<std::pair<std::string, index_t>> rank;
  std::vector<std::pair<std::string, double>> density, alpha;
};

inline RosaPatternKeys rosa_make_patterns(const std::vector<std::string>& modules,
                                          const std::vector<index_t>& ranks,
                                          const std::vector<double>& densities,
                                          const std::vector<double>& alphas, index_t r, double d,
                                          double alpha) {
  auto build = [&](auto key_of) {
    RosaPatternKeys k;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      if (ranks[i] != r) k.rank.emplace_back(key_of(modules[i]), ranks[i]);
      if (densities[i] != d) k.density.emplace_back(key_of(modules[i]), densities[i]);
      if (alphas[i] != alpha) k.alpha.emplace_back(key_of(modules[i]), alphas[i]);
    }
    return k;
  };
  auto resolves = [&](RosaPatternKeys k) {
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1) {
        auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
        std::sort(k.rank.begin(), k.rank.end(), by_key);
        std::sort(k.density.begin(), k.density.end(), by_key);
        std::sort(k.alpha.begin(), k.alpha.end(), by_key);
      }
      RosaPatterns p;
      for (const auto& [key, v] : k.rank) p.add_rank(key, v);
      for (const auto& [key, v] : k.density) p.add_density(key, v);
      for (const auto& [key, v] : k.alpha) p.add_alpha(key, v);
      for (std::size_t i = 0; i < modules.size(); ++i) {
        const auto got = p.resolve(modules[i], r, d, alpha);
        if (got.r != ranks[i] || got.d != densities[i] || got.alpha != alphas[i]) return false;
      }
    }
    return true;
  };
  RosaPatternKeys plain = build([](const std::string& m) { return m; });
  if (resolves(plain)) return plain;
  RosaPatternKeys anchored =
      build([](const std::string& m) { return concat("$|^", regex_escape(m)); });
  PEFT_CHECK(resolves(anchored), ErrorKind::state,
             "save_adapter: could not express the per-module values as patterns");
  return anchored;
}

inline const char* rosa_dtype_name(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::BF16:
      return "bf16";
    case SafetensorsDtype::F16:
      return "fp16";
    default:
      return "fp32";  // the reference has no fp64; it builds fp32 layers for any other name
  }
}

inline const char* rosa_impl_name(RosaForward forward) {
  switch (forward) {
    case RosaForward::dense_add:
      return "sp_add";
    case RosaForward::spmm:
      return "spmm";
    default:
      return "auto";
  }
}

/// Adds an index vector as I16 or I32 (the caller checked that the values fit).
inline void add_rosa_indices(SafetensorsWriter& writer, std::string name,
                             const std::vector<std::int32_t>& indices, SafetensorsDtype dtype) {
  const auto n = static_cast<index_t>(indices.size());
  if (dtype == SafetensorsDtype::I32) {
    writer.add(std::move(name), MatrixView<const std::int32_t, Cpu>(indices.data(), 1, n),
               std::nullopt, std::vector<index_t>{n});
    return;
  }
  std::vector<std::int16_t> narrow(indices.size());
  for (std::size_t i = 0; i < indices.size(); ++i) {
    PEFT_CHECK(indices[i] >= INT16_MIN && indices[i] <= INT16_MAX, ErrorKind::state,
               "save_adapter: tensor '", name, "': index ", indices[i], " does not fit int16");
    narrow[i] = static_cast<std::int16_t>(indices[i]);
  }
  writer.add(std::move(name), MatrixView<const std::int16_t, Cpu>(narrow.data(), 1, n),
             std::nullopt, std::vector<index_t>{n});
}

template <class T, class B>
void save_rosa(const std::filesystem::path& dir, AdapterSet<T, B>& set, Context<B>& ctx,
               const SaveOptions& options, SafetensorsDtype dtype) {
  using P = param_t<T>;
  std::vector<std::string> modules;
  std::vector<Rosa<T, B>*> layers;
  set.for_each([&](const std::string& module, auto& layer) {
    using L = std::remove_cvref_t<decltype(layer)>;
    if constexpr (std::is_same_v<L, Rosa<T, B>>) {
      modules.push_back(module);
      layers.push_back(&layer);
    } else {
      throw Error(ErrorKind::invalid_argument,
                  concat("save_adapter: module '", module,
                         "' is not a RoSA layer; one checkpoint holds one adapter type"));
    }
  });
  const Rosa<T, B>& first = *layers.front();
  const LoraConfig& lora = first.lora().config();
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const LoraConfig& c = layers[i]->lora().config();
    PEFT_CHECK_ARG(c.dropout == lora.dropout && c.use_rslora == lora.use_rslora &&
                       c.fan_in_fan_out == lora.fan_in_fan_out && c.init == lora.init &&
                       layers[i]->config().forward == first.config().forward,
                   "save_adapter: module '", modules[i], "' differs from module '", modules.front(),
                   "' in lora_dropout, use_rslora, fan_in_fan_out, init_lora_weights or the "
                   "forward mode (impl), which the reference's config holds once for all modules");
  }

  bool wide = false;
  for (const auto* l : layers)
    wide = wide || l->out_features() > kRosaInt16DimensionLimit ||
           l->in_features() > kRosaInt16DimensionLimit;
  SafetensorsDtype index_dtype = wide ? SafetensorsDtype::I32 : SafetensorsDtype::I16;
  if (options.rosa.index_dtype) {
    PEFT_CHECK_ARG(*options.rosa.index_dtype == SafetensorsDtype::I16 ||
                       *options.rosa.index_dtype == SafetensorsDtype::I32,
                   "save_adapter: rosa.index_dtype is ", to_string(*options.rosa.index_dtype),
                   ", expected I16 or I32");
    PEFT_CHECK_ARG(!wide || *options.rosa.index_dtype == SafetensorsDtype::I32,
                   "save_adapter: a RoSA layer has a dimension above ", kRosaInt16DimensionLimit,
                   ", which int16 indices (the reference's format) cannot address; save with "
                   "rosa.index_dtype = I32 (or unset) to use peft-cpp's int32 extension");
    index_dtype = *options.rosa.index_dtype;
  }
  PEFT_CHECK_ARG(options.rosa.spa_num_grads >= 1, "save_adapter: rosa.spa_num_grads is ",
                 options.rosa.spa_num_grads, ", expected >= 1");
  PEFT_CHECK_ARG(
      options.rosa.grad_acc_mode == "mean_squared" || options.rosa.grad_acc_mode == "mean",
      "save_adapter: rosa.grad_acc_mode is '", options.rosa.grad_acc_mode,
      "', expected 'mean_squared' or 'mean'");

  // Host copies of the layers' state.
  struct Saved {
    index_t out = 0, in = 0, nnz = 0;
    bool mask = false;
    double d = 0;
    std::vector<std::int32_t> row_offs, col_idx;
    Matrix<P, Cpu> a, b, values;
  };
  std::vector<Saved> saved(layers.size());
  std::vector<index_t> ranks;
  std::vector<double> densities, alphas;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    Rosa<T, B>& layer = *layers[i];
    Saved& s = saved[i];
    s.out = layer.out_features();
    s.in = layer.in_features();
    s.mask = layer.has_mask();
    auto params = layer.parameters();  // lora_A, lora_B, rosa_S
    s.a = Matrix<P, Cpu>(params[0].value.rows(), params[0].value.cols());
    download(ctx, as_const(params[0].value), s.a.view());
    s.b = Matrix<P, Cpu>(params[1].value.rows(), params[1].value.cols());
    download(ctx, as_const(params[1].value), s.b.view());
    s.row_offs.assign(static_cast<std::size_t>(s.out + 1), 0);
    if (s.mask) {
      const CsrMatrix<P, B>& sparse = layer.sparse();
      const auto view = sparse.view();
      s.nnz = view.nnz;
      download(ctx, MatrixView<const std::int32_t, B>(view.row_offsets, 1, s.out + 1),
               MatrixView<std::int32_t, Cpu>(s.row_offs.data(), 1, s.out + 1));
      s.col_idx.assign(static_cast<std::size_t>(s.nnz), 0);
      if (s.nnz > 0)
        download(ctx, MatrixView<const std::int32_t, B>(view.col_indices, 1, s.nnz),
                 MatrixView<std::int32_t, Cpu>(s.col_idx.data(), 1, s.nnz));
    } else {
      s.nnz = layer.sparse_capacity();
      s.col_idx.assign(static_cast<std::size_t>(s.nnz), 0);
    }
    s.values = Matrix<P, Cpu>(1, s.nnz);
    if (s.nnz > 0)
      download(ctx, MatrixView<const P, B>(params[2].value.data(), 1, s.nnz), s.values.view());
    s.d = layer.config().density == 0 && s.nnz == 0
              ? 0.0
              : rosa_density_for(s.nnz, s.out, s.in, layer.config().density);
    ranks.push_back(layer.lora().config().r);
    densities.push_back(s.d);
    alphas.push_back(layer.lora().config().alpha);
  }

  const index_t r = most_common(ranks);
  const double d = most_common(densities);
  const double alpha = most_common(alphas);
  const RosaPatternKeys keys = rosa_make_patterns(modules, ranks, densities, alphas, r, d, alpha);
  auto string_or_null = [](const std::string& s) {
    return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
  };
  auto to_object = [](const auto& entries, auto convert) {
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const auto& [k, v] : entries) o[k] = convert(v);
    return o;
  };
  auto number = [](double v) { return json_number(v); };
  auto integer = [](index_t v) { return nlohmann::ordered_json(v); };
  auto real = [](double v) { return nlohmann::ordered_json(v); };
  nlohmann::ordered_json init;
  if (lora.init == LoraInit::gaussian)
    init = "gaussian";
  else
    init = lora.init == LoraInit::kaiming_uniform;

  // The reference's RosaConfig and PeftConfig fields, keys sorted as PEFT writes them.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["alpha_pattern"] = to_object(keys.alpha, number);
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = string_or_null(options.base_model_name_or_path);
  j["bias"] = "none";
  j["d"] = d;
  j["density_pattern"] = to_object(keys.density, real);
  j["fan_in_fan_out"] = lora.fan_in_fan_out;
  j["grad_acc_mode"] = options.rosa.grad_acc_mode;
  j["impl"] = rosa_impl_name(first.config().forward);
  j["inference_mode"] = true;
  j["init_lora_weights"] = std::move(init);
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = nlohmann::ordered_json::object();
  j["lora_alpha"] = json_number(alpha);
  j["lora_dropout"] = float_for_json(lora.dropout);
  j["mask_load_path"] = nullptr;
  j["mask_save_path"] = nullptr;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  if (index_dtype == SafetensorsDtype::I32) j[kRosaIndexDtypeKey] = "int32";
  j["peft_type"] = "ROSA";
  j["r"] = r;
  j["rank_pattern"] = to_object(keys.rank, integer);
  j["revision"] = string_or_null(options.revision);
  j["rosa_dtype"] = rosa_dtype_name(dtype);
  j["schedule"] = string_or_null(options.rosa.schedule);
  j["spa_num_grads"] = options.rosa.spa_num_grads;
  j["spa_store_transpose"] = true;
  j["target_modules"] = options.target_modules.value_or(modules);
  j["task_type"] = string_or_null(options.task_type);
  j["terminate_after_mask_generation"] = false;
  j["use_rslora"] = lora.use_rslora;
  const std::string config = j.dump(2);

  const bool transposed = first.config().forward == RosaForward::spmm;  // spa_store_transpose
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  writer.set_metadata(kAdapterConfigHashKey, sha256_hex(config));
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::string& m = modules[i];
    Saved& s = saved[i];
    writer.add(rosa_key(m, RosaTensor::rosa_a), as_const(s.a.view()), dtype);
    writer.add(rosa_key(m, RosaTensor::rosa_b), as_const(s.b.view()), dtype);
    if (s.d == 0) continue;  // the reference's nn.Identity: no sparse part
    writer.add(rosa_key(m, RosaTensor::values), as_const(s.values.view()), dtype,
               std::vector<index_t>{s.nnz});
    writer.add(rosa_key(m, RosaTensor::row_offs),
               MatrixView<const std::int32_t, Cpu>(s.row_offs.data(), 1, s.out + 1), std::nullopt,
               std::vector<index_t>{s.out + 1});
    const std::vector<std::int32_t> order =
        s.mask ? rosa_row_order(s.row_offs) : std::vector<std::int32_t>(std::size_t(s.out), 0);
    add_rosa_indices(writer, rosa_key(m, RosaTensor::row_idx), order, index_dtype);
    add_rosa_indices(writer, rosa_key(m, RosaTensor::col_idx), s.col_idx, index_dtype);
    if (transposed) {
      // Zeros: the reference's state before its first product, which it fills lazily.
      const std::vector<std::int32_t> perm(std::size_t(s.nnz), 0), offs(std::size_t(s.in + 1), 0),
          rows(std::size_t(s.in), 0);
      add_rosa_indices(writer, rosa_key(m, RosaTensor::tr_perm), perm, SafetensorsDtype::I32);
      add_rosa_indices(writer, rosa_key(m, RosaTensor::tr_row_offs), offs, SafetensorsDtype::I32);
      add_rosa_indices(writer, rosa_key(m, RosaTensor::tr_row_idx), rows, index_dtype);
      add_rosa_indices(writer, rosa_key(m, RosaTensor::tr_col_idx), perm, index_dtype);
    }
  }
  commit_adapter_files(dir, config, writer);
}

template <class T, class B>
AdapterSet<T, B> load_rosa(const std::filesystem::path& dir, const AdapterConfigFile& file,
                           const BaseModel<T, B>& base, Context<B>& ctx,
                           const LoadOptions& options) {
  using P = param_t<T>;
  const std::string where = concat("load_adapter: ", quoted(dir));
  RosaAdapterConfig config =
      RosaAdapterConfig::from_json(file.json, concat(where, ": ", kAdapterConfigName));
  if (options.fan_in_fan_out) config.fan_in_fan_out = *options.fan_in_fan_out;
  const SafetensorsReader reader = open_adapter_weights(dir, file, options);

  // Group the tensors by module, in the file's order.
  struct Found {
    std::string module;
    const SafetensorsTensorInfo* t[kRosaTensorCount] = {};
  };
  std::vector<Found> found;
  std::map<std::string, std::size_t, std::less<>> slot;
  for (const SafetensorsTensorInfo& t : reader.tensors()) {
    const auto parsed = parse_rosa_key(t.name);
    PEFT_CHECK(parsed.has_value(), ErrorKind::io, where, ": ", kAdapterWeightsName,
               " has the tensor '", t.name,
               "', which is not base_model.model.<module>.rosa_A.weight, .rosa_B.weight or "
               ".rosa_spa.{values,row_offs,row_idx,col_idx,tr_*} (embedding RoSA, biases and "
               "modules_to_save are not supported)");
    auto [it, added] = slot.emplace(parsed->first, found.size());
    if (added) found.push_back({parsed->first});
    found[it->second].t[static_cast<std::size_t>(parsed->second)] = &t;
  }
  PEFT_CHECK(!found.empty(), ErrorKind::io, where, ": ", kAdapterWeightsName,
             " holds no RoSA tensors");

  struct Prepared {
    RosaConfig config;
    Matrix<P, Cpu> a, b, values;
    std::optional<CsrPattern> pattern;  // absent: no mask yet
  };
  const std::string idx_name = config.index_dtype == SafetensorsDtype::I16 ? "I16" : "I32";
  std::vector<Prepared> prepared;
  for (const Found& f : found) {
    auto get = [&](RosaTensor t) { return f.t[static_cast<std::size_t>(t)]; };
    auto fail = [&](auto&&... what) -> void {
      throw Error(ErrorKind::io, concat(where, ": module '", f.module, "': ", what...));
    };
    const auto base_it = base.find(f.module);
    PEFT_CHECK(base_it != base.end(), ErrorKind::io, where, ": the adapter has module '", f.module,
               "', which is not among the ", base.size(), " base layers given");
    Prepared p;
    p.config = config.for_module(f.module, options.seed);
    const LoraConfig& c = p.config.lora;
    const MatrixView<const T, B>& w = base_it->second.weight;
    const index_t in = c.fan_in_fan_out ? w.rows() : w.cols();
    const index_t out = c.fan_in_fan_out ? w.cols() : w.rows();
    PEFT_CHECK(base_it->second.bias.empty() || base_it->second.bias.size() == out, ErrorKind::io,
               where, ": module '", f.module, "': the bias has ", base_it->second.bias.size(),
               " elements, out_features is ", out);

    // The LoRA part.
    const auto* a = get(RosaTensor::rosa_a);
    const auto* b = get(RosaTensor::rosa_b);
    if (a == nullptr || b == nullptr)
      fail(a   ? "rosa_A but no rosa_B"
           : b ? "rosa_B but no rosa_A"
               : "no rosa_A and rosa_B",
           " (r = 0, S without LoRA, is not supported)");
    const std::string shape_a = SafetensorsReader::shape_text(a->shape);
    const std::string shape_b = SafetensorsReader::shape_text(b->shape);
    if (a->shape.size() != 2 || b->shape.size() != 2 || a->shape[0] != b->shape[1])
      fail("rosa_A is ", shape_a, " and rosa_B is ", shape_b, ", expected [r, in] and [out, r]");
    if (a->shape[0] != c.r)
      fail("the config gives rank ", c.r, " (r / rank_pattern), rosa_A is ", shape_a);
    if (a->shape[1] != in || b->shape[0] != out)
      fail("rosa_A is ", shape_a, " and rosa_B is ", shape_b, ", the base weight is ",
           shape_string(w), (c.fan_in_fan_out ? " [in, out]" : " [out, in]"));

    // The sparse part.
    const auto* values = get(RosaTensor::values);
    const auto* row_offs = get(RosaTensor::row_offs);
    const auto* row_idx = get(RosaTensor::row_idx);
    const auto* col_idx = get(RosaTensor::col_idx);
    const bool any_spa = values || row_offs || row_idx || col_idx;
    const bool any_tr = get(RosaTensor::tr_perm) || get(RosaTensor::tr_row_offs) ||
                        get(RosaTensor::tr_row_idx) || get(RosaTensor::tr_col_idx);
    if (p.config.density == 0) {
      if (any_spa || any_tr)
        fail(
            "the config gives d = 0 (d / density_pattern), which has no rosa_spa tensors, but "
            "the file has some");
      p.a = reader.read_matrix<P>(a->name);
      p.b = reader.read_matrix<P>(b->name);
      prepared.push_back(std::move(p));
      continue;
    }
    if (!(values && row_offs && row_idx && col_idx))
      fail("rosa_spa needs values, row_offs, row_idx and col_idx; missing ",
           !values     ? "values"
           : !row_offs ? "row_offs"
           : !row_idx  ? "row_idx"
                       : "col_idx",
           " (d = ", p.config.density, ")");
    auto check = [&](const SafetensorsTensorInfo* t, const char* name, index_t length,
                     std::initializer_list<SafetensorsDtype> dtypes, const std::string& expected) {
      if (t->shape.size() != 1 || t->shape[0] != length)
        fail("rosa_spa.", name, " is ", SafetensorsReader::shape_text(t->shape), ", expected [",
             length, "]");
      if (std::find(dtypes.begin(), dtypes.end(), t->dtype) == dtypes.end())
        fail("rosa_spa.", name, " is ", to_string(t->dtype), ", expected ", expected);
    };
    const index_t nnz = rosa_reference_nnz(p.config.density, out, in);
    check(
        values, "values", nnz,
        std::is_same_v<P, double>
            ? std::initializer_list<SafetensorsDtype>{SafetensorsDtype::F32, SafetensorsDtype::F16,
                                                      SafetensorsDtype::BF16, SafetensorsDtype::F64}
            : std::initializer_list<SafetensorsDtype>{SafetensorsDtype::F32, SafetensorsDtype::F16,
                                                      SafetensorsDtype::BF16},
        "F32, F16 or BF16 (F64 for a double model)");
    check(row_offs, "row_offs", out + 1, {SafetensorsDtype::I32}, "I32");
    const std::string idx_expected =
        concat(idx_name, config.index_dtype == SafetensorsDtype::I16
                             ? " (the reference's int16; int32 needs \"peft_cpp_index_dtype\": "
                               "\"int32\" in the config)"
                             : " (\"peft_cpp_index_dtype\": \"int32\")");
    check(row_idx, "row_idx", out, {config.index_dtype}, idx_expected);
    check(col_idx, "col_idx", nnz, {config.index_dtype}, idx_expected);
    if (any_tr) {
      const auto* tr_perm = get(RosaTensor::tr_perm);
      const auto* tr_row_offs = get(RosaTensor::tr_row_offs);
      const auto* tr_row_idx = get(RosaTensor::tr_row_idx);
      const auto* tr_col_idx = get(RosaTensor::tr_col_idx);
      if (!(tr_perm && tr_row_offs && tr_row_idx && tr_col_idx))
        fail("rosa_spa has some of tr_perm, tr_row_offs, tr_row_idx and tr_col_idx but not all");
      // S transposed, which the layer rebuilds itself: checked for form only.
      check(tr_perm, "tr_perm", nnz, {SafetensorsDtype::I32}, "I32");
      check(tr_row_offs, "tr_row_offs", in + 1, {SafetensorsDtype::I32}, "I32");
      check(tr_row_idx, "tr_row_idx", in, {config.index_dtype}, idx_expected);
      check(tr_col_idx, "tr_col_idx", nnz, {config.index_dtype}, idx_expected);
    }

    // Our layer's capacity must be the file's nnz.
    if (p.config.capacity(out, in) != nnz) p.config.density = RosaConfig::density_for(nnz, out, in);
    p.a = reader.read_matrix<P>(a->name);
    p.b = reader.read_matrix<P>(b->name);
    p.values = reader.read_matrix<P>(values->name);
    const Matrix<std::int32_t, Cpu> offs = reader.read_matrix<std::int32_t>(row_offs->name);
    const std::int32_t* o = offs.data();
    if (o[out] == 0) {
      // No mask yet (the reference's exists() is row_offs[-1] != 0): all offsets are zero.
      for (index_t i = 0; i <= out; ++i)
        if (o[i] != 0)
          fail("rosa_spa.row_offs ends in 0 (no mask) but row_offs[", i, "] is ", o[i],
               ": the offsets are not monotone");
      prepared.push_back(std::move(p));
      continue;
    }
    if (o[out] != nnz)
      fail("rosa_spa.row_offs ends in ", o[out], " entries, values and col_idx hold ", nnz,
           " (the reference's mask has exactly int(d * out * in) entries)");
    const Matrix<std::int32_t, Cpu> cols = reader.read_matrix<std::int32_t>(col_idx->name);
    CsrPattern pattern{out, in, std::vector<std::int32_t>(o, o + out + 1),
                       std::vector<std::int32_t>(cols.data(), cols.data() + nnz)};
    try {
      pattern.validate("rosa_spa");
    } catch (const Error& e) {
      fail(e.what());
    }
    // row_idx: every row once, by number of entries, most first.
    const Matrix<std::int32_t, Cpu> order = reader.read_matrix<std::int32_t>(row_idx->name);
    std::vector<char> seen(static_cast<std::size_t>(out), 0);
    for (index_t i = 0; i < out; ++i) {
      const std::int32_t row = order.data()[i];
      if (row < 0 || row >= out || seen[std::size_t(row)])
        fail("rosa_spa.row_idx is not a permutation of the ", out, " rows (", row, " at ", i, ")");
      seen[std::size_t(row)] = 1;
      if (i > 0) {
        const std::int32_t prev = order.data()[i - 1];
        if (o[row + 1] - o[row] > o[prev + 1] - o[prev])
          fail("rosa_spa.row_idx does not order the rows by number of entries, most first (row ",
               row, " follows row ", prev, ")");
      }
    }
    p.pattern = std::move(pattern);
    prepared.push_back(std::move(p));
  }

  AdapterSet<T, B> set;
  for (std::size_t i = 0; i < found.size(); ++i) {
    Prepared& p = prepared[i];
    Rosa<T, B>& layer =
        set.add_rosa(ctx, found[i].module, base.find(found[i].module)->second, p.config);
    if (p.pattern) layer.set_mask(ctx, *p.pattern);
    auto params = layer.parameters();
    upload(ctx, as_const(p.a.view()), params[0].value);
    upload(ctx, as_const(p.b.view()), params[1].value);
    PEFT_CHECK(layer.sparse_capacity() == p.values.cols(), ErrorKind::state, where, ": module '",
               found[i].module, "': the layer holds ", layer.sparse_capacity(),
               " sparse values, the file ", p.values.cols());
    if (p.values.cols() > 0) upload(ctx, as_const(p.values.view()), params[2].value);
    layer.parameters_updated(ctx);
  }
  set.set_training(options.training);
  return set;
}

}  // namespace detail

}  // namespace peft
