#pragma once
// The body of the adapter_config.json fuzzer, shared by the libFuzzer binary (config_fuzz.cpp)
// and by io_test, which replays the seed corpus (tests/fuzz/config_corpus). The input is parsed
// as load_adapter parses a config (parse_adapter_config, then the format's FileConfig::from_json
// for its peft_type, pattern dictionaries included), and every accepted config resolves the
// per-module values of a few module names as a load would. Any input may be refused with an io
// peft::Error; anything else (a crash, a sanitizer report, another exception) is a bug.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <peft/io/checkpoint.hpp>
#include <peft/model/adapter_types.hpp>

namespace peft::fuzz {

/// Module names of the kinds PEFT checkpoints hold (Llama, GPT-2, a bare name).
inline constexpr std::string_view kConfigFuzzModules[] = {
    "model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj",
    "transformer.h.3.attn.c_attn", "q_proj", "a.b-c_d.0"};

inline void config_check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "config fuzz: %s\n", what);
    std::abort();
  }
}

/// Returns whether the config was accepted (for the corpus test); crashes on a bug.
inline bool run_config(const std::uint8_t* data, std::size_t size) {
  bool accepted = false;
  try {
    const AdapterConfigFile file =
        parse_adapter_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    AdapterFormats::for_each([&]<class F>() {
      if (file.peft_type != F::peft_type) return;
      const auto config = F::FileConfig::from_json(file.json, "fuzz", LoadOptions{});
      if constexpr (requires { config.for_module(std::string_view{}); })
        for (std::string_view module : kConfigFuzzModules) (void)config.for_module(module);
      accepted = true;
    });
  } catch (const Error& e) {
    config_check(e.kind() == ErrorKind::io, "a config was refused with a non-io error");
  }
  return accepted;
}

}  // namespace peft::fuzz
