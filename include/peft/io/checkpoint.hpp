#pragma once
// The two files of an adapter checkpoint, whatever its adapter type (Hugging Face PEFT's
// layout):
//
//   adapter_config.json        {"peft_type": "LORA", ...}: which format, and its fields
//   adapter_model.safetensors  the tensors, named base_model.model.<module>.<tensor>
//
// A save replaces the directory as a whole (directory_transaction.hpp): after a crash at any
// moment it holds exactly the old adapter or exactly the new one, and the user's other files.
// The two files are also tied together: the SHA-256 of the exact bytes of adapter_config.json
// is stored in the safetensors metadata under "peft_cpp_config_sha256" (what `sha256sum
// adapter_config.json` prints), so a config and weights from two different saves (copied or
// edited by hand) are detected on load. Files without the key (PEFT writes none) are accepted.

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "checkpoint_options.hpp"
#include "directory_transaction.hpp"
#include "file.hpp"
#include "json.hpp"
#include "safetensors.hpp"
#include "sha256.hpp"

namespace peft {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";
/// safetensors metadata key holding the SHA-256 (hex) of adapter_config.json's bytes.
inline constexpr const char* kAdapterConfigHashKey = "peft_cpp_config_sha256";

/// adapter_config.json as read: the text (hashed), the JSON in the file's key order, and
/// peft_type.
struct AdapterConfigFile {
  std::string text;
  nlohmann::ordered_json json;
  std::string peft_type;
};

/// Parses the text of an adapter_config.json; `source` names it in messages.
inline AdapterConfigFile parse_adapter_config(std::string text, const std::string& source) {
  AdapterConfigFile config;
  config.text = std::move(text);
  std::string error;
  PEFT_CHECK(detail::parse_json_ordered(config.text, 64, config.json, error), ErrorKind::io, source,
             ": ", error);
  PEFT_CHECK(config.json.is_object(), ErrorKind::io, source, ": expected a JSON object, got ",
             config.json.type_name());
  const auto type = config.json.find("peft_type");
  PEFT_CHECK(type != config.json.end() && type->is_string(), ErrorKind::io, source,
             ": no peft_type string");
  config.peft_type = type->get<std::string>();
  return config;
}

/// Reads and parses `<dir>/adapter_config.json`.
inline AdapterConfigFile read_adapter_config(const std::filesystem::path& dir,
                                             std::uint64_t max_bytes = std::uint64_t{16} << 20) {
  const std::filesystem::path path = dir / kAdapterConfigName;
  return parse_adapter_config(detail::read_file_text(path, max_bytes), detail::quoted(path));
}

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

/// Writes the two files into `dir` (created if missing) as one transaction: every save format
/// goes through here, so every save is atomic as a whole and keeps the directory's other files.
inline void commit_adapter_files(const std::filesystem::path& dir, const std::string& config,
                                 SafetensorsWriter& weights) {
  weights.set_metadata("format", "pt");
  weights.set_metadata(kAdapterConfigHashKey, sha256_hex(config));
  DirectoryTransaction save(dir, "save_adapter");
  save.write(kAdapterWeightsName, [&](auto&& sink) { weights.write_to(sink); });
  save.write(kAdapterConfigName, config);
  save.commit();
}

}  // namespace detail
}  // namespace peft
