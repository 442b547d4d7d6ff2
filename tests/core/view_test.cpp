// MatrixView and VectorView (core/view.hpp): checked construction, blocks, const conversion.

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include <peft/core/view.hpp>

namespace {

using peft::Cpu;
using peft::Cuda;
using peft::ErrorKind;
using peft::index_t;
using peft::MatrixView;
using peft::VectorView;

template <class F>
void expect_error(F&& f, ErrorKind kind, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected peft::Error, nothing was thrown";
  } catch (const peft::Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const auto& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << needle << "\"";
  }
}

TEST(MatrixView, DefaultIsEmpty) {
  MatrixView<float, Cpu> v;
  EXPECT_EQ(v.data(), nullptr);
  EXPECT_EQ(v.rows(), 0);
  EXPECT_EQ(v.cols(), 0);
  EXPECT_EQ(v.size(), 0);
  EXPECT_TRUE(v.empty());
}

TEST(MatrixView, ElementAddressingFollowsTheStride) {
  std::vector<float> data(4 * 7);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  MatrixView<float, Cpu> v(data.data(), 4, 5, 7);
  EXPECT_EQ(v.rows(), 4);
  EXPECT_EQ(v.cols(), 5);
  EXPECT_EQ(v.stride(), 7);
  EXPECT_EQ(v.size(), 20);
  EXPECT_FALSE(v.empty());
  EXPECT_FALSE(v.contiguous());
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) EXPECT_EQ(v(i, j), static_cast<float>(i * 7 + j));
  v(2, 3) = -1.0f;
  EXPECT_EQ(data[2 * 7 + 3], -1.0f);

  MatrixView<float, Cpu> dense(data.data(), 4, 7);
  EXPECT_EQ(dense.stride(), 7);
  EXPECT_TRUE(dense.contiguous());
  EXPECT_TRUE((MatrixView<float, Cpu>(data.data(), 1, 3, 7).contiguous()));  // one row
}

TEST(MatrixView, ConstructionErrors) {
  float x[16] = {};
  expect_error([&] { MatrixView<float, Cpu>(x, -1, 2); }, ErrorKind::shape, {"negative", "-1"});
  expect_error([&] { MatrixView<float, Cpu>(x, 2, -3, 4); }, ErrorKind::shape, {"negative", "-3"});
  expect_error([&] { MatrixView<float, Cpu>(x, 2, 4, 3); }, ErrorKind::shape,
               {"stride 3", "cols 4"});
  expect_error([&] { MatrixView<float, Cpu>(nullptr, 2, 2); }, ErrorKind::invalid_argument,
               {"null", "2 x 2"});
  // Empty views may be null.
  EXPECT_NO_THROW((MatrixView<float, Cpu>(nullptr, 0, 5)));
  EXPECT_NO_THROW((MatrixView<float, Cpu>(nullptr, 5, 0)));
  EXPECT_NO_THROW((MatrixView<float, Cpu>(nullptr, 3, 0, 0)));
}

TEST(MatrixView, ErrorIsARuntimeError) {
  try {
    MatrixView<float, Cpu>(nullptr, 1, 1);
    FAIL() << "no throw";
  } catch (const std::exception& e) {  // one std base: this catch must be unambiguous
    EXPECT_NE(dynamic_cast<const std::runtime_error*>(&e), nullptr);
  }
}

TEST(MatrixView, BlockSharesStrideAndData) {
  std::vector<double> data(6 * 9);
  MatrixView<double, Cpu> v(data.data(), 6, 8, 9);
  auto b = v.block(1, 2, 3, 4);
  EXPECT_EQ(b.data(), data.data() + 1 * 9 + 2);
  EXPECT_EQ(b.rows(), 3);
  EXPECT_EQ(b.cols(), 4);
  EXPECT_EQ(b.stride(), 9);
  b(2, 3) = 5.0;
  EXPECT_EQ(v(3, 5), 5.0);
  // Blocks of blocks.
  auto bb = b.block(1, 1, 2, 3);
  EXPECT_EQ(bb.data(), &v(2, 3));
  // Whole view, empty blocks at the edges.
  EXPECT_EQ(v.block(0, 0, 6, 8).data(), v.data());
  EXPECT_NO_THROW(v.block(6, 8, 0, 0));
  EXPECT_NO_THROW(v.block(0, 8, 6, 0));
  auto r = v.rows_range(4, 2);
  EXPECT_EQ(r.data(), &v(4, 0));
  EXPECT_EQ(r.rows(), 2);
  EXPECT_EQ(r.cols(), 8);
}

TEST(MatrixView, BlockBounds) {
  std::vector<float> data(6 * 8);
  MatrixView<float, Cpu> v(data.data(), 6, 8);
  expect_error([&] { v.block(5, 0, 2, 1); }, ErrorKind::shape, {"[5, 7)", "6 x 8"});
  expect_error([&] { v.block(0, 7, 1, 2); }, ErrorKind::shape, {"[7, 9)", "6 x 8"});
  expect_error([&] { v.block(-1, 0, 1, 1); }, ErrorKind::shape, {"outside"});
  expect_error([&] { v.block(0, -1, 1, 1); }, ErrorKind::shape, {"outside"});
  expect_error([&] { v.block(0, 0, -1, 1); }, ErrorKind::shape, {"outside"});
  expect_error([&] { v.block(0, 0, 1, -1); }, ErrorKind::shape, {"outside"});
  expect_error([&] { v.block(7, 0, 0, 0); }, ErrorKind::shape, {"outside"});
  expect_error([&] { v.rows_range(3, 4); }, ErrorKind::shape, {"[3, 7)"});
}

TEST(MatrixView, ConstConversion) {
  static_assert(std::is_convertible_v<MatrixView<float, Cpu>, MatrixView<const float, Cpu>>);
  static_assert(!std::is_convertible_v<MatrixView<const float, Cpu>, MatrixView<float, Cpu>>);
  static_assert(!std::is_convertible_v<MatrixView<float, Cpu>, MatrixView<double, Cpu>>);
  static_assert(!std::is_convertible_v<MatrixView<float, Cpu>, MatrixView<float, Cuda>>);
  static_assert(!std::is_convertible_v<MatrixView<float, Cpu>, MatrixView<const float, Cuda>>);
  static_assert(std::is_trivially_copyable_v<MatrixView<float, Cpu>>);
  static_assert(std::is_convertible_v<VectorView<int, Cpu>, VectorView<const int, Cpu>>);
  static_assert(!std::is_convertible_v<VectorView<const int, Cpu>, VectorView<int, Cpu>>);

  std::vector<float> data(12);
  MatrixView<float, Cpu> v(data.data(), 2, 5, 6);
  MatrixView<const float, Cpu> c = v;
  EXPECT_EQ(c.data(), v.data());
  EXPECT_EQ(c.rows(), 2);
  EXPECT_EQ(c.cols(), 5);
  EXPECT_EQ(c.stride(), 6);
  auto c2 = peft::as_const(v);
  static_assert(std::is_same_v<decltype(c2), MatrixView<const float, Cpu>>);
  EXPECT_EQ(c2.stride(), 6);
  EXPECT_EQ(peft::shape_string(c2), "2 x 5");
}

TEST(VectorView, ConstructionAndIncrement) {
  std::vector<int> data = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  VectorView<int, Cpu> v(data.data(), 3, 3);
  EXPECT_EQ(v.size(), 3);
  EXPECT_EQ(v.inc(), 3);
  EXPECT_EQ(v[0], 0);
  EXPECT_EQ(v[1], 3);
  EXPECT_EQ(v[2], 6);
  VectorView<const int, Cpu> c = v;
  EXPECT_EQ(c[2], 6);
  EXPECT_EQ(c.inc(), 3);
  EXPECT_TRUE((VectorView<int, Cpu>().empty()));

  expect_error([&] { VectorView<int, Cpu>(data.data(), -2); }, ErrorKind::shape,
               {"negative", "-2"});
  expect_error([&] { VectorView<int, Cpu>(data.data(), 2, 0); }, ErrorKind::shape, {"increment 0"});
  expect_error([&] { VectorView<int, Cpu>(data.data(), 2, -1); }, ErrorKind::shape,
               {"increment -1"});
  expect_error([&] { VectorView<int, Cpu>(nullptr, 4); }, ErrorKind::invalid_argument,
               {"null", "4"});
  EXPECT_NO_THROW((VectorView<int, Cpu>(nullptr, 0)));
}

TEST(VectorView, AsRow) {
  std::vector<float> data(5);
  VectorView<float, Cpu> v(data.data(), 5);
  auto row = v.as_row();
  EXPECT_EQ(row.data(), data.data());
  EXPECT_EQ(row.rows(), 1);
  EXPECT_EQ(row.cols(), 5);
  auto empty = VectorView<float, Cpu>().as_row();
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 0);
  expect_error([&] { VectorView<float, Cpu>(data.data(), 2, 2).as_row(); }, ErrorKind::shape,
               {"increment 2"});
}

}  // namespace
