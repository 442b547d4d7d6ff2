#pragma once
// Helpers of the checkpoint tests: scratch directories, crafted safetensors bytes, the golden
// data folder.

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <peft/io/peft_format.hpp>

#include "util/test_util.hpp"

namespace peft::test {

namespace fs = std::filesystem;

/// A fresh directory under the system's temporary directory, removed with its contents when
/// the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    static std::atomic<unsigned> counter{0};
    std::random_device seed;
    path_ = fs::temp_directory_path() /
            detail::concat("peft_io_test_", ::getpid(), "_", counter++, "_", seed());
    fs::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const noexcept { return path_; }
  fs::path operator/(std::string_view name) const { return path_ / name; }

 private:
  fs::path path_;
};

using json = nlohmann::ordered_json;

/// Frozen layers of the given [out, in] shapes (stored [in, out] with fan_in_fan_out), owned,
/// by module name: random weights and biases, the same for the same names and shapes.
template <class T>
struct OwnedBase {
  std::vector<std::string> names;
  std::vector<Matrix<T, Cpu>> weights, biases;
  BaseModel<T, Cpu> model;

  OwnedBase(std::vector<std::string> modules, std::vector<std::pair<index_t, index_t>> shapes,
            bool fan_in_fan_out = false)
      : names(std::move(modules)) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto [out, in] = shapes[i];
      weights.push_back(fan_in_fan_out ? random_matrix<T>(in, out, 1 + std::uint32_t(i))
                                       : random_matrix<T>(out, in, 1 + std::uint32_t(i)));
      biases.push_back(random_matrix<T>(1, out, 100 + std::uint32_t(i)));
    }
    for (std::size_t i = 0; i < names.size(); ++i)
      model[names[i]] = {weights[i].view(),
                         VectorView<const T, Cpu>(biases[i].data(), biases[i].cols())};
  }
};

/// An attention and an MLP projection: the modules of the NOLA and LoRA-XS checkpoint tests.
inline const std::vector<std::string> kTwoModules = {"model.layers.0.self_attn.q_proj",
                                                     "model.layers.0.mlp.down_proj"};

inline fs::path data_dir() {
  return fs::path(PEFT_TEST_DATA_DIR);
}

inline std::vector<std::byte> to_bytes(std::string_view text) {
  const auto b = std::as_bytes(std::span(text.data(), text.size()));
  return {b.begin(), b.end()};
}

/// A safetensors file: the 8-byte length (of `header`, unless `length` overrides it), the
/// header text as given (no padding), then `data`.
inline std::vector<std::byte> craft(std::string_view header, std::vector<std::byte> data = {},
                                    std::optional<std::uint64_t> length = std::nullopt) {
  std::vector<std::byte> out(8);
  detail::store_little_endian<std::uint64_t>(out.data(), length.value_or(header.size()));
  const auto h = to_bytes(header);
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// n bytes of a recognisable pattern.
inline std::vector<std::byte> pattern_bytes(std::size_t n, unsigned start = 1) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = std::byte(static_cast<unsigned char>(start + i));
  return out;
}

inline void write_file(const fs::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}
inline void write_text(const fs::path& path, std::string_view text) {
  write_file(path, std::as_bytes(std::span(text.data(), text.size())));
}

inline std::vector<std::byte> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto b = std::as_bytes(std::span(chars));
  return {b.begin(), b.end()};
}
inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Files in `dir` whose names contain ".tmp-" (left-over temporary files of atomic writes).
inline std::vector<std::string> temp_files(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos)
      names.push_back(e.path().filename().string());
  return names;
}

}  // namespace peft::test
