// Matrix and Vector (core/buffer.hpp): owning, zero-initialised, 64-byte aligned, move-only.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include <peft/core/buffer.hpp>

namespace {

using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::Vector;

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

bool aligned64(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 64 == 0;
}

static_assert(!std::is_copy_constructible_v<Matrix<float, Cpu>>);
static_assert(!std::is_copy_assignable_v<Matrix<float, Cpu>>);
static_assert(std::is_nothrow_move_constructible_v<Matrix<float, Cpu>>);
static_assert(std::is_nothrow_move_assignable_v<Matrix<float, Cpu>>);
static_assert(!std::is_copy_constructible_v<Vector<double, Cpu>>);
static_assert(!std::is_copy_assignable_v<Vector<double, Cpu>>);
static_assert(std::is_nothrow_move_constructible_v<Vector<double, Cpu>>);
static_assert(std::is_nothrow_move_assignable_v<Vector<double, Cpu>>);

TEST(Matrix, ZeroInitialisedAndAligned) {
  // Dirty the heap first so that a missing memset has a chance to show.
  for (int round = 0; round < 4; ++round) {
    {
      Matrix<std::uint8_t, Cpu> dirty(37, 29);
      std::memset(dirty.data(), 0xab, 37 * 29);
    }
    for (const index_t rows : {1, 3, 17, 33}) {
      for (const index_t cols : {1, 5, 29}) {
        Matrix<float, Cpu> m(rows, cols);
        ASSERT_NE(m.data(), nullptr);
        EXPECT_TRUE(aligned64(m.data())) << rows << " x " << cols;
        EXPECT_EQ(m.rows(), rows);
        EXPECT_EQ(m.cols(), cols);
        EXPECT_EQ(m.size(), rows * cols);
        for (index_t i = 0; i < m.size(); ++i) ASSERT_EQ(m.data()[i], 0.0f);
        Matrix<std::uint8_t, Cpu> bytes(rows, cols);
        EXPECT_TRUE(aligned64(bytes.data()));
        for (index_t i = 0; i < bytes.size(); ++i) ASSERT_EQ(bytes.data()[i], 0);
      }
    }
  }
}

TEST(Matrix, ViewCoversTheStorage) {
  Matrix<double, Cpu> m(3, 4);
  auto v = m.view();
  static_assert(std::is_same_v<decltype(v), peft::MatrixView<double, Cpu>>);
  EXPECT_EQ(v.data(), m.data());
  EXPECT_EQ(v.rows(), 3);
  EXPECT_EQ(v.cols(), 4);
  EXPECT_EQ(v.stride(), 4);
  v(2, 3) = 7.0;
  EXPECT_EQ(m.data()[11], 7.0);
  const Matrix<double, Cpu>& cm = m;
  auto cv = cm.view();
  static_assert(std::is_same_v<decltype(cv), peft::MatrixView<const double, Cpu>>);
  EXPECT_EQ(cv(2, 3), 7.0);
}

TEST(Matrix, EmptyShapes) {
  Matrix<float, Cpu> none;
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(none.data(), nullptr);
  EXPECT_TRUE(none.view().empty());
  Matrix<float, Cpu> zero_rows(0, 5);
  EXPECT_TRUE(zero_rows.empty());
  EXPECT_EQ(zero_rows.view().cols(), 5);
  Matrix<float, Cpu> zero_cols(4, 0);
  EXPECT_TRUE(zero_cols.empty());
  EXPECT_EQ(zero_cols.view().rows(), 4);
}

TEST(Matrix, MoveTransfersOwnershipAndEmptiesTheSource) {
  Matrix<float, Cpu> a(5, 6);
  a.data()[7] = 3.0f;
  float* p = a.data();

  Matrix<float, Cpu> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.rows(), 5);
  EXPECT_EQ(b.cols(), 6);
  EXPECT_EQ(b.data()[7], 3.0f);
  // The moved-from matrix is empty and still usable: its view must not claim 5 x 6 over null.
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  ASSERT_EQ(a.size(), 0);        // else view() below throws from a noexcept function
  EXPECT_TRUE(a.empty());
  EXPECT_TRUE(a.view().empty());

  Matrix<float, Cpu> c(2, 2);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.rows(), 5);
  EXPECT_EQ(c.cols(), 6);
  ASSERT_EQ(b.size(), 0);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_NO_THROW((void)b.view());

  // Reuse of a moved-from matrix.
  b = Matrix<float, Cpu>(1, 3);
  EXPECT_EQ(b.size(), 3);
  EXPECT_NE(b.data(), nullptr);
}

TEST(Matrix, SizeErrors) {
  expect_error([] { Matrix<float, Cpu>(-1, 3); }, ErrorKind::shape, {"Matrix", "-1 x 3"});
  expect_error([] { Matrix<float, Cpu>(3, -1); }, ErrorKind::shape, {"Matrix", "3 x -1"});
  expect_error([] { Matrix<float, Cpu>(-2, -3); }, ErrorKind::shape, {"Matrix", "-2 x -3"});
  expect_error([] { Matrix<float, Cpu>(-1, 0); }, ErrorKind::shape, {"Matrix"});
  // rows * cols or the byte count overflow: refused, not wrapped to a small allocation.
  expect_error([] { Matrix<float, Cpu>(index_t{1} << 40, index_t{1} << 40); }, ErrorKind::shape,
               {"Matrix"});
  expect_error([] { Matrix<double, Cpu>(index_t{1} << 31, index_t{1} << 30); }, ErrorKind::shape,
               {"Matrix"});
}

TEST(Vector, ZeroInitialisedAlignedAndViewed) {
  for (const index_t n : {1, 3, 17, 1000}) {
    Vector<double, Cpu> v(n);
    ASSERT_NE(v.data(), nullptr);
    EXPECT_TRUE(aligned64(v.data()));
    EXPECT_EQ(v.size(), n);
    for (index_t i = 0; i < n; ++i) ASSERT_EQ(v.data()[i], 0.0);
    auto view = v.view();
    EXPECT_EQ(view.data(), v.data());
    EXPECT_EQ(view.size(), n);
    EXPECT_EQ(view.inc(), 1);
  }
  Vector<int, Cpu> empty(0);
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.data(), nullptr);
  expect_error([] { Vector<float, Cpu>(-4); }, ErrorKind::shape, {"Vector", "-4"});
  // 2^61 doubles are 2^64 bytes: the byte count must not wrap to 0.
  expect_error([] { Vector<double, Cpu>(index_t{1} << 61); }, ErrorKind::shape, {"Vector"});
}

TEST(Vector, MoveTransfersOwnershipAndEmptiesTheSource) {
  Vector<int, Cpu> a(10);
  a.data()[9] = 4;
  int* p = a.data();
  Vector<int, Cpu> b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 10);
  EXPECT_EQ(b.data()[9], 4);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  ASSERT_EQ(a.size(), 0);
  EXPECT_TRUE(a.view().empty());
  Vector<int, Cpu> c(1);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), 10);
  ASSERT_EQ(b.size(), 0);  // NOLINT(bugprone-use-after-move)
  EXPECT_NO_THROW((void)b.view());
}

TEST(Allocation, RoundsUpAndZeroes) {
  peft::detail::Allocation<Cpu> a(100);
  EXPECT_EQ(a.bytes(), 100u);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_TRUE(aligned64(a.data()));
  const auto* bytes = static_cast<const unsigned char*>(a.data());
  for (int i = 0; i < 128; ++i) ASSERT_EQ(bytes[i], 0) << i;  // rounded to 128 and cleared
  peft::detail::Allocation<Cpu> none(0);
  EXPECT_EQ(none.data(), nullptr);
}

}  // namespace
