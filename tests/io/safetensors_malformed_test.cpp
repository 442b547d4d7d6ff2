// Hostile safetensors files: every malformation is refused with an io error that names the
// file, the tensor and what is wrong, the same way from memory, through a stream and through
// a memory map.

#include <gtest/gtest.h>

#include <string>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

/// Opens `bytes` from memory, from a file through a stream and through a map; each must fail
/// with an io error containing every needle (and the source's name).
void expect_refused(const std::vector<std::byte>& bytes, std::initializer_list<std::string> needles,
                    SafetensorsReadOptions options = {}) {
  SCOPED_TRACE(::testing::Message() << "needles: " << *needles.begin());
  expect_error([&] { SafetensorsReader::from_memory(bytes, "hostile.safetensors", options); },
               ErrorKind::io, needles);
  expect_error([&] { SafetensorsReader::from_memory(bytes, "hostile.safetensors", options); },
               ErrorKind::io, {"safetensors: hostile.safetensors: "});
  TempDir dir;
  const fs::path path = dir / "hostile.safetensors";
  write_file(path, bytes);
  for (auto access : {SafetensorsAccess::stream, SafetensorsAccess::mmap}) {
    options.access = access;
    expect_error([&] { SafetensorsReader::open(path, options); }, ErrorKind::io, needles);
    expect_error([&] { SafetensorsReader::open(path, options); }, ErrorKind::io, {path.string()});
  }
}

/// One tensor entry of `dtype`, `shape`, `offsets` and `data` bytes.
std::vector<std::byte> one_tensor(const std::string& dtype, const std::string& shape,
                                  const std::string& offsets, std::size_t data) {
  return craft(
      "{\"t\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}",
      pattern_bytes(data));
}

TEST(SafetensorsMalformed, TooShortForTheLength) {
  expect_refused({}, {"the file is 0 bytes", "8-byte header length"});
  expect_refused(pattern_bytes(7), {"the file is 7 bytes"});
}

TEST(SafetensorsMalformed, HeaderLength) {
  expect_refused(craft("{}", {}, std::uint64_t{1} << 40),
                 {"header length is 1099511627776 bytes, more than the limit of 100000000"});
  expect_refused(craft("{}", {}, ~std::uint64_t{0}), {"more than the limit"});
  expect_refused(craft("{}", {}, 50),
                 {"header length is 50 bytes but only 2 bytes follow", "truncated"});
  expect_refused(craft(""), {"header length is 0", "too short"});
  // The cap is configurable.
  const auto ok = craft("{}                              ");
  expect_refused(ok, {"more than the limit of 16"}, {.max_header_bytes = 16});
  EXPECT_NO_THROW(SafetensorsReader::from_memory(ok));
}

TEST(SafetensorsMalformed, NotJson) {
  expect_refused(craft("[1, 2]"), {"does not start with '{'"});
  expect_refused(craft(" {}"), {"does not start with '{'"});
  expect_refused(craft("{\"t\": {"), {"not valid JSON"});
  expect_refused(craft("{\"t\": 1,}"), {"not valid JSON"});
  expect_refused(craft("{} trailing"), {"not valid JSON"});
  expect_refused(craft("{\"\xff\": 1}"), {"not valid JSON"});  // invalid UTF-8
  expect_refused(craft("{/* comment */}"), {"not valid JSON"});
  expect_refused(craft(std::string("{\"a\0\": 1}", 9)), {"NUL byte at offset 3"});
  std::string deep = "{\"t\":";
  for (int i = 0; i < 200; ++i) deep += "[";
  for (int i = 0; i < 200; ++i) deep += "]";
  expect_refused(craft(deep + "}"), {"the header: it nests deeper than 16 levels"});
  std::string very_deep = "{\"t\":" + std::string(100000, '[');
  expect_refused(craft(very_deep), {"nests deeper"});
}

TEST(SafetensorsMalformed, DuplicateNames) {
  expect_refused(craft("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                       pattern_bytes(2)),
                 {"the header: the key 't' appears twice"});
  expect_refused(craft("{\"t\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1],"
                       "\"data_offsets\":[0,1]}}",
                       pattern_bytes(1)),
                 {"the key 'dtype' appears twice"});
  expect_refused(craft("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}"), {"'a' appears twice"});
  expect_refused(craft("{\"__metadata__\":{},\"__metadata__\":{}}"),
                 {"'__metadata__' appears twice"});
  // Many keys parse in linear time: nlohmann's ordered_json parser alone looks every key up
  // in a vector and needs seconds for these 100k keys (a 100 MB header: hours).
  std::string many = "{";
  for (int i = 0; i < 100000; ++i) many += "\"k" + std::to_string(i) + "\":1,";
  const auto duplicate = craft(many + "\"k17\":1}");
  expect_error([&] { SafetensorsReader::from_memory(duplicate); }, ErrorKind::io,
               {"the key 'k17' appears twice"});
  many.back() = '}';
  const auto numbers = craft(many);
  expect_error([&] { SafetensorsReader::from_memory(numbers); }, ErrorKind::io,
               {"tensor 'k0'", "must be an object, got number"});
}

TEST(SafetensorsMalformed, Entries) {
  expect_refused(craft("{\"t\": 5}"), {"tensor 't'", "must be an object, got number"});
  expect_refused(craft("{\"t\": {\"shape\":[1],\"data_offsets\":[0,1]}}", pattern_bytes(1)),
                 {"tensor 't'", "no dtype"});
  expect_refused(craft("{\"t\": {\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", pattern_bytes(1)),
                 {"tensor 't'", "no shape"});
  expect_refused(craft("{\"t\": {\"dtype\":\"U8\",\"shape\":[1]}}", pattern_bytes(1)),
                 {"tensor 't'", "no data_offsets"});
}

TEST(SafetensorsMalformed, Dtypes) {
  expect_refused(one_tensor("\"F4\"", "[2]", "[0,1]", 1), {"tensor 't'", "unknown dtype 'F4'"});
  expect_refused(one_tensor("\"f32\"", "[1]", "[0,4]", 4), {"unknown dtype 'f32'"});
  expect_refused(one_tensor("\"\"", "[1]", "[0,4]", 4), {"unknown dtype ''"});
  expect_refused(one_tensor("32", "[1]", "[0,4]", 4), {"dtype must be a string, got number"});
}

TEST(SafetensorsMalformed, Shapes) {
  expect_refused(one_tensor("\"U8\"", "2", "[0,2]", 2), {"tensor 't'", "shape must be an array"});
  expect_refused(one_tensor("\"U8\"", "[-1]", "[0,1]", 1),
                 {"tensor 't'", "a shape dimension is negative (-1)"});
  expect_refused(one_tensor("\"U8\"", "[2.5]", "[0,2]", 2),
                 {"a shape dimension must be a non-negative integer, got a non-integer number"});
  expect_refused(one_tensor("\"U8\"", "[2.0]", "[0,2]", 2), {"non-integer number"});
  expect_refused(one_tensor("\"U8\"", "[1e30]", "[0,2]", 2), {"non-integer number"});
  expect_refused(one_tensor("\"U8\"", "[\"2\"]", "[0,2]", 2), {"got string"});
  expect_refused(one_tensor("\"U8\"", "[[2]]", "[0,2]", 2), {"got array"});
  expect_refused(one_tensor("\"U8\"", "[9223372036854775808]", "[0,2]", 2), {"is too large"});
  // Element counts and byte counts that overflow 64 bits.
  expect_refused(one_tensor("\"U8\"", "[4294967296, 4294967296]", "[0,2]", 2),
                 {"tensor 't'", "more elements than fit a 64-bit count"});
  expect_refused(one_tensor("\"U8\"", "[4294967296, 4294967296, 0]", "[0,0]", 0),
                 {"more elements than fit"});
  expect_refused(one_tensor("\"F64\"", "[4611686018427387904]", "[0,8]", 8),
                 {"overflows a 64-bit byte count"});
  // A shape whose byte size does not match the offsets.
  expect_refused(one_tensor("\"F32\"", "[2, 3]", "[0,20]", 20),
                 {"tensor 't'", "shape [2, 3] of F32 needs 24 bytes", "[0, 20] hold 20"});
  expect_refused(one_tensor("\"F32\"", "[]", "[0,8]", 8), {"shape [] of F32 needs 4 bytes"});
  expect_refused(one_tensor("\"F32\"", "[0, 5]", "[0,4]", 4), {"needs 0 bytes"});
}

TEST(SafetensorsMalformed, Offsets) {
  expect_refused(one_tensor("\"U8\"", "[2]", "[0]", 2), {"tensor 't'", "data_offsets must be"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[0,1,2]", 2), {"data_offsets must be"});
  expect_refused(one_tensor("\"U8\"", "[2]", "{\"a\":0,\"b\":2}", 2), {"data_offsets must be"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[-2,0]", 2), {"data_offsets begin is negative"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[0,2.0]", 2), {"data_offsets end must be"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[3,1]", 4), {"[3, 1] end before they begin"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[0,2]", 1),
                 {"tensor 't'", "[0, 2] reach beyond the data section of 1 bytes"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[18446744073709551614,18446744073709551615]", 2),
                 {"is too large"});
  expect_refused(one_tensor("\"U8\"", "[2]", "[9223372036854775806,9223372036854775807]", 2),
                 {"reach beyond the data section"});
  // Overlaps, in either header order, also when one contains the other.
  expect_refused(craft("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                       pattern_bytes(6)),
                 {"tensor 'b'", "[2, 6] overlap tensor 'a' at [0, 4]"});
  expect_refused(craft("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]},"
                       "\"a\":{\"dtype\":\"U8\",\"shape\":[6],\"data_offsets\":[0,6]}}",
                       pattern_bytes(6)),
                 {"tensor 'b'", "overlap tensor 'a'"});
  expect_refused(craft("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                       pattern_bytes(2)),
                 {"overlap"});
}

/// Tensors "a" (U8 [2]) at `a`, "e" (F32 [0]) at `e` and "b" (U8 [1]) at `b`, over `data` bytes.
std::vector<std::byte> three_tensors(const std::string& a, const std::string& e,
                                     const std::string& b, std::size_t data) {
  return craft("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":" + a +
                   "},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":" + e +
                   "},\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":" + b + "}}",
               pattern_bytes(data));
}

TEST(SafetensorsMalformed, TensorsMustCoverTheDataExactly) {
  // As the reference parser: sorted by offsets, the tensors follow each other from byte 0 to
  // the end of the data section; an empty tensor sits where the previous one ends.
  EXPECT_NO_THROW(SafetensorsReader::from_memory(three_tensors("[0,2]", "[2,2]", "[2,3]", 3)));
  EXPECT_NO_THROW(SafetensorsReader::from_memory(three_tensors("[1,3]", "[0,0]", "[0,1]", 3)));
  EXPECT_NO_THROW(SafetensorsReader::from_memory(three_tensors("[0,2]", "[3,3]", "[2,3]", 3)));
  expect_refused(three_tensors("[0,2]", "[2,2]", "[3,4]", 4),
                 {"tensor 'b'", "[3, 4] leave a gap: bytes [2, 3)", "cover the data exactly"});
  expect_refused(three_tensors("[1,3]", "[3,3]", "[3,4]", 4), {"tensor 'a'", "bytes [0, 1)"});
  expect_refused(three_tensors("[0,2]", "[1,1]", "[2,3]", 3),
                 {"tensor 'e'", "[1, 1] overlap tensor 'a' at [0, 2]"});
  expect_refused(three_tensors("[0,2]", "[4,4]", "[2,3]", 4), {"tensor 'e'", "leave a gap"});
  expect_refused(three_tensors("[0,2]", "[2,2]", "[2,3]", 5),
                 {"the tensors cover 3 bytes of the 5-byte data section", "the last 2 bytes"});
  expect_refused(craft("{}", pattern_bytes(1)), {"cover 0 bytes of the 1-byte data section"});
  expect_refused(craft("{\"__metadata__\":{\"a\":\"b\"}}", pattern_bytes(8)), {"cover 0 bytes"});
}

TEST(SafetensorsMalformed, HeaderLengthCutByPaddingIsRefused) {
  // A header length a few bytes short loses only padding spaces: the JSON still parses, but
  // the data section would start early and every tensor be read shifted.
  SafetensorsWriter w;
  w.add("a", random_matrix<float>(3, 4, 1).view());
  w.add("b", random_matrix<double>(2, 2, 2).view(), SafetensorsDtype::BF16);
  std::size_t padding = 0;
  for (int extra = 0; padding < 4; ++extra) {
    w.set_metadata("format", std::string(std::size_t(extra), 'x'));
    const std::string header = w.header();
    padding = header.size() - header.find_last_not_of(' ') - 1;
  }
  const auto full = w.serialize();
  const std::uint64_t length = detail::load_little_endian<std::uint64_t>(full.data());
  EXPECT_NO_THROW(SafetensorsReader::from_memory(full));
  for (std::uint64_t cut = 1; cut <= padding; ++cut) {
    SCOPED_TRACE(cut);
    auto bytes = full;
    detail::store_little_endian<std::uint64_t>(bytes.data(), length - cut);
    expect_refused(bytes, {"belong to no tensor", "cut header length"});
  }
}

TEST(SafetensorsMalformed, NulBytesInTheHeaderAreRefused) {
  // nlohmann's parser stops at a NUL byte and would ignore whatever follows it.
  const std::string json = "{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
  using namespace std::string_literals;  // "\0..."s keeps the NUL bytes
  for (const std::string& tail : {"\0\0\0"s, "\0garbage"s, "  \0  "s, "\0{\"u\":1}"s}) {
    SCOPED_TRACE(tail.size());
    expect_refused(craft(json + tail, pattern_bytes(2)),
                   {"the header: it holds a NUL byte at offset"});
  }
  expect_refused(craft(json + std::string(3, '\0'), pattern_bytes(2)),
                 {"NUL byte at offset " + std::to_string(json.size())});
  // Spaces (the format's padding) and other JSON whitespace, as the reference parser, are fine.
  EXPECT_NO_THROW(SafetensorsReader::from_memory(craft(json + "     ", pattern_bytes(2))));
  EXPECT_NO_THROW(SafetensorsReader::from_memory(craft(json + " \n\t\r", pattern_bytes(2))));
}

TEST(SafetensorsMalformed, Metadata) {
  expect_refused(craft("{\"__metadata__\": [\"a\"]}"),
                 {"__metadata__ must be an object of strings, got array"});
  expect_refused(craft("{\"__metadata__\": {\"a\": 1}}"),
                 {"__metadata__ must map strings to strings; 'a' is a number"});
  expect_refused(craft("{\"__metadata__\": {\"a\": {\"b\": \"c\"}}}"), {"'a' is a object"});
}

TEST(SafetensorsMalformed, BadBoolBytesAreRefusedOnRead) {
  std::vector<std::byte> data = {std::byte{1}, std::byte{0}, std::byte{2}};
  const auto bytes =
      craft("{\"t\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[0,3]}}", data);
  const auto r = SafetensorsReader::from_memory(bytes, "bools");
  expect_error([&] { r.read_matrix<bool>("t"); }, ErrorKind::io,
               {"bools", "tensor 't'", "neither 0 nor 1"});
  EXPECT_EQ(r.read_bytes("t").size(), 3u);
}

TEST(SafetensorsMalformed, FilesThatAreNotThere) {
  TempDir dir;
  for (auto access : {SafetensorsAccess::stream, SafetensorsAccess::mmap}) {
    expect_error([&] { SafetensorsReader::open(dir / "missing.safetensors", {.access = access}); },
                 ErrorKind::io, {"missing.safetensors"});
    expect_error([&] { SafetensorsReader::open(dir.path(), {.access = access}); }, ErrorKind::io,
                 {dir.path().string(), "is a directory, not a file"});
  }
}

TEST(SafetensorsMalformed, EveryTruncationOfAValidFileIsRefusedOrIntact) {
  // Cutting a valid file anywhere must give an error, never a crash or a wrong tensor.
  SafetensorsWriter w;
  w.add("a", random_matrix<float>(3, 4, 1).view());
  w.add("b", random_matrix<double>(2, 2, 2).view(), SafetensorsDtype::BF16);
  w.set_metadata("format", "pt");
  const auto full = w.serialize();
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::vector<std::byte> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(SafetensorsReader::from_memory(cut), Error) << n;
  }
  // Flipping any single byte of the header gives an error or a file that still reads.
  for (std::size_t i = 0; i < full.size() - 48; ++i) {
    auto flipped = full;
    flipped[i] ^= std::byte{0x5A};
    try {
      const auto r = SafetensorsReader::from_memory(flipped);
      for (const auto& t : r.tensors()) (void)r.read_bytes(t.name);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::io) << e.what();
    }
  }
}

}  // namespace
}  // namespace peft::test
