#pragma once
// Which modules an adapter config selects, by PEFT's rules (tuners_utils.py,
// check_target_module_exists), and the exact selection save_adapter writes.
//
// Reading: target_modules (a list of names or a regular expression), exclude_modules (list or
// regular expression), layers_to_transform (an index or a list) and layers_pattern (a name or
// a list), with PEFT's meaning:
//   - excluded: exclude_modules as a string fullmatches the name, or as a list holds the name
//     or a suffix of it after a dot;
//   - target_modules as a string: re.fullmatch(target_modules, name);
//   - as a list: the name itself is listed (layers_to_transform is then not consulted), or a
//     listed entry is a suffix after a dot and, with layers_to_transform, the name's layer
//     index (the first number after layers_pattern, or after the second segment when
//     layers_pattern is empty) is among the indices.
// A config without target_modules (or "all-linear", which PEFT expands over the model's module
// types, which the file does not record) selects every module.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config_reader.hpp"
#include "patterns.hpp"
#include "regex.hpp"

namespace peft {

class ModuleSelection {
 public:
  /// Reads the fields from an adapter config; refusals name the field.
  static ModuleSelection read(const ConfigReader& in) {
    ModuleSelection s;
    s.read_names_or_regex(in, "target_modules", s.target_regex_, s.target_list_);
    s.read_names_or_regex(in, "exclude_modules", s.exclude_regex_, s.exclude_list_);
    if (s.target_regex_ && lower(s.target_regex_->pattern()) == "all-linear")
      s.target_regex_.reset();  // every module: see above
    // LoraConfig.__post_init__'s refusals.
    if (in.given("target_modules") && in.given("target_modules")->is_string())
      for (const char* field : {"layers_to_transform", "layers_pattern"})
        if (in.given(field)) in.fail(field, " cannot be used when target_modules is a string");
    if (const auto* p = in.given("layers_pattern");
        p && !p->empty() && !(p->is_string() && p->get<std::string>().empty()) &&
        !in.given("layers_to_transform"))
      in.fail("layers_pattern is given without layers_to_transform");
    if (const auto* v = in.given("layers_to_transform")) {
      auto index = [&](const ConfigReader::Json& e) {
        if (!e.is_number_integer())
          in.fail("layers_to_transform must be an integer or a list of integers, got ", v->dump());
        return e.get<std::int64_t>();
      };
      if (v->is_array()) {
        for (const auto& e : *v) s.layers_.push_back(index(e));
        s.use_layers_ = !s.layers_.empty();
      } else {
        s.layers_.push_back(index(*v));
        s.use_layers_ = true;
      }
    }
    if (const auto* v = in.given("layers_pattern")) {
      auto add = [&](const ConfigReader::Json& e) {
        if (!e.is_string())
          in.fail("layers_pattern must be a string or a list of strings, got ", v->dump());
        s.layer_patterns_.push_back(
            compile(in, "layers_pattern", e.get<std::string>(),
                    "(?:^|.*?\\.)" + e.get<std::string>() + "\\.(?P<idx>\\d+)\\."));
      };
      if (v->is_array())
        for (const auto& e : *v) add(e);
      else if (!(v->is_string() && v->get<std::string>().empty()))  // "": the default below
        add(*v);
    }
    if (s.layer_patterns_.empty())
      s.layer_patterns_.push_back(
          compile(in, "layers_pattern", "", ".*?\\.[^.]*\\.(?P<idx>\\d+)\\."));
    return s;
  }

  /// Whether PEFT would adapt `module` under this config.
  bool selects(std::string_view module) const {
    if (exclude_regex_ && exclude_regex_->full_match(module)) return false;
    if (exclude_list_ && listed(*exclude_list_, module, true)) return false;
    if (target_regex_) return target_regex_->full_match(module);
    if (!target_list_) return true;
    for (const std::string& t : *target_list_)
      if (t == module) return true;
    if (!listed(*target_list_, module, false)) return false;
    if (!use_layers_) return true;
    std::optional<std::string> index;
    for (const PyRegex& p : layer_patterns_)
      if ((index = p.prefix_match_group(module, p.group_index("idx")))) break;
    if (!index) return false;
    const auto first = index->find_first_not_of('0');
    const std::string digits = first == std::string::npos ? "0" : index->substr(first);
    if (digits.size() > 18) return false;  // beyond every listed index
    const std::int64_t i = std::stoll(digits);
    for (std::int64_t l : layers_)
      if (l == i) return true;
    return false;
  }

 private:
  static std::string lower(std::string s) {
    for (char& c : s)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
  }

  /// Whether `names` holds the module (when `exact`) or a suffix of it after a dot.
  static bool listed(const std::vector<std::string>& names, std::string_view module, bool exact) {
    for (const std::string& n : names) {
      if (exact && n == module) return true;
      const std::size_t dot = module.size() - n.size() - 1;  // where a suffix match needs '.'
      if (module.size() > n.size() && module.ends_with(n) && module[dot] == '.') return true;
    }
    return false;
  }

  static PyRegex compile(const ConfigReader& in, const char* field, const std::string& value,
                         const std::string& pattern) {
    try {
      return PyRegex(pattern);
    } catch (const Error& e) {
      in.fail(field, " '", value, "' is not a regular expression peft-cpp accepts: ", e.what());
    }
  }

  void read_names_or_regex(const ConfigReader& in, const char* field, std::optional<PyRegex>& regex,
                           std::optional<std::vector<std::string>>& list) {
    const auto* v = in.given(field);
    if (v == nullptr) return;
    if (v->is_string()) {
      regex.emplace(compile(in, field, v->get<std::string>(), v->get<std::string>()));
      return;
    }
    if (!v->is_array()) in.fail(field, " must be a string or a list of strings, got ", v->dump());
    list.emplace();
    for (const auto& e : *v) {
      if (!e.is_string()) in.fail(field, " must be a string or a list of strings, got ", v->dump());
      list->push_back(e.get<std::string>());
    }
  }

  std::optional<PyRegex> target_regex_, exclude_regex_;
  std::optional<std::vector<std::string>> target_list_, exclude_list_;
  std::vector<std::int64_t> layers_;
  bool use_layers_ = false;
  std::vector<PyRegex> layer_patterns_;
};

namespace detail {

/// A regular expression that re.fullmatch matches with exactly the names `modules`: the names
/// as a tree of dot-separated segments, siblings whose subtrees are equal merged into one
/// alternation ("model\.layers\.(?:0|1)\.self_attn\.(?:q_proj|v_proj)").
inline std::string exact_selection_regex(const std::vector<std::string>& modules) {
  struct Trie {
    std::vector<std::pair<std::string, int>> kids;  // segment -> node, in first-seen order
    bool end = false;
  };
  std::vector<Trie> nodes(1);
  std::size_t depth = 0;
  for (const std::string& m : modules) {
    int at = 0;
    std::size_t begin = 0, segments = 0;
    for (;;) {
      const std::size_t dot = m.find('.', begin);
      const std::string seg = m.substr(begin, dot == std::string::npos ? dot : dot - begin);
      ++segments;
      int next = -1;
      for (const auto& [s, k] : nodes[static_cast<std::size_t>(at)].kids)
        if (s == seg) next = k;
      if (next < 0) {
        next = static_cast<int>(nodes.size());
        nodes[static_cast<std::size_t>(at)].kids.emplace_back(seg, next);
        nodes.emplace_back();
      }
      at = next;
      if (dot == std::string::npos) break;
      begin = dot + 1;
    }
    nodes[static_cast<std::size_t>(at)].end = true;
    depth = std::max(depth, segments);
  }
  auto alternatives = [](const std::vector<std::string>& alts) {
    std::string out;
    for (const std::string& a : alts) out += (out.empty() ? "" : "|") + a;
    return alts.size() == 1 ? out : "(?:" + out + ")";
  };
  if (depth > static_cast<std::size_t>(PyRegex::kMaxNesting) / 3) {  // flat: no nesting
    std::vector<std::string> escaped;
    for (const std::string& m : modules) escaped.push_back(regex_escape(m));
    return alternatives(escaped);
  }
  // Serialises node `at` (the text after its segment); recursion depth: the segments of a name.
  auto serialise = [&](auto& self, int at) -> std::string {
    const Trie& n = nodes[static_cast<std::size_t>(at)];
    // Kids grouped by their subtree's text, in first-seen order.
    std::vector<std::pair<std::string, std::vector<std::string>>> groups;
    for (const auto& [seg, k] : n.kids) {
      const std::string sub = self(self, k);
      auto g =
          std::find_if(groups.begin(), groups.end(), [&](const auto& e) { return e.first == sub; });
      if (g == groups.end()) {
        groups.push_back({sub, {}});
        g = groups.end() - 1;
      }
      g->second.push_back(regex_escape(seg));
    }
    std::vector<std::string> alts;
    for (const auto& [sub, segs] : groups) alts.push_back(alternatives(segs) + sub);
    if (alts.empty()) return "";
    const std::string tail = "\\." + alternatives(alts);
    return n.end ? "(?:" + tail + ")?" : tail;
  };
  const std::string root = serialise(serialise, 0);
  return root.substr(2);  // the root has no segment: drop its leading "\."
}

}  // namespace detail
}  // namespace peft
