#pragma once
// Per-module r, d and lora_alpha of ROSA checkpoints, as the reference (IST-DASLab/peft-rosa,
// RosaModel._create_and_replace) resolves them, which is not PEFT's LoRA rule: the keys of
// rank_pattern, density_pattern and alpha_pattern are tried in that order (each in the file's
// order) and the first key k for which Python's re.match(".*\." + k + "$", module) succeeds is
// then looked up in all three dictionaries (missing: the default); when none matches, the
// module's own name is looked up.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/config.hpp"
#include "patterns.hpp"
#include "regex.hpp"

namespace peft {

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
    const std::string* key = nullptr;
    auto scan = [&](const auto& entries) {
      for (const auto& e : entries) {
        if (key != nullptr) return;
        if (e.re.prefix_match(module)) key = &e.key;
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
    PyRegex re;
  };

  template <class V>
  static void add(std::vector<Entry<V>>& to, std::string key, V value) {
    PyRegex re = detail::pattern_regex(".*\\." + key + "$", key);
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

/// The three pattern dictionaries of a ROSA config, as (key, value) entries in their order.
struct RosaPatternKeys {
  std::vector<std::pair<std::string, index_t>> rank;
  std::vector<std::pair<std::string, double>> density, alpha;
};

namespace detail {

/// Entries that give module i ranks[i], densities[i] and alphas[i] around the config's r, d
/// and alpha, under the reference's lookup: plain module names, or keys "$|^<escaped name>"
/// (whose regular expression matches that module only).
inline RosaPatternKeys rosa_make_patterns(const std::vector<std::string>& modules,
                                          const std::vector<index_t>& ranks,
                                          const std::vector<double>& densities,
                                          const std::vector<double>& alphas, index_t r, double d,
                                          double alpha) {
  auto build = [&](auto key_of, bool) {
    RosaPatternKeys k;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      if (ranks[i] != r) k.rank.emplace_back(key_of(modules[i]), ranks[i]);
      if (densities[i] != d) k.density.emplace_back(key_of(modules[i]), densities[i]);
      if (alphas[i] != alpha) k.alpha.emplace_back(key_of(modules[i]), alphas[i]);
    }
    return k;
  };
  auto resolves = [&](const RosaPatternKeys& k) {
    const RosaPatternKeys sorted{sorted_by_key(k.rank), sorted_by_key(k.density),
                                 sorted_by_key(k.alpha)};
    for (const RosaPatternKeys* order : {&k, &sorted}) {
      RosaPatterns p;
      for (const auto& [key, v] : order->rank) p.add_rank(key, v);
      for (const auto& [key, v] : order->density) p.add_density(key, v);
      for (const auto& [key, v] : order->alpha) p.add_alpha(key, v);
      for (std::size_t i = 0; i < modules.size(); ++i) {
        const auto got = p.resolve(modules[i], r, d, alpha);
        if (got.r != ranks[i] || got.d != densities[i] || got.alpha != alphas[i]) return false;
      }
    }
    return true;
  };
  return choose_pattern_keys(build, resolves, "$|^");
}

}  // namespace detail
}  // namespace peft
