#pragma once
// The body of the safetensors fuzzer, shared by the libFuzzer binary (safetensors_fuzz.cpp)
// and by io_test, which replays the seed corpus. Any input may be refused with peft::Error;
// anything else (a crash, a sanitizer report, another exception, an accepted file that does
// not survive a write/read round trip) is a bug.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <peft/io/safetensors.hpp>

namespace peft::fuzz {

inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "safetensors fuzz: %s\n", what);
    std::abort();
  }
}

template <class T>
void try_read(const SafetensorsReader& reader, const SafetensorsTensorInfo& t) {
  try {
    const Matrix<T, Cpu> m = reader.read_matrix<T>(t.name);
    check(m.size() == t.numel(), "read_matrix returned the wrong number of elements");
  } catch (const Error& e) {
    check(e.kind() == ErrorKind::io, "read_matrix threw a non-io error");
  }
}

/// Parses `data` as a safetensors file; reads every tensor it accepts in every way; writes the
/// accepted file again and checks that the copy reads back the same.
inline int run_one(const std::uint8_t* data, std::size_t size) {
  const auto bytes = std::as_bytes(std::span(data, size));
  try {
    const SafetensorsReader reader =
        SafetensorsReader::from_memory(bytes, "fuzz", {.max_header_bytes = 1 << 20});
    SafetensorsWriter writer;
    for (const auto& [k, v] : reader.metadata()) writer.set_metadata(k, v);
    for (const SafetensorsTensorInfo& t : reader.tensors()) {
      const std::vector<std::byte> raw = reader.read_bytes(t.name);
      check(raw.size() == t.nbytes(), "read_bytes returned the wrong size");
      try_read<float>(reader, t);
      try_read<double>(reader, t);
      try_read<std::int64_t>(reader, t);
      try_read<std::uint8_t>(reader, t);
      try_read<bool>(reader, t);
      writer.add_raw(t.name, t.dtype, t.shape, raw);
    }
    std::vector<std::byte> copy;
    try {
      copy = writer.serialize();
    } catch (const Error&) {
      // Names or metadata that are not valid UTF-8 cannot be written back; nlohmann accepts
      // only valid UTF-8 on parsing, so this should not happen.
      check(false, "an accepted file could not be written back");
    }
    const SafetensorsReader again = SafetensorsReader::from_memory(copy, "fuzz copy");
    check(again.tensors().size() == reader.tensors().size(), "the copy lost tensors");
    check(again.metadata() == reader.metadata(), "the copy changed the metadata");
    for (const SafetensorsTensorInfo& t : reader.tensors()) {
      const SafetensorsTensorInfo* u = again.find(t.name);
      check(u != nullptr && u->dtype == t.dtype && u->shape == t.shape,
            "the copy changed a tensor");
      check(again.read_bytes(t.name) == reader.read_bytes(t.name), "the copy changed the data");
    }
  } catch (const Error& e) {
    check(e.kind() == ErrorKind::io, "the parser threw a non-io error");
  }
  return 0;
}

}  // namespace peft::fuzz
