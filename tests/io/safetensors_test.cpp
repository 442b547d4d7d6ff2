// safetensors: write/read round trips through memory, streams and maps; the layout the format
// prescribes; dtype conversions and their refusals; lazy reads; files written by the Python
// `safetensors` package (tests/data/dtypes.safetensors, from make_golden.py).

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "io/io_test_util.hpp"

namespace peft::test {
namespace {

const SafetensorsReadOptions kStream{.access = SafetensorsAccess::stream};
const SafetensorsReadOptions kMmap{.access = SafetensorsAccess::mmap};

/// A writer with one tensor of every host type, a scalar, a vector, a 3-D and an empty tensor.
SafetensorsWriter sample_writer() {
  SafetensorsWriter w;
  auto f32 = random_matrix<float>(3, 5, 1);
  auto f64 = random_matrix<double>(2, 3, 2);
  w.add("f32", f32.view());
  w.add("f64", f64.view());
  w.add("as_f16", f32.view(), SafetensorsDtype::F16);
  w.add("as_bf16", f64.view(), SafetensorsDtype::BF16);
  w.add("f64_as_f32", f64.view(), SafetensorsDtype::F32);
  Matrix<std::int64_t, Cpu> i64(1, 3);
  i64.data()[0] = std::numeric_limits<std::int64_t>::min();
  i64.data()[1] = -1;
  i64.data()[2] = std::numeric_limits<std::int64_t>::max();
  w.add("i64", i64.view(), std::nullopt, std::vector<index_t>{3});
  Matrix<std::int8_t, Cpu> i8(1, 3);
  i8.data()[0] = -128;
  i8.data()[1] = 5;
  i8.data()[2] = 127;
  w.add("i8", i8.view());
  Matrix<std::uint8_t, Cpu> u8(1, 1);
  u8.data()[0] = 200;
  w.add("u8_scalar", u8.view(), std::nullopt, std::vector<index_t>{});
  Matrix<bool, Cpu> flags(1, 4);
  flags.data()[1] = true;
  flags.data()[3] = true;
  w.add("bool", flags.view());
  auto cube = random_matrix<float>(6, 4, 3);
  w.add("cube", cube.view(), std::nullopt, std::vector<index_t>{2, 3, 4});
  Matrix<float, Cpu> empty(0, 3);
  w.add("empty", empty.view());
  Matrix<std::int32_t, Cpu> i32(2, 2);
  for (index_t i = 0; i < 4; ++i) i32.data()[i] = static_cast<std::int32_t>(i * 1000003 - 7);
  w.add("i32", i32.view());
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcode ✓");
  return w;
}

void expect_sample(const SafetensorsReader& r) {
  ASSERT_EQ(r.tensors().size(), 12u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("note"), "ünïcode ✓");
  // Insertion order is kept in the header.
  EXPECT_EQ(r.tensors()[0].name, "f32");
  EXPECT_EQ(r.tensors()[11].name, "i32");

  auto f32 = random_matrix<float>(3, 5, 1);
  auto f64 = random_matrix<double>(2, 3, 2);
  EXPECT_TRUE(bitwise_equal(as_const(r.read_matrix<float>("f32").view()), as_const(f32.view())));
  EXPECT_TRUE(bitwise_equal(as_const(r.read_matrix<double>("f64").view()), as_const(f64.view())));
  const auto f16 = r.read_matrix<float>("as_f16");
  const auto bf16 = r.read_matrix<double>("as_bf16");
  const auto f32_of_f64 = r.read_matrix<float>("f64_as_f32");
  for (index_t i = 0; i < f32.size(); ++i)
    EXPECT_EQ(f16.data()[i], half_bits_to_float(float_to_half_bits(f32.data()[i])));
  for (index_t i = 0; i < f64.size(); ++i) {
    EXPECT_EQ(bf16.data()[i], bfloat16_bits_to_float(float_to_bfloat16_bits(f64.data()[i])));
    EXPECT_EQ(f32_of_f64.data()[i], static_cast<float>(f64.data()[i]));
  }
  EXPECT_EQ(r.info("as_f16").dtype, SafetensorsDtype::F16);
  EXPECT_EQ(r.info("as_bf16").dtype, SafetensorsDtype::BF16);

  const auto i64 = r.read_matrix<std::int64_t>("i64");
  EXPECT_EQ(r.info("i64").shape, std::vector<index_t>{3});
  EXPECT_EQ(i64.rows(), 1);
  EXPECT_EQ(i64.data()[0], std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(i64.data()[2], std::numeric_limits<std::int64_t>::max());
  const auto i8 = r.read_matrix<std::int16_t>("i8");  // widening is exact
  EXPECT_EQ(i8.data()[0], -128);
  EXPECT_EQ(i8.data()[2], 127);
  EXPECT_TRUE(r.info("u8_scalar").shape.empty());
  EXPECT_EQ(r.read_matrix<std::uint8_t>("u8_scalar").data()[0], 200);
  EXPECT_EQ(r.read_matrix<std::int32_t>("u8_scalar").data()[0], 200);
  const auto flags = r.read_matrix<bool>("bool");
  EXPECT_EQ(flags.cols(), 4);
  EXPECT_FALSE(flags.data()[0]);
  EXPECT_TRUE(flags.data()[1]);
  EXPECT_TRUE(flags.data()[3]);
  const auto cube = r.read_matrix<float>("cube");
  EXPECT_EQ(r.info("cube").shape, (std::vector<index_t>{2, 3, 4}));
  EXPECT_EQ(cube.rows(), 6);
  EXPECT_EQ(cube.cols(), 4);
  auto cube_ref = random_matrix<float>(6, 4, 3);
  EXPECT_TRUE(bitwise_equal(as_const(cube.view()), as_const(cube_ref.view())));
  const auto empty = r.read_matrix<float>("empty");
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 3);
  EXPECT_EQ(r.read_matrix<std::int64_t>("i32").data()[3], 3 * 1000003 - 7);
}

TEST(Safetensors, RoundTripThroughMemoryStreamAndMap) {
  const SafetensorsWriter w = sample_writer();
  const std::vector<std::byte> bytes = w.serialize();
  expect_sample(SafetensorsReader::from_memory(bytes));

  TempDir dir;
  w.write(dir / "sample.safetensors");
  EXPECT_EQ(read_file(dir / "sample.safetensors"), bytes);
  EXPECT_TRUE(temp_files(dir.path()).empty());
  expect_sample(SafetensorsReader::open(dir / "sample.safetensors", kStream));
  expect_sample(SafetensorsReader::open(dir / "sample.safetensors", kMmap));
}

TEST(Safetensors, LayoutFollowsTheFormat) {
  const std::vector<std::byte> bytes = sample_writer().serialize();
  const auto n = detail::load_little_endian<std::uint64_t>(bytes.data());
  EXPECT_EQ((8 + n) % 8, 0u) << "the header is padded to a multiple of 8";
  const std::string header(reinterpret_cast<const char*>(bytes.data() + 8), n);
  EXPECT_EQ(header.front(), '{');
  const auto last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u) << "padding is spaces only, fewer than 8";
  EXPECT_EQ(header.rfind("{\"__metadata__\":", 0), 0u) << "metadata comes first";

  // The data section is covered exactly, without gaps, and each tensor is aligned to its
  // element size in the file (larger elements first).
  const auto r = SafetensorsReader::from_memory(bytes);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& t : r.tensors()) {
    ranges.emplace_back(t.begin, t.end);
    EXPECT_EQ((8 + n + t.begin) % element_size(t.dtype), 0u) << t.name;
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t end = 0;
  for (const auto& [b, e] : ranges) {
    EXPECT_EQ(b, end);
    end = e;
  }
  EXPECT_EQ(end, r.data_bytes());
  EXPECT_EQ(bytes.size(), 8 + n + end);
}

TEST(Safetensors, ReadIntoStridedViewsAndFromStridedViews) {
  auto big = random_matrix<float>(7, 9, 4);
  auto block = big.view().block(1, 2, 4, 5);  // strided
  SafetensorsWriter w;
  w.add("block", block);
  const auto bytes = w.serialize();
  const auto r = SafetensorsReader::from_memory(bytes);
  Matrix<double, Cpu> target(6, 8);
  r.read_into("block", target.view().block(2, 3, 4, 5));
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) EXPECT_EQ(target.view()(2 + i, 3 + j), double(block(i, j)));
  EXPECT_EQ(target.view()(0, 0), 0.0);
  expect_error([&] { r.read_into("block", target.view().block(0, 0, 5, 4)); }, ErrorKind::io,
               {"<memory>", "'block'", "[4, 5]", "5 x 4"});
}

TEST(Safetensors, LargeTensorsStreamInChunks) {
  // More than one 1 MiB chunk, with an odd element count, through every access path.
  const index_t rows = 301, cols = 1001;
  auto m = random_matrix<float>(rows, cols, 5);
  SafetensorsWriter w;
  w.add("lead", random_matrix<float>(1, 3, 6).view(), SafetensorsDtype::F16);
  w.add("big", m.view(), SafetensorsDtype::BF16);
  TempDir dir;
  w.write(dir / "big.safetensors");
  for (auto options : {kStream, kMmap}) {
    const auto r = SafetensorsReader::open(dir / "big.safetensors", options);
    const auto back = r.read_matrix<float>("big");
    ASSERT_EQ(back.rows(), rows);
    for (index_t i = 0; i < m.size(); ++i)
      ASSERT_EQ(back.data()[i], bfloat16_bits_to_float(float_to_bfloat16_bits(m.data()[i])));
    EXPECT_EQ(r.read_bytes("big").size(), std::size_t(rows * cols * 2));
  }
}

TEST(Safetensors, TensorsAreReadWhenAskedFor) {
  // Open a stream reader, then change one tensor's bytes on disk: the reader sees the new
  // bytes, so it read nothing but the header at open.
  Matrix<float, Cpu> a(1, 2), b(1, 2);
  a.data()[0] = 1;
  b.data()[0] = 2;
  SafetensorsWriter w;
  w.add("a", a.view());
  w.add("b", b.view());
  TempDir dir;
  const fs::path path = dir / "lazy.safetensors";
  w.write(path);
  const auto reader = SafetensorsReader::open(path, kStream);
  auto bytes = read_file(path);
  const std::uint64_t start = 8 + detail::load_little_endian<std::uint64_t>(bytes.data());
  const float changed = 42.0f;
  std::memcpy(bytes.data() + start + reader.info("b").begin, &changed, 4);
  {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  EXPECT_EQ(reader.read_matrix<float>("a").data()[0], 1.0f);
  EXPECT_EQ(reader.read_matrix<float>("b").data()[0], 42.0f);

  // A file truncated after open: the read fails cleanly.
  fs::resize_file(path, start + 2);
  expect_error([&] { reader.read_matrix<float>("b"); }, ErrorKind::io,
               {path.string(), "could not read"});
}

TEST(Safetensors, ConversionsMustBeExact) {
  SafetensorsWriter w;
  auto f = random_matrix<double>(2, 2, 7);
  w.add("f64", f.view());
  w.add("f32", f.view(), SafetensorsDtype::F32);
  Matrix<std::int32_t, Cpu> i32(1, 2);
  w.add("i32", i32.view());
  Matrix<std::int64_t, Cpu> i64(1, 2);
  w.add("i64", i64.view());
  Matrix<std::uint8_t, Cpu> u8(1, 2);
  w.add("u8", u8.view());
  Matrix<std::int8_t, Cpu> i8(1, 2);
  w.add("i8", i8.view());
  Matrix<bool, Cpu> flags(1, 2);
  w.add("bool", flags.view());
  const std::byte fp8[2] = {std::byte{0x38}, std::byte{0xB8}};
  w.add_raw("f8", SafetensorsDtype::F8_E4M3, {2}, fp8);
  const auto bytes = w.serialize();
  const auto r = SafetensorsReader::from_memory(bytes, "conv.safetensors");

  auto refuses = [&](auto tag, const char* name, std::initializer_list<std::string> needles) {
    using T = decltype(tag);
    expect_error([&] { r.read_matrix<T>(name); }, ErrorKind::io, needles);
  };
  refuses(float{}, "f64", {"conv.safetensors", "'f64'", "F64 into float would lose precision"});
  refuses(float{}, "i32", {"'i32'", "I32 is not a floating-point dtype"});
  refuses(double{}, "bool", {"BOOL is not a floating-point dtype"});
  refuses(std::int32_t{}, "f32", {"'f32'", "F32 is not an integer dtype"});
  refuses(std::int32_t{}, "i64", {"I64 does not fit the element type"});
  refuses(std::int8_t{}, "u8", {"U8 does not fit"});
  refuses(std::uint8_t{}, "i8", {"I8 does not fit"});
  refuses(std::uint64_t{}, "i32", {"I32 does not fit"});
  refuses(std::int32_t{}, "bool", {"BOOL is not an integer dtype"});
  refuses(bool{}, "u8", {"U8 is not BOOL"});
  refuses(float{}, "f8", {"F8_E4M3 is not converted; read its raw bytes"});
  refuses(float{}, "missing", {"conv.safetensors", "no tensor 'missing'"});
  EXPECT_EQ(r.read_bytes("f8").size(), 2u);
  EXPECT_EQ(r.read_bytes("f8")[1], std::byte{0xB8});
  EXPECT_NO_THROW(r.read_matrix<double>("f64"));
  EXPECT_NO_THROW(r.read_matrix<double>("f32"));
  EXPECT_NO_THROW(r.read_matrix<std::int64_t>("i32"));
  EXPECT_NO_THROW(r.read_matrix<std::int16_t>("u8"));
  EXPECT_NO_THROW(r.read_matrix<std::uint16_t>("u8"));
}

TEST(Safetensors, WriterRefusesBadInput) {
  SafetensorsWriter w;
  auto m = random_matrix<float>(2, 3, 8);
  w.add("a", m.view());
  expect_error([&] { w.add("a", m.view()); }, ErrorKind::invalid_argument, {"'a'", "twice"});
  expect_error([&] { w.add("__metadata__", m.view()); }, ErrorKind::invalid_argument, {"reserved"});
  expect_error([&] { w.add("b", m.view(), SafetensorsDtype::I32); }, ErrorKind::invalid_argument,
               {"'b'", "cannot be written as I32"});
  expect_error([&] { w.add("c", m.view(), std::nullopt, std::vector<index_t>{5}); },
               ErrorKind::invalid_argument, {"'c'", "[5] has 5 elements, the matrix has 6"});
  expect_error(
      [&] {
        w.add("d", m.view(), std::nullopt, std::vector<index_t>{-2, -3});
      },
      ErrorKind::invalid_argument, {"negative"});
  Matrix<std::int32_t, Cpu> ints(1, 1);
  expect_error([&] { w.add("e", ints.view(), SafetensorsDtype::I64); }, ErrorKind::invalid_argument,
               {"int32 elements are written as I32"});
  const std::byte three[3] = {};
  expect_error([&] { w.add_raw("f", SafetensorsDtype::F16, {2}, three); },
               ErrorKind::invalid_argument, {"'f'", "needs 4 bytes, got 3"});
  SafetensorsWriter bad_utf8;
  bad_utf8.add("\xff\xfe", m.view());
  expect_error([&] { bad_utf8.serialize(); }, ErrorKind::invalid_argument, {"UTF-8"});
  EXPECT_EQ(w.size(), 1u);
}

TEST(Safetensors, AnyNameTheFormatAllows) {
  // Names are JSON strings: empty, with quotes, backslashes, control characters, non-ASCII.
  SafetensorsWriter w;
  const std::vector<std::string> names = {"", "a\"b\\c", "tab\tnew\nline", "\x01", "ünï ✓"};
  for (std::size_t i = 0; i < names.size(); ++i)
    w.add(names[i], random_matrix<float>(1, 2, std::uint32_t(i)).view());
  const auto bytes = w.serialize();
  const auto r = SafetensorsReader::from_memory(bytes);
  ASSERT_EQ(r.tensors().size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(r.tensors()[i].name, names[i]);
    EXPECT_TRUE(bitwise_equal(as_const(r.read_matrix<float>(names[i]).view()),
                              as_const(random_matrix<float>(1, 2, std::uint32_t(i)).view())));
  }
}

TEST(Safetensors, EmptyFileAndMetadataOnly) {
  SafetensorsWriter w;
  const auto empty = w.serialize();
  EXPECT_EQ(empty.size(), 16u);  // length + "{}" padded to 8
  EXPECT_TRUE(SafetensorsReader::from_memory(empty).tensors().empty());
  w.set_metadata("k", "v");
  w.set_metadata("k", "w");
  const auto meta = w.serialize();
  const auto r = SafetensorsReader::from_memory(meta);
  EXPECT_TRUE(r.tensors().empty());
  EXPECT_EQ(r.metadata().at("k"), "w");
}

// ---- files written by the Python safetensors package ---------------------------------------

TEST(SafetensorsGolden, ReadsEveryDtypeAsPythonWroteIt) {
  for (auto options : {kStream, kMmap}) {
    const auto r = SafetensorsReader::open(data_dir() / "dtypes.safetensors", options);
    EXPECT_EQ(r.metadata().at("format"), "pt");

    const auto f64 = r.read_matrix<double>("f64");
    EXPECT_EQ(f64.view()(0, 2), 1e-300);
    EXPECT_EQ(f64.view()(1, 1), 1e300);
    EXPECT_TRUE(std::signbit(f64.view()(1, 2)));
    const auto f32 = r.read_matrix<float>("f32");
    EXPECT_EQ(r.info("f32").shape, (std::vector<index_t>{2, 3, 4}));
    for (index_t i = 0; i < 24; ++i) EXPECT_EQ(f32.data()[i], float(i) / 7.0f);

    // float16 / bfloat16 decode bit-exactly as torch's .float() does, subnormals and
    // specials included.
    for (const auto& [name, ref] :
         {std::pair{"f16", "f16_as_f32"}, std::pair{"bf16", "bf16_as_f32"}}) {
      const auto mine = r.read_matrix<float>(name);
      const auto torch = r.read_matrix<float>(ref);
      ASSERT_EQ(mine.size(), torch.size());
      for (index_t i = 0; i < mine.size(); ++i) {
        if (std::isnan(torch.data()[i])) {
          EXPECT_TRUE(std::isnan(mine.data()[i])) << name << " " << i;
        } else {
          EXPECT_EQ(std::bit_cast<std::uint32_t>(mine.data()[i]),
                    std::bit_cast<std::uint32_t>(torch.data()[i]))
              << name << " " << i;
        }
      }
    }

    const auto i64 = r.read_matrix<std::int64_t>("i64");
    EXPECT_EQ(i64.view()(0, 0), -(std::int64_t{1} << 62));
    EXPECT_EQ(i64.view()(0, 1), (std::int64_t{1} << 62) + 5);
    const auto i32 = r.read_matrix<std::int32_t>("i32");
    EXPECT_EQ(i32.data()[0], std::numeric_limits<std::int32_t>::min());
    EXPECT_EQ(i32.data()[1], std::numeric_limits<std::int32_t>::max());
    EXPECT_EQ(r.read_matrix<std::int16_t>("i16").data()[0], -32768);
    EXPECT_EQ(r.read_matrix<std::int8_t>("i8").data()[0], -128);
    EXPECT_EQ(r.read_matrix<std::uint8_t>("u8").data()[1], 255);
    const auto flags = r.read_matrix<bool>("bool");
    EXPECT_TRUE(flags.data()[0]);
    EXPECT_FALSE(flags.data()[1]);
    EXPECT_TRUE(r.info("scalar").shape.empty());
    EXPECT_EQ(r.read_matrix<float>("scalar").data()[0], 2.5f);
    EXPECT_EQ(r.read_matrix<float>("empty").rows(), 0);
  }
}

TEST(SafetensorsGolden, WriterRoundsLikeTorch) {
  // round_src (float32) rounded by torch's .half() / .bfloat16(): ties, overflow, subnormals.
  const auto r = SafetensorsReader::open(data_dir() / "dtypes.safetensors");
  const auto src = r.read_matrix<float>("round_src");
  SafetensorsWriter w;
  w.add("f16", src.view(), SafetensorsDtype::F16);
  w.add("bf16", src.view(), SafetensorsDtype::BF16);
  const auto bytes = w.serialize();
  const auto mine = SafetensorsReader::from_memory(bytes);
  EXPECT_EQ(mine.read_bytes("f16"), r.read_bytes("round_f16"));
  EXPECT_EQ(mine.read_bytes("bf16"), r.read_bytes("round_bf16"));
  EXPECT_GT(src.size(), 500);
}

}  // namespace
}  // namespace peft::test
