#pragma once
// The options of save_adapter and load_adapter that hold for every adapter type. A method's own
// save options (RosaSaveOptions, ...) come with its format (io/<method>_format.hpp).

#include <cstdint>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "safetensors.hpp"

namespace peft {

struct SaveOptions {
  /// Dtype of the saved parameters: F32, F16, BF16 or F64. Default: the parameters' own type
  /// (F32, or F64 for a double model), so nothing is rounded unless asked for.
  std::optional<SafetensorsDtype> dtype = std::nullopt;
  /// adapter_config.json fields; empty strings are written as null.
  std::string base_model_name_or_path = {};
  std::string revision = {};
  std::string task_type = {};  // e.g. "CAUSAL_LM"
  /// target_modules, as given. Default: a regular expression that selects exactly the set's
  /// modules in PEFT (re.fullmatch), as a list of names would also select "x.<name>".
  std::optional<std::vector<std::string>> target_modules = std::nullopt;
};

/// The save options of a method that has none of its own.
struct NoMethodOptions {};

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
  /// Receives what a load accepts but PEFT would warn about (a config field peft-cpp does not
  /// know, a fan_in_fan_out that a layer's declared layout overrides); default: printed to
  /// std::cerr. Throw from it to refuse such checkpoints instead.
  std::function<void(const std::string&)> warn = nullptr;
};

namespace detail {

inline void warn(const LoadOptions& options, const std::string& message) {
  if (options.warn)
    options.warn(message);
  else
    std::cerr << "peft-cpp warning: " << message << '\n';
}

}  // namespace detail

}  // namespace peft
