// Replays the fuzzer's seed corpus (tests/fuzz/corpus) through the fuzz target, so every build
// (and the sanitizer build, scripts/sanitize) runs it; the fuzzer itself needs clang
// (scripts/fuzz).

#include <gtest/gtest.h>

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
    }
    ++files;
  }
  EXPECT_GE(files, 8);
  EXPECT_GE(accepted, 4);  // the corpus has valid files to mutate, not only broken ones
}

}  // namespace
}  // namespace peft::test
