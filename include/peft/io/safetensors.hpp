#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON header, then the raw little-endian tensor data.
//
//   {"__metadata__": {"format": "pt"},
//    "name": {"dtype": "F32", "shape": [4, 3], "data_offsets": [begin, end]}, ...}
//
// data_offsets are relative to the data section (which starts at 8 + N). The reader treats
// every file as hostile: the header size is capped, the JSON is parsed with a depth limit and
// duplicate keys and NUL bytes are refused, and every tensor's dtype, shape and offsets are
// checked before any tensor is read: byte size = product of the shape x element size =
// end - begin, and the tensors, sorted by offsets, cover the data section exactly (no overlap,
// no gap, no trailing bytes), as the reference parser requires. The exact cover is what
// catches a header length cut by a few bytes (only padding lost, the JSON still parses): every
// tensor would otherwise be read a few bytes off. Parsing takes linear time (see json.hpp). A
// tensor's bytes are read only when asked for, and always copied out with memcpy, so mapped
// data is never accessed at an unaligned address.
//
// The writer lays tensors out contiguously (largest element size first, so every tensor is
// aligned to its element size; gaps are not allowed by the reference implementation) and pads
// the header with spaces to a multiple of 8 bytes, as the reference implementation does.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/buffer.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "file.hpp"
#include "float_bits.hpp"
#include "json.hpp"

namespace peft {

/// Element types of the format. The first ten can be converted into host matrices; the others
/// are recognised (so files holding them open) and readable as raw bytes.
enum class SafetensorsDtype {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
  U64,
  U32,
  U16,
  F8_E4M3,
  F8_E5M2,
};

inline const char* to_string(SafetensorsDtype dtype) noexcept {
  switch (dtype) {
    case SafetensorsDtype::F64:
      return "F64";
    case SafetensorsDtype::F32:
      return "F32";
    case SafetensorsDtype::F16:
      return "F16";
    case SafetensorsDtype::BF16:
      return "BF16";
    case SafetensorsDtype::I64:
      return "I64";
    case SafetensorsDtype::I32:
      return "I32";
    case SafetensorsDtype::I16:
      return "I16";
    case SafetensorsDtype::I8:
      return "I8";
    case SafetensorsDtype::U8:
      return "U8";
    case SafetensorsDtype::BOOL:
      return "BOOL";
    case SafetensorsDtype::U64:
      return "U64";
    case SafetensorsDtype::U32:
      return "U32";
    case SafetensorsDtype::U16:
      return "U16";
    case SafetensorsDtype::F8_E4M3:
      return "F8_E4M3";
    case SafetensorsDtype::F8_E5M2:
      return "F8_E5M2";
  }
  return "?";
}

/// The dtype spelled `name` in a header, or nothing for a name the format does not define here.
inline std::optional<SafetensorsDtype> safetensors_dtype_from_string(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(SafetensorsDtype::F8_E5M2); ++i) {
    const auto dtype = static_cast<SafetensorsDtype>(i);
    if (name == to_string(dtype)) return dtype;
  }
  return std::nullopt;
}

/// Bytes per element.
inline std::size_t element_size(SafetensorsDtype dtype) noexcept {
  switch (dtype) {
    case SafetensorsDtype::F64:
    case SafetensorsDtype::I64:
    case SafetensorsDtype::U64:
      return 8;
    case SafetensorsDtype::F32:
    case SafetensorsDtype::I32:
    case SafetensorsDtype::U32:
      return 4;
    case SafetensorsDtype::F16:
    case SafetensorsDtype::BF16:
    case SafetensorsDtype::I16:
    case SafetensorsDtype::U16:
      return 2;
    default:
      return 1;
  }
}

/// The dtype a host element type is written as by default (F32 for float, I64 for int64, ...).
template <class T>
constexpr SafetensorsDtype native_safetensors_dtype() {
  if constexpr (std::is_same_v<T, double>)
    return SafetensorsDtype::F64;
  else if constexpr (std::is_same_v<T, float>)
    return SafetensorsDtype::F32;
  else if constexpr (std::is_same_v<T, bool>)
    return SafetensorsDtype::BOOL;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return SafetensorsDtype::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return SafetensorsDtype::I32;
  else if constexpr (std::is_same_v<T, std::int16_t>)
    return SafetensorsDtype::I16;
  else if constexpr (std::is_same_v<T, std::int8_t>)
    return SafetensorsDtype::I8;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return SafetensorsDtype::U64;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return SafetensorsDtype::U32;
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    return SafetensorsDtype::U16;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return SafetensorsDtype::U8;
  else
    static_assert(sizeof(T) == 0, "no safetensors dtype for this element type");
}

/// One entry of the header, validated.
struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  std::vector<index_t> shape;  // empty for a scalar
  std::uint64_t begin = 0;     // byte offsets in the data section: [begin, end)
  std::uint64_t end = 0;

  index_t numel() const noexcept {
    index_t n = 1;
    for (index_t d : shape) n *= d;  // validated not to overflow
    return n;
  }
  std::uint64_t nbytes() const noexcept { return end - begin; }
  /// The tensor seen as a matrix: scalar 1 x 1, vector 1 x n, [d0, ..., dk] as
  /// (d0 ... d(k-1)) x dk.
  index_t matrix_rows() const noexcept {
    index_t rows = 1;
    for (std::size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    return rows;
  }
  index_t matrix_cols() const noexcept { return shape.empty() ? 1 : shape.back(); }
};

/// Whether a reader reads tensors through a file stream or a read-only memory map.
enum class SafetensorsAccess { stream, mmap };

struct SafetensorsReadOptions {
  /// Largest JSON header accepted, in bytes (the reference implementation uses 100 MB).
  std::uint64_t max_header_bytes = 100'000'000;
  SafetensorsAccess access = SafetensorsAccess::stream;
};

namespace detail {

/// Nesting deeper than this is refused while parsing (a valid header nests 3 deep).
inline constexpr int kSafetensorsMaxJsonDepth = 16;

template <class U>
U load_little_endian(const std::byte* p) noexcept {
  U value;
  std::memcpy(&value, p, sizeof(U));
  if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1) {
    auto bytes = std::bit_cast<std::array<unsigned char, sizeof(U)>>(value);
    std::reverse(bytes.begin(), bytes.end());
    value = std::bit_cast<U>(bytes);
  }
  return value;
}

template <class U>
void store_little_endian(std::byte* p, U value) noexcept {
  if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1) {
    auto bytes = std::bit_cast<std::array<unsigned char, sizeof(U)>>(value);
    std::reverse(bytes.begin(), bytes.end());
    value = std::bit_cast<U>(bytes);
  }
  std::memcpy(p, &value, sizeof(U));
}

inline bool is_float_dtype(SafetensorsDtype d) {
  return d == SafetensorsDtype::F64 || d == SafetensorsDtype::F32 || d == SafetensorsDtype::F16 ||
         d == SafetensorsDtype::BF16 || d == SafetensorsDtype::F8_E4M3 ||
         d == SafetensorsDtype::F8_E5M2;
}

/// Inclusive range of an integer dtype, as (signed min, unsigned max).
inline std::pair<std::int64_t, std::uint64_t> integer_range(SafetensorsDtype d) {
  switch (d) {
    case SafetensorsDtype::I64:
      return {std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()};
    case SafetensorsDtype::I32:
      return {std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()};
    case SafetensorsDtype::I16:
      return {std::numeric_limits<std::int16_t>::min(), std::numeric_limits<std::int16_t>::max()};
    case SafetensorsDtype::I8:
      return {std::numeric_limits<std::int8_t>::min(), std::numeric_limits<std::int8_t>::max()};
    case SafetensorsDtype::U64:
      return {0, std::numeric_limits<std::uint64_t>::max()};
    case SafetensorsDtype::U32:
      return {0, std::numeric_limits<std::uint32_t>::max()};
    case SafetensorsDtype::U16:
      return {0, std::numeric_limits<std::uint16_t>::max()};
    case SafetensorsDtype::U8:
      return {0, std::numeric_limits<std::uint8_t>::max()};
    default:
      return {0, 0};
  }
}

/// Empty when a tensor of dtype `d` converts exactly into T; otherwise why not.
template <class T>
std::string conversion_problem(SafetensorsDtype d) {
  const bool is_int = !is_float_dtype(d) && d != SafetensorsDtype::BOOL;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (d == SafetensorsDtype::F32 || d == SafetensorsDtype::F16 || d == SafetensorsDtype::BF16)
      return {};
    if (d == SafetensorsDtype::F64)
      return std::is_same_v<T, double> ? std::string()
                                       : std::string("F64 into float would lose precision");
    if (d == SafetensorsDtype::F8_E4M3 || d == SafetensorsDtype::F8_E5M2)
      return detail::concat(to_string(d), " is not converted; read its raw bytes");
    return detail::concat(to_string(d), " is not a floating-point dtype");
  } else if constexpr (std::is_same_v<T, bool>) {
    return d == SafetensorsDtype::BOOL ? std::string()
                                       : detail::concat(to_string(d), " is not BOOL");
  } else if constexpr (std::is_integral_v<T>) {
    if (!is_int) return detail::concat(to_string(d), " is not an integer dtype");
    const auto [lo, hi] = integer_range(d);
    const bool fits = lo >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
                      hi <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
    return fits ? std::string() : detail::concat(to_string(d), " does not fit the element type");
  } else {
    static_assert(sizeof(T) == 0, "read_matrix supports float, double, bool and integers");
  }
}

template <class T>
const char* element_type_name() {
  if constexpr (std::is_same_v<T, float>)
    return "float";
  else if constexpr (std::is_same_v<T, double>)
    return "double";
  else if constexpr (std::is_same_v<T, bool>)
    return "bool";
  else if constexpr (std::is_signed_v<T>)
    return sizeof(T) == 8 ? "int64" : sizeof(T) == 4 ? "int32" : sizeof(T) == 2 ? "int16" : "int8";
  else
    return sizeof(T) == 8   ? "uint64"
           : sizeof(T) == 4 ? "uint32"
           : sizeof(T) == 2 ? "uint16"
                            : "uint8";
}

/// Decodes `count` elements of dtype d from little-endian bytes into T (conversion checked
/// before). Returns false when a BOOL byte is neither 0 nor 1.
template <class T>
bool decode_elements(SafetensorsDtype d, const std::byte* src, std::size_t count, T* dst) {
  auto each = [&](auto load) {
    for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<T>(load(i));
  };
  if constexpr (std::is_floating_point_v<T>) {
    switch (d) {
      case SafetensorsDtype::F64:
        each([&](std::size_t i) {
          return std::bit_cast<double>(load_little_endian<std::uint64_t>(src + 8 * i));
        });
        break;
      case SafetensorsDtype::F32:
        each([&](std::size_t i) {
          return std::bit_cast<float>(load_little_endian<std::uint32_t>(src + 4 * i));
        });
        break;
      case SafetensorsDtype::F16:
        each([&](std::size_t i) {
          return half_bits_to_float(load_little_endian<std::uint16_t>(src + 2 * i));
        });
        break;
      case SafetensorsDtype::BF16:
        each([&](std::size_t i) {
          return bfloat16_bits_to_float(load_little_endian<std::uint16_t>(src + 2 * i));
        });
        break;
      default:
        break;
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    for (std::size_t i = 0; i < count; ++i) {
      const auto byte = std::to_integer<unsigned>(src[i]);
      if (byte > 1) return false;
      dst[i] = byte == 1;
    }
  } else {
    switch (d) {
      case SafetensorsDtype::I64:
        each([&](std::size_t i) { return load_little_endian<std::int64_t>(src + 8 * i); });
        break;
      case SafetensorsDtype::I32:
        each([&](std::size_t i) { return load_little_endian<std::int32_t>(src + 4 * i); });
        break;
      case SafetensorsDtype::I16:
        each([&](std::size_t i) { return load_little_endian<std::int16_t>(src + 2 * i); });
        break;
      case SafetensorsDtype::I8:
        each([&](std::size_t i) { return load_little_endian<std::int8_t>(src + i); });
        break;
      case SafetensorsDtype::U64:
        each([&](std::size_t i) { return load_little_endian<std::uint64_t>(src + 8 * i); });
        break;
      case SafetensorsDtype::U32:
        each([&](std::size_t i) { return load_little_endian<std::uint32_t>(src + 4 * i); });
        break;
      case SafetensorsDtype::U16:
        each([&](std::size_t i) { return load_little_endian<std::uint16_t>(src + 2 * i); });
        break;
      case SafetensorsDtype::U8:
        each([&](std::size_t i) { return load_little_endian<std::uint8_t>(src + i); });
        break;
      default:
        break;
    }
  }
  return true;
}

}  // namespace detail

/// Reads a safetensors file: the header at once (validated), each tensor when asked for.
/// Move-only. Reads of any kind (positioned reads of the file, a map, memory) may run
/// concurrently.
class SafetensorsReader {
 public:
  /// Opens and validates `path`. Reads the 8-byte length and the header only.
  static SafetensorsReader open(const std::filesystem::path& path,
                                const SafetensorsReadOptions& options = {}) {
    SafetensorsReader reader;
    reader.source_ = path.string();
    if (options.access == SafetensorsAccess::mmap) {
      reader.mapping_ = std::make_unique<detail::MappedFile>(path);
      reader.memory_ = reader.mapping_->bytes();
      reader.parse_from_memory(options);
      return reader;
    }
    // Refuses a FIFO, device or directory by name, without blocking on it.
    reader.file_ = std::make_unique<detail::InputFile>(path);
    reader.file_size_ = reader.file_->size();
    std::byte prefix[8];
    reader.check_length_prefix(options);
    reader.read_stream(0, 8, prefix);
    const std::uint64_t header_len = detail::load_little_endian<std::uint64_t>(prefix);
    reader.check_header_length(header_len, options);
    std::string header(static_cast<std::size_t>(header_len), '\0');
    reader.read_stream(8, header_len, reinterpret_cast<std::byte*>(header.data()));
    reader.parse_header(header, header_len);
    return reader;
  }

  /// Parses a file held in memory. The bytes are not copied: they must outlive the reader.
  static SafetensorsReader from_memory(std::span<const std::byte> bytes,
                                       std::string source = "<memory>",
                                       const SafetensorsReadOptions& options = {}) {
    SafetensorsReader reader;
    reader.source_ = std::move(source);
    reader.memory_ = bytes;
    reader.parse_from_memory(options);
    return reader;
  }

  SafetensorsReader(SafetensorsReader&&) noexcept = default;
  SafetensorsReader& operator=(SafetensorsReader&&) noexcept = default;
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  /// The file name (or the name given to from_memory), as used in error messages.
  const std::string& source() const noexcept { return source_; }
  /// The tensors in the header's order.
  const std::vector<SafetensorsTensorInfo>& tensors() const noexcept { return tensors_; }
  /// `__metadata__` (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Bytes of the data section.
  std::uint64_t data_bytes() const noexcept { return data_size_; }

  const SafetensorsTensorInfo* find(std::string_view name) const noexcept {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }
  /// The tensor `name`; an io error when the file has none.
  const SafetensorsTensorInfo& info(std::string_view name) const {
    const SafetensorsTensorInfo* t = find(name);
    PEFT_CHECK(t != nullptr, ErrorKind::io, "safetensors: ", source_, ": no tensor '", name, "'");
    return *t;
  }

  /// The tensor's raw bytes (little-endian elements), copied.
  std::vector<std::byte> read_bytes(std::string_view name) const {
    const SafetensorsTensorInfo& t = info(name);
    std::vector<std::byte> out(static_cast<std::size_t>(t.nbytes()));
    visit_bytes(t, [&](const std::byte* p, std::size_t n, std::uint64_t offset) {
      std::memcpy(out.data() + offset, p, n);
    });
    return out;
  }

  /// The tensor as an owning matrix (see SafetensorsTensorInfo::matrix_rows), converted to T.
  /// Conversions must be exact: F32/F16/BF16 -> float, F64/F32/F16/BF16 -> double, integers
  /// into integer types that hold their whole range, BOOL -> bool. Others are an io error.
  template <class T>
  Matrix<T, Cpu> read_matrix(std::string_view name) const {
    const SafetensorsTensorInfo& t = info(name);
    Matrix<T, Cpu> m(t.matrix_rows(), t.matrix_cols());
    read_into(name, m.view());
    return m;
  }

  /// Copies the tensor into dst, whose shape must be the tensor's matrix shape (strides are
  /// fine), converting as read_matrix does.
  template <class T>
  void read_into(std::string_view name, MatrixView<T, Cpu> dst) const {
    const SafetensorsTensorInfo& t = info(name);
    const std::string problem = detail::conversion_problem<T>(t.dtype);
    PEFT_CHECK(problem.empty(), ErrorKind::io, "safetensors: ", source_, ": tensor '", name,
               "': cannot read ", to_string(t.dtype), " into ", detail::element_type_name<T>(),
               ": ", problem);
    PEFT_CHECK(dst.rows() == t.matrix_rows() && dst.cols() == t.matrix_cols(), ErrorKind::io,
               "safetensors: ", source_, ": tensor '", name, "' is ", shape_text(t.shape), " (a ",
               t.matrix_rows(), " x ", t.matrix_cols(), " matrix), the destination is ",
               shape_string(dst));
    const std::size_t esize = element_size(t.dtype);
    const index_t cols = dst.cols();
    visit_bytes(t, [&](const std::byte* p, std::size_t n, std::uint64_t offset) {
      // Chunks hold whole elements; element e goes to (e / cols, e % cols).
      std::size_t count = n / esize;
      auto first = static_cast<index_t>(offset / esize);
      while (count > 0) {
        const index_t row = first / cols, col = first % cols;
        const auto run =
            static_cast<std::size_t>(std::min<index_t>(cols - col, static_cast<index_t>(count)));
        const bool ok = detail::decode_elements(t.dtype, p, run, &dst(row, col));
        PEFT_CHECK(ok, ErrorKind::io, "safetensors: ", source_, ": tensor '", name,
                   "': a BOOL element is neither 0 nor 1");
        p += run * esize;
        first += static_cast<index_t>(run);
        count -= run;
      }
    });
  }

  /// "[2, 3]" for messages.
  static std::string shape_text(const std::vector<index_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }

 private:
  SafetensorsReader() = default;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::io, detail::concat("safetensors: ", source_, ": ", what));
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& what) const {
    fail(detail::concat("tensor '", name, "': ", what));
  }

  void check_length_prefix(const SafetensorsReadOptions&) const {
    if (file_size_ < 8)
      fail(detail::concat("the file is ", file_size_,
                          " bytes, shorter than the 8-byte header length that starts the format"));
  }
  void check_header_length(std::uint64_t header_len, const SafetensorsReadOptions& options) const {
    if (header_len > options.max_header_bytes)
      fail(detail::concat("the header length is ", header_len, " bytes, more than the limit of ",
                          options.max_header_bytes, " (SafetensorsReadOptions::max_header_bytes)"));
    if (header_len > file_size_ - 8)
      fail(detail::concat("the header length is ", header_len, " bytes but only ", file_size_ - 8,
                          " bytes follow the length (truncated file?)"));
    if (header_len < 2)
      fail(detail::concat("the header length is ", header_len, ", too short for JSON"));
  }

  void parse_from_memory(const SafetensorsReadOptions& options) {
    file_size_ = memory_.size();
    check_length_prefix(options);
    const std::uint64_t header_len = detail::load_little_endian<std::uint64_t>(memory_.data());
    check_header_length(header_len, options);
    const std::string_view header(reinterpret_cast<const char*>(memory_.data() + 8),
                                  static_cast<std::size_t>(header_len));
    parse_header(header, header_len);
  }

  void read_stream(std::uint64_t offset, std::uint64_t size, std::byte* out) const {
    if (file_->read_at(offset, static_cast<std::size_t>(size), out) != size)
      fail(detail::concat("could not read ", size, " bytes at offset ", offset,
                          " (the file changed or is truncated?)"));
  }

  /// Calls f(pointer, bytes, offset within the tensor) over the tensor's bytes: once for
  /// memory and maps, in chunks of whole elements for streams.
  template <class F>
  void visit_bytes(const SafetensorsTensorInfo& t, F&& f) const {
    const std::uint64_t start = data_start_ + t.begin;
    const std::uint64_t size = t.nbytes();
    if (size == 0) return;
    if (file_ == nullptr) {
      f(memory_.data() + start, static_cast<std::size_t>(size), std::uint64_t{0});
      return;
    }
    constexpr std::uint64_t kChunk = std::uint64_t{1} << 20;  // a multiple of every size
    std::vector<std::byte> buffer(static_cast<std::size_t>(std::min(size, kChunk)));
    for (std::uint64_t done = 0; done < size;) {
      const std::uint64_t n = std::min(size - done, kChunk);
      read_stream(start + done, n, buffer.data());
      f(buffer.data(), static_cast<std::size_t>(n), done);
      done += n;
    }
  }

  /// A non-negative integer that fits index_t, or a failure naming `what`.
  index_t json_size(const std::string& name, const nlohmann::ordered_json& j,
                    const char* what) const {
    if (!j.is_number_integer())
      fail_tensor(name,
                  detail::concat(what, " must be a non-negative integer, got ",
                                 j.is_number_float() ? "a non-integer number" : j.type_name()));
    if (j.is_number_unsigned()) {
      const auto v = j.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()))
        fail_tensor(name, detail::concat(what, " ", v, " is too large"));
      return static_cast<index_t>(v);
    }
    const auto v = j.get<std::int64_t>();
    if (v < 0) fail_tensor(name, detail::concat(what, " is negative (", v, ")"));
    return v;
  }

  void parse_header(std::string_view header, std::uint64_t header_len) {
    data_start_ = 8 + header_len;
    data_size_ = file_size_ - data_start_;
    if (header.empty() || header.front() != '{')
      fail("the header does not start with '{' (not a safetensors file?)");

    nlohmann::ordered_json root;
    std::string error;
    if (!detail::parse_json_ordered(header, detail::kSafetensorsMaxJsonDepth, root, error))
      fail(detail::concat("the header: ", error));
    if (!root.is_object())
      fail(detail::concat("the header is a JSON ", root.type_name(), ", not an object"));

    tensors_.reserve(root.size());
    for (const auto& [name, entry] : root.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object())
          fail(
              detail::concat("__metadata__ must be an object of strings, got ", entry.type_name()));
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string())
            fail(detail::concat("__metadata__ must map strings to strings; '", key, "' is a ",
                                value.type_name()));
          metadata_.emplace(key, value.get<std::string>());
        }
        continue;
      }
      tensors_.push_back(parse_entry(name, entry));
    }

    check_exact_cover();
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  /// The tensors, sorted by (begin, end), must follow each other without overlap or gap from
  /// byte 0 to the end of the data section (an empty tensor sits where the previous one ends).
  void check_exact_cover() const {
    std::vector<std::size_t> order(tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return tensors_[a].begin != tensors_[b].begin ? tensors_[a].begin < tensors_[b].begin
                                                    : tensors_[a].end < tensors_[b].end;
    });
    std::uint64_t covered = 0;  // the data section's bytes [0, covered) belong to tensors
    const SafetensorsTensorInfo* previous = nullptr;
    for (std::size_t i : order) {
      const SafetensorsTensorInfo& t = tensors_[i];
      if (t.begin < covered)
        fail_tensor(t.name, detail::concat("data_offsets [", t.begin, ", ", t.end,
                                           "] overlap tensor '", previous->name, "' at [",
                                           previous->begin, ", ", previous->end, "]"));
      if (t.begin > covered)
        fail_tensor(t.name, detail::concat("data_offsets [", t.begin, ", ", t.end,
                                           "] leave a gap: bytes [", covered, ", ", t.begin,
                                           ") of the data section belong to no tensor (the format "
                                           "requires the tensors to cover the data exactly)"));
      covered = t.end;
      previous = &t;
    }
    if (covered != data_size_)
      fail(detail::concat("the tensors cover ", covered, " bytes of the ", data_size_,
                          "-byte data section: the last ", data_size_ - covered,
                          " bytes belong to no tensor (the format requires the tensors to cover "
                          "the data exactly; a cut header length or appended bytes?)"));
  }

  SafetensorsTensorInfo parse_entry(const std::string& name,
                                    const nlohmann::ordered_json& entry) const {
    if (!entry.is_object())
      fail_tensor(name, detail::concat("the entry must be an object, got ", entry.type_name()));
    SafetensorsTensorInfo t;
    t.name = name;

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) fail_tensor(name, "no dtype");
    if (!dtype_it->is_string())
      fail_tensor(name, detail::concat("dtype must be a string, got ", dtype_it->type_name()));
    const auto dtype = safetensors_dtype_from_string(dtype_it->get<std::string>());
    if (!dtype)
      fail_tensor(name,
                  detail::concat("unknown dtype '", dtype_it->get<std::string>(),
                                 "' (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL U64 U32 U16 "
                                 "F8_E4M3 F8_E5M2)"));
    t.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) fail_tensor(name, "no shape");
    if (!shape_it->is_array())
      fail_tensor(name, detail::concat("shape must be an array, got ", shape_it->type_name()));
    // Every partial product of the non-zero dimensions must fit index_t, so that numel and
    // the matrix view's rows are always computable.
    index_t product = 1;
    for (const auto& d : *shape_it) {
      const index_t dim = json_size(name, d, "a shape dimension");
      t.shape.push_back(dim);
      if (dim != 0) {
        if (product > std::numeric_limits<index_t>::max() / dim)
          fail_tensor(name, detail::concat("shape ", shape_text(t.shape),
                                           "... has more elements than ", "fit a 64-bit count"));
        product *= dim;
      }
    }
    const index_t numel = t.numel();
    const std::uint64_t esize = element_size(t.dtype);
    if (static_cast<std::uint64_t>(numel) > std::numeric_limits<std::uint64_t>::max() / esize)
      fail_tensor(name, detail::concat("shape ", shape_text(t.shape), " of ", to_string(t.dtype),
                                       " overflows a 64-bit byte count"));
    const std::uint64_t nbytes = static_cast<std::uint64_t>(numel) * esize;

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end()) fail_tensor(name, "no data_offsets");
    if (!offsets_it->is_array() || offsets_it->size() != 2)
      fail_tensor(name, "data_offsets must be an array [begin, end]");
    t.begin = static_cast<std::uint64_t>(json_size(name, (*offsets_it)[0], "data_offsets begin"));
    t.end = static_cast<std::uint64_t>(json_size(name, (*offsets_it)[1], "data_offsets end"));
    if (t.end < t.begin)
      fail_tensor(
          name, detail::concat("data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
    if (t.end > data_size_)
      fail_tensor(name,
                  detail::concat("data_offsets [", t.begin, ", ", t.end,
                                 "] reach beyond the data section of ", data_size_, " bytes"));
    if (t.end - t.begin != nbytes)
      fail_tensor(name, detail::concat("shape ", shape_text(t.shape), " of ", to_string(t.dtype),
                                       " needs ", nbytes, " bytes, data_offsets [", t.begin, ", ",
                                       t.end, "] hold ", t.end - t.begin));
    return t;
  }

  std::string source_;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
  std::uint64_t file_size_ = 0;
  std::uint64_t data_start_ = 0;
  std::uint64_t data_size_ = 0;
  std::span<const std::byte> memory_;            // from_memory / mmap: the whole file
  std::unique_ptr<detail::MappedFile> mapping_;  // mmap
  std::unique_ptr<detail::InputFile> file_;      // stream
};

/// Collects tensors and metadata, then writes a safetensors file (atomically) or its bytes.
/// Tensors are encoded when added, so the views need not outlive the call.
class SafetensorsWriter {
 public:
  /// Adds `m` under `name`. Floating views may be written as F64, F32, F16 or BF16 (narrowing
  /// rounds to nearest even); other element types as their own dtype. The shape is the
  /// matrix's [rows, cols] unless `shape` gives another with as many elements ({} for a
  /// scalar, {n} for a vector, [a, b, c] ...).
  template <class T>
  void add(std::string name, MatrixView<const T, Cpu> m,
           std::optional<SafetensorsDtype> dtype = std::nullopt,
           std::optional<std::vector<index_t>> shape = std::nullopt) {
    const SafetensorsDtype d = dtype.value_or(native_safetensors_dtype<T>());
    if constexpr (std::is_floating_point_v<T>) {
      PEFT_CHECK_ARG(d == SafetensorsDtype::F64 || d == SafetensorsDtype::F32 ||
                         d == SafetensorsDtype::F16 || d == SafetensorsDtype::BF16,
                     "SafetensorsWriter::add: tensor '", name, "': a floating view cannot be ",
                     "written as ", to_string(d), " (F64, F32, F16 or BF16)");
    } else {
      PEFT_CHECK_ARG(d == native_safetensors_dtype<T>(), "SafetensorsWriter::add: tensor '", name,
                     "': ", detail::element_type_name<T>(), " elements are written as ",
                     to_string(native_safetensors_dtype<T>()), ", not ", to_string(d));
    }
    std::vector<index_t> s = shape.value_or(std::vector<index_t>{m.rows(), m.cols()});
    check_shape(name, s, m.size());
    const std::size_t esize = element_size(d);
    std::vector<std::byte> bytes(detail::checked_bytes(m.size(), esize, "SafetensorsWriter::add"));
    std::byte* out = bytes.data();
    for (index_t i = 0; i < m.rows(); ++i)
      for (index_t j = 0; j < m.cols(); ++j, out += esize) encode(d, m(i, j), out);
    add_encoded(std::move(name), d, std::move(s), std::move(bytes));
  }
  template <class T>
  void add(std::string name, MatrixView<T, Cpu> m,
           std::optional<SafetensorsDtype> dtype = std::nullopt,
           std::optional<std::vector<index_t>> shape = std::nullopt) requires(!std::is_const_v<T>) {
    add(std::move(name), MatrixView<const T, Cpu>(m), dtype, std::move(shape));
  }

  /// Adds a tensor from its raw little-endian bytes (for dtypes without a host type).
  void add_raw(std::string name, SafetensorsDtype dtype, std::vector<index_t> shape,
               std::span<const std::byte> bytes) {
    index_t numel = 1;
    for (index_t d : shape) {
      PEFT_CHECK_ARG(d >= 0, "SafetensorsWriter::add_raw: tensor '", name, "': negative dimension ",
                     d);
      numel = detail::checked_count(numel, d, "SafetensorsWriter::add_raw");
    }
    PEFT_CHECK_ARG(bytes.size() == detail::checked_bytes(numel, element_size(dtype),
                                                         "SafetensorsWriter::add_raw"),
                   "SafetensorsWriter::add_raw: tensor '", name, "' of shape ",
                   SafetensorsReader::shape_text(shape), " and dtype ", to_string(dtype), " needs ",
                   numel * index_t(element_size(dtype)), " bytes, got ", bytes.size());
    add_encoded(std::move(name), dtype, std::move(shape),
                std::vector<std::byte>(bytes.begin(), bytes.end()));
  }

  /// Sets a `__metadata__` entry (replacing an earlier value of the same key).
  void set_metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }

  std::size_t size() const noexcept { return tensors_.size(); }

  /// The JSON header with the padding (spaces up to a multiple of 8 bytes).
  std::string header() const {
    nlohmann::ordered_json root = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) meta[k] = v;
      root["__metadata__"] = std::move(meta);
    }
    const auto offsets = layout();
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      root[t.name] = {{"dtype", to_string(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offsets[i], offsets[i] + t.bytes.size()}}};
    }
    std::string text;
    try {
      text = root.dump();
    } catch (const nlohmann::json::exception& e) {
      throw Error(
          ErrorKind::invalid_argument,
          detail::concat("SafetensorsWriter: a name or metadata string is not valid UTF-8: ",
                         e.what()));
    }
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    return text;
  }

  /// The whole file.
  std::vector<std::byte> serialize() const {
    std::vector<std::byte> out;
    write_to([&](std::span<const std::byte> bytes) {
      out.insert(out.end(), bytes.begin(), bytes.end());
    });
    return out;
  }

  /// Writes the file atomically (temporary file, fsync, rename, fsync of the directory).
  void write(const std::filesystem::path& path) const {
    detail::AtomicFile file(path);
    write_to([&](std::span<const std::byte> bytes) { file.write(bytes); });
    file.commit();
    detail::sync_directory(path.parent_path());
  }

  /// Streams the file's bytes to sink(std::span<const std::byte>).
  template <class Sink>
  void write_to(Sink&& sink) const {
    const std::string text = header();
    std::byte length[8];
    detail::store_little_endian<std::uint64_t>(length, text.size());
    sink(std::span<const std::byte>(length, 8));
    sink(std::as_bytes(std::span<const char>(text.data(), text.size())));
    for (std::size_t i : data_order()) sink(std::span<const std::byte>(tensors_[i].bytes));
  }

 private:
  struct Tensor {
    std::string name;
    SafetensorsDtype dtype;
    std::vector<index_t> shape;
    std::vector<std::byte> bytes;
  };

  static void check_shape(const std::string& name, const std::vector<index_t>& shape,
                          index_t expected) {
    index_t numel = 1;
    for (index_t d : shape) {
      PEFT_CHECK_ARG(d >= 0, "SafetensorsWriter::add: tensor '", name, "': negative dimension ", d);
      numel = detail::checked_count(numel, d, "SafetensorsWriter::add");
    }
    PEFT_CHECK_ARG(numel == expected, "SafetensorsWriter::add: tensor '", name, "': shape ",
                   SafetensorsReader::shape_text(shape), " has ", numel,
                   " elements, the matrix has ", expected);
  }

  template <class T>
  static void encode(SafetensorsDtype d, T value, std::byte* out) {
    if constexpr (std::is_floating_point_v<T>) {
      switch (d) {
        case SafetensorsDtype::F64:
          detail::store_little_endian(out, std::bit_cast<std::uint64_t>(double(value)));
          break;
        case SafetensorsDtype::F32:
          detail::store_little_endian(out, std::bit_cast<std::uint32_t>(float(value)));
          break;
        case SafetensorsDtype::F16:
          detail::store_little_endian(out, float_to_half_bits(value));
          break;
        case SafetensorsDtype::BF16:
          detail::store_little_endian(out, float_to_bfloat16_bits(value));
          break;
        default:
          break;
      }
    } else if constexpr (std::is_same_v<T, bool>) {
      (void)d;
      out[0] = std::byte{static_cast<unsigned char>(value ? 1 : 0)};
    } else {
      (void)d;
      detail::store_little_endian(out, value);
    }
  }

  void add_encoded(std::string name, SafetensorsDtype dtype, std::vector<index_t> shape,
                   std::vector<std::byte> bytes) {
    PEFT_CHECK_ARG(name != "__metadata__",
                   "SafetensorsWriter: '__metadata__' is reserved and cannot name a tensor");
    PEFT_CHECK_ARG(names_.insert(name).second, "SafetensorsWriter: tensor '", name,
                   "' is added twice");
    tensors_.push_back({std::move(name), dtype, std::move(shape), std::move(bytes)});
  }

  /// Data order: larger elements first (stable), so every tensor starts aligned to its
  /// element size within the 8-aligned data section without gaps.
  std::vector<std::size_t> data_order() const {
    std::vector<std::size_t> order(tensors_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return element_size(tensors_[a].dtype) > element_size(tensors_[b].dtype);
    });
    return order;
  }
  std::vector<std::uint64_t> layout() const {
    std::vector<std::uint64_t> offsets(tensors_.size());
    std::uint64_t offset = 0;
    for (std::size_t i : data_order()) {
      offsets[i] = offset;
      offset += tensors_[i].bytes.size();
    }
    return offsets;
  }

  std::vector<Tensor> tensors_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace peft
