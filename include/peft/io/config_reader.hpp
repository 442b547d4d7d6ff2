#pragma once
// ConfigReader: the fields of adapter_config.json, read with their checks. The file is hostile:
// every field is checked for its type and range, and every refusal is an io Error that starts
// with the file's name ("<source>: lora_dropout must be a number in [0, 1), got 1.0"). An
// absent field and a null one both keep the caller's default.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "../core/config.hpp"
#include "../core/error.hpp"

namespace peft {

class ConfigReader {
 public:
  using Json = nlohmann::ordered_json;

  ConfigReader(const Json& json, std::string source) : json_(json), source_(std::move(source)) {}

  const std::string& source() const noexcept { return source_; }
  const Json& json() const noexcept { return json_; }

  template <class... What>
  [[noreturn]] void fail(const What&... what) const {
    throw Error(ErrorKind::io, detail::concat(source_, ": ", what...));
  }

  /// The field, or null when it is absent.
  const Json* find(std::string_view key) const {
    const auto it = json_.find(key);
    return it == json_.end() ? nullptr : &*it;
  }
  /// The field, or null when it is absent or null.
  const Json* given(std::string_view key) const {
    const Json* v = find(key);
    return v == nullptr || v->is_null() ? nullptr : v;
  }

  void expect_peft_type(std::string_view type) const {
    const Json* v = given("peft_type");
    if (v == nullptr || !v->is_string() || v->get<std::string>() != type)
      fail("peft_type must be \"", type, "\"");
  }

  void read(const char* key, bool& out) const {
    if (const Json* v = given(key)) {
      if (!v->is_boolean()) fail(key, " must be true or false, got ", v->dump());
      out = v->get<bool>();
    }
  }
  void read(const char* key, double& out) const {
    if (const Json* v = given(key)) {
      if (!v->is_number()) fail(key, " must be a number, got ", v->dump());
      out = v->get<double>();
    }
  }
  void read(const char* key, std::string& out) const {
    if (const Json* v = given(key)) {
      if (!v->is_string()) fail(key, " must be a string, got ", v->dump());
      out = v->get<std::string>();
    }
  }
  /// An integer >= 1.
  void read_positive(const char* key, std::int64_t& out) const {
    if (const Json* v = given(key)) {
      if (!is_positive_integer(*v)) fail(key, " must be an integer >= 1, got ", v->dump());
      out = v->get<std::int64_t>();
    }
  }
  /// A number in [0, 1] (`closed`) or [0, 1); D is float or double.
  template <class D>
  void read_fraction(const char* key, D& out, bool closed) const {
    if (const Json* v = given(key)) {
      if (!is_fraction(*v, closed))
        fail(key, " must be a number in [0, 1", closed ? "]" : ")", ", got ", v->dump());
      out = static_cast<D>(v->get<double>());
    }
  }
  /// One of the named values: `impl must be "auto", "sp_add" or "spmm", got ...`.
  template <class V>
  void read_choice(const char* key, V& out,
                   std::initializer_list<std::pair<std::string_view, V>> choices) const {
    const Json* v = given(key);
    if (v == nullptr) return;
    for (const auto& [name, value] : choices)
      if (v->is_string() && v->get<std::string>() == name) {
        out = value;
        return;
      }
    std::string names;
    std::size_t i = 0;
    for (const auto& choice : choices)
      names += detail::concat(i++ == 0              ? ""
                              : i == choices.size() ? " or "
                                                    : ", ",
                              "\"", choice.first, "\"");
    fail(key, " must be ", names, ", got ", v->dump());
  }

  /// A dictionary of module patterns: every value must satisfy `accepts` (described as
  /// `expected` in the error); add(key, value) takes each entry in the file's order, and may
  /// throw an Error (a key that is no regular expression), which is reported under `key`.
  template <class Accepts, class Add>
  void read_patterns(const char* key, std::string_view expected, Accepts&& accepts,
                     Add&& add) const {
    const Json* p = given(key);
    if (p == nullptr) return;
    if (!p->is_object()) fail(key, " must be an object");
    for (const auto& [name, value] : p->items()) {
      if (!accepts(value)) fail(key, "['", name, "'] must be ", expected, ", got ", value.dump());
      try {
        add(name, value);
      } catch (const Error& e) {
        fail(key, ": ", e.what());
      }
    }
  }

  /// Refuses the keys that are set to anything but null, false or an empty container: options
  /// `method` (e.g. "LoRA") does not implement.
  void refuse_set(std::initializer_list<const char*> keys, std::string_view method) const {
    for (const char* key : keys) {
      const Json* v = given(key);
      if (v == nullptr || ((v->is_array() || v->is_object()) && v->empty()) ||
          (v->is_boolean() && !v->get<bool>()))
        continue;
      fail(key, " = ", v->dump(), " is not supported by peft-cpp's ", method);
    }
  }

  static bool is_positive_integer(const Json& v) {
    return v.is_number_integer() && v.get<std::int64_t>() >= 1;
  }
  static bool is_fraction(const Json& v, bool closed) {
    return v.is_number() && v.get<double>() >= 0.0 &&
           (closed ? v.get<double>() <= 1.0 : v.get<double>() < 1.0);
  }

 private:
  const Json& json_;
  std::string source_;
};

}  // namespace peft
