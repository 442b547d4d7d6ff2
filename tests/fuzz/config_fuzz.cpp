// libFuzzer entry point over adapter_config.json parsing. Build and run with scripts/fuzz.

#include "fuzz/config_fuzz_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)peft::fuzz::run_config(data, size);
  return 0;
}
