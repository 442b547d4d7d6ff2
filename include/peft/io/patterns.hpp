#pragma once
// Per-module values in adapter configs: PEFT's rank_pattern / alpha_pattern (PatternMap), and
// how save_adapter chooses the keys that give every module its value.

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "regex.hpp"

namespace peft {

namespace detail {

/// `key` for a message: whole up to 80 bytes, else its start and its length.
inline std::string key_for_message(const std::string& key) {
  return key.size() <= 80 ? key : concat(key.substr(0, 60), "...(", key.size(), " bytes)");
}

/// The regular expression `text` (built around the key `key`), or an io error naming the key.
inline PyRegex pattern_regex(const std::string& text, const std::string& key) {
  try {
    return PyRegex(text);
  } catch (const Error& e) {
    throw Error(ErrorKind::io,
                concat("pattern key '", key_for_message(key),
                       "' is not a regular expression peft-cpp accepts: ", e.what()));
  }
}

/// `text` with the regular-expression metacharacters escaped.
inline std::string regex_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

/// Pattern keys that give every module its value. build(key_of, anchored) makes the keys with
/// key_of(module) as each module's key; resolves(keys) says whether a config holding them gives
/// every module its value. Plain module names are tried first (readable, what PEFT users
/// write); they must resolve in the written order and in sorted order (PEFT re-sorts keys when
/// it saves a config again), which `resolves` checks. Where names are suffixes of each other,
/// or contain characters a regular expression reads, `anchor` + the escaped name (a key that
/// matches that module only) is used for every module instead.
template <class Build, class Resolves>
auto choose_pattern_keys(Build&& build, Resolves&& resolves, std::string_view anchor) {
  auto plain = build([](const std::string& module) { return module; }, false);
  if (resolves(plain)) return plain;
  auto anchored =
      build([&](const std::string& module) { return concat(anchor, regex_escape(module)); }, true);
  PEFT_CHECK(resolves(anchored), ErrorKind::state,
             "save_adapter: could not express the per-module values as patterns");
  return anchored;
}

/// The pattern entries (key, value) sorted by key, as PEFT writes them on a second save.
template <class V>
std::vector<std::pair<std::string, V>> sorted_by_key(std::vector<std::pair<std::string, V>> e) {
  std::sort(e.begin(), e.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return e;
}

}  // namespace detail

/// An ordered pattern dictionary with PEFT's matching (utils.other.get_pattern_key): key k
/// applies to module m when Python's re.match("(.*\.)?(k)$", m) succeeds (io/regex.hpp: the
/// same syntax and meaning, in linear time); the first such key wins.
template <class V>
class PatternMap {
 public:
  struct Entry {
    std::string key;
    V value;
  };

  PatternMap() = default;
  /// The entries in order.
  explicit PatternMap(const std::vector<std::pair<std::string, V>>& entries) {
    for (const auto& [key, value] : entries) add(key, value);
  }

  /// Appends key -> value; an io error naming the key when it is not a regular expression
  /// PyRegex accepts.
  void add(std::string key, V value) {
    regexes_.push_back(detail::pattern_regex("(.*\\.)?(" + key + ")$", key));
    entries_.push_back({std::move(key), std::move(value)});
  }

  /// The first entry whose key matches `module`, or null.
  const Entry* match(std::string_view module) const {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (regexes_[i].prefix_match(module)) return &entries_[i];
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
  std::vector<PyRegex> regexes_;
};

namespace detail {

/// PatternMap entries that give module i values[i], around the config's default `fallback`:
/// plain names for the modules whose value differs, or anchored keys ("^name") for all.
template <class V>
std::vector<std::pair<std::string, V>> make_patterns(const std::vector<std::string>& modules,
                                                     const std::vector<V>& values, V fallback) {
  auto build = [&](auto key_of, bool anchored) {
    std::vector<std::pair<std::string, V>> keys;
    for (std::size_t i = 0; i < modules.size(); ++i)
      if (anchored || values[i] != fallback) keys.emplace_back(key_of(modules[i]), values[i]);
    return keys;
  };
  auto resolves = [&](const std::vector<std::pair<std::string, V>>& keys) {
    for (const auto& order : {keys, sorted_by_key(keys)}) {
      const PatternMap<V> map(order);
      for (std::size_t i = 0; i < modules.size(); ++i)
        if (map.value_for(modules[i], fallback) != values[i]) return false;
    }
    return true;
  };
  return choose_pattern_keys(build, resolves, "^");
}

}  // namespace detail
}  // namespace peft
