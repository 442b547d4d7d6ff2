// Context<Cpu> (backend/cpu/context.hpp), the Eigen maps and views of eigen_interop.hpp and the
// host transfers of transfer.hpp.

#include <gtest/gtest.h>

#include <type_traits>

#include <Eigen/Core>

#include <peft/backend/cpu/cpu.hpp>
#include <peft/core/buffer.hpp>

#include "backend/strided.hpp"

namespace {

using peft::Context;
using peft::Cpu;
using peft::ErrorKind;
using peft::index_t;
using peft::Matrix;
using peft::MatrixView;
using peft::primtest::expect_error;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

static_assert(!std::is_copy_constructible_v<Context<Cpu>>);
static_assert(std::is_same_v<Context<Cpu>::backend_type, Cpu>);

TEST(CpuContext, ThreadCounts) {
  Context<Cpu> dflt;
  EXPECT_GE(dflt.threads(), 1);
  Context<Cpu> three(peft::CpuContextOptions{.threads = 3});
  EXPECT_EQ(three.threads(), 3);
  three.set_threads(1);
  EXPECT_EQ(three.threads(), 1);
  expect_error([] { Context<Cpu> bad(peft::CpuContextOptions{.threads = -1}); },
               ErrorKind::invalid_argument, {"threads is -1"});
  expect_error([&] { three.set_threads(0); }, ErrorKind::invalid_argument, {"threads is 0"});
  EXPECT_EQ(three.threads(), 1);  // unchanged by the refused call
  EXPECT_EQ(three.workspace().capacity(), 0u);
}

TEST(EigenInterop, MapOfAStridedViewAliasesIt) {
  std::mt19937 gen(1);
  peft::primtest::Strided<float> x(4, 6, true, gen);
  auto map = peft::cpu::eigen_map(x.view);
  EXPECT_EQ(map.rows(), 4);
  EXPECT_EQ(map.cols(), 6);
  EXPECT_EQ(map.outerStride(), x.view.stride());
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 6; ++j) EXPECT_EQ(&map(i, j), &x.view(i, j));
  map(3, 5) = 42.0f;
  EXPECT_EQ(x.view(3, 5), 42.0f);
  auto cmap = peft::cpu::eigen_map(x.cview());
  static_assert(!std::is_assignable_v<decltype(cmap(0, 0)), float>);
  EXPECT_EQ(cmap(3, 5), 42.0f);
  EXPECT_TRUE(x.gaps_untouched());
}

TEST(EigenInterop, ViewsOfEigenMatricesAndRefs) {
  RowMajor m(5, 7);
  for (index_t i = 0; i < 5; ++i)
    for (index_t j = 0; j < 7; ++j) m(i, j) = static_cast<float>(10 * i + j);
  auto v = peft::cpu::view_of(m);
  static_assert(std::is_same_v<decltype(v), MatrixView<float, Cpu>>);
  EXPECT_EQ(v.data(), m.data());
  EXPECT_EQ(v.rows(), 5);
  EXPECT_EQ(v.cols(), 7);
  EXPECT_EQ(v.stride(), 7);
  EXPECT_EQ(v(4, 6), 46.0f);

  Eigen::Ref<RowMajor, 0, Eigen::OuterStride<>> ref = m.block(1, 2, 3, 4);
  auto b = peft::cpu::view_of(ref);
  EXPECT_EQ(b.data(), &m(1, 2));
  EXPECT_EQ(b.rows(), 3);
  EXPECT_EQ(b.cols(), 4);
  EXPECT_EQ(b.stride(), 7);
  EXPECT_EQ(b(2, 3), m(3, 5));
}

TEST(Transfer, UploadDownloadAndStoreValue) {
  Context<Cpu> ctx;
  std::mt19937 gen(2);
  peft::primtest::Strided<double> host(3, 5, true, gen);
  Matrix<float, Cpu> device(3, 5);
  peft::cpu::upload(ctx, host.cview(), device.view());
  peft::primtest::Strided<double> back(3, 5, true, gen, 8.0);
  peft::cpu::download(ctx, as_const(device.view()), back.view);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) {
      EXPECT_EQ(device.view()(i, j), static_cast<float>(host.view(i, j)));
      EXPECT_EQ(back.view(i, j), static_cast<double>(static_cast<float>(host.view(i, j))));
    }
  EXPECT_TRUE(back.gaps_untouched());
  Matrix<float, Cpu> wrong(5, 3);
  expect_error([&] { peft::cpu::upload(ctx, host.cview(), wrong.view()); }, ErrorKind::shape,
               {"3 x 5", "5 x 3"});

  const peft::RandomStream s = peft::make_stream(9, 8, peft::RandomPurpose::dropout, 7);
  peft::RandomStream slot{};
  peft::cpu::store_value(ctx, s, &slot);
  EXPECT_EQ(slot.seed, 9u);
  EXPECT_EQ(slot.stream_id, 8u);
  EXPECT_EQ(slot.step, 7u);
  EXPECT_EQ(slot.bits(5), s.bits(5));
}

}  // namespace
