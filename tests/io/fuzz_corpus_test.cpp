// Replays the fuzzers' seed corpora (tests/fuzz/corpus for safetensors files,
// tests/fuzz/config_corpus for adapter_config.json) through the fuzz targets, so every build
// (and the sanitizer build, scripts/sanitize) runs them; the fuzzers themselves need clang
// (scripts/fuzz).

#include <gtest/gtest.h>

#include "fuzz/config_fuzz_target.hpp"
#include "fuzz/safetensors_fuzz_target.hpp"
#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

TEST(FuzzCorpus, EverySeedRunsCleanly) {
  const fs::path corpus(PEFT_FUZZ_CORPUS_DIR);
  int files = 0, accepted = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    if (!entry.is_regular_file()) continue;
    const auto bytes = read_file(entry.path());
    const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
    EXPECT_EQ(fuzz::run_one(data, bytes.size()), 0) << entry.path();
    try {
      SafetensorsReader::from_memory(bytes);
      ++accepted;
    } catch (const Error&) {
      EXPECT_NE(entry.path().filename().string().rfind("valid_", 0), 0u)
          << entry.path() << " is refused";
    }
    ++files;
  }
  EXPECT_GE(files, 8);
  EXPECT_GE(accepted, 4);  // the corpus has valid files to mutate, not only broken ones
}

TEST(FuzzCorpus, EveryConfigSeedRunsCleanly) {
  const fs::path corpus(PEFT_FUZZ_CONFIG_CORPUS_DIR);
  int files = 0, accepted = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    if (!entry.is_regular_file()) continue;
    const auto bytes = read_file(entry.path());
    const bool ok =
        fuzz::run_config(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    // Seeds are named for what they are: valid_* configs load, bad_* are refused.
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(ok, name.rfind("valid_", 0) == 0) << entry.path();
    accepted += ok;
    ++files;
  }
  EXPECT_GE(files, 8);
  EXPECT_GE(accepted, 4);  // every adapter type's config, to mutate
}

}  // namespace
}  // namespace peft::test
