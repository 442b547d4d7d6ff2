#pragma once
// ConfigFields: adapter_config.json as save_adapter writes it, in PEFT's layout (keys sorted,
// two-space indent; nested objects keep the order they were built in), and the number forms
// that make a config read as written.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace peft {

class ConfigFields {
 public:
  using Json = nlohmann::ordered_json;

  Json& operator[](const std::string& key) { return fields_[key]; }

  /// The file's text.
  std::string text() const {
    Json j = Json::object();
    for (const auto& [key, value] : fields_) j[key] = value;
    return j.dump(2);
  }

 private:
  std::map<std::string, Json> fields_;  // sorted, as PEFT's json.dumps(sort_keys=True)
};

namespace detail {

/// A number for JSON: integral values as integers (PEFT's configs write lora_alpha: 16).
inline nlohmann::ordered_json json_number(double value) {
  if (std::isfinite(value) && value == std::trunc(value) && std::abs(value) < 9.0e15)
    return static_cast<std::int64_t>(value);
  return value;
}

/// A real for JSON that reads as written: a float becomes the double whose shortest decimal
/// form is the float's (0.05f -> 0.05, not 0.0500000007...); a double is itself.
template <class D>
double json_real(D value) {
  static_assert(std::is_floating_point_v<D>);
  if constexpr (std::is_same_v<D, float>) {
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
    *result.ptr = '\0';
    return std::strtod(buffer, nullptr);
  } else {
    return static_cast<double>(value);
  }
}

/// A string field: null when empty.
inline nlohmann::ordered_json string_or_null(const std::string& s) {
  return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
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

}  // namespace detail
}  // namespace peft
