// libFuzzer entry point over the safetensors parser. Build and run with scripts/fuzz.

#include "fuzz/safetensors_fuzz_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return peft::fuzz::run_one(data, size);
}
