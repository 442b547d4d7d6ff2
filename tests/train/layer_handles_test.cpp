// AdamW and RosaMaskBuilder hold layers by LayerHandle: a registered layer that moves (into a
// growing std::vector, a std::optional) trains exactly as one that stays put, and one destroyed
// or overwritten while registered makes the next step()/start()/finish() throw a peft::Error
// before anything is written. Also: the mask builder sizes the workspace its accumulation takes,
// and train/ calls no backend namespace directly.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

using bf16 = Eigen::bfloat16;
constexpr index_t kN = 6, kIn = 12, kOut = 10;

template <class T>
Lora<T, Cpu> make_lora(HostCtx& ctx, MatrixView<const T, Cpu> w0) {
  return Lora<T, Cpu>(ctx, w0, {.r = 3, .alpha = 6, .init = LoraInit::none, .seed = 5},
                      {.stream_id = 1});
}

/// A bf16 RoSA layer with a mask (its 16-bit copy of S, used by the forward, is refreshed by
/// parameters_updated: a step that misses the layer shows in its output).
template <class T>
Rosa<T, Cpu> make_rosa(HostCtx& ctx, MatrixView<const T, Cpu> w0, bool with_mask = true,
                       RosaForward mode = RosaForward::spmm) {
  Rosa<T, Cpu> layer(ctx, w0,
                     {.lora = {.r = 2, .alpha = 4, .init = LoraInit::none, .seed = 7},
                      .density = 0.2,
                      .forward = mode},
                     {.stream_id = 3});
  if (with_mask) {
    Matrix<std::uint8_t, Cpu> mask(kOut, kIn);
    for (index_t e = 0; e < layer.sparse_capacity(); ++e) mask.data()[(e * 7) % (kOut * kIn)] = 1;
    layer.set_mask(ctx, CsrPattern::from_mask(as_const(mask.view())));
  }
  return layer;
}

/// One training step of `layer` on (x, dy): forward, backward, AdamW step, zero_grad. Returns
/// the forward output after the step.
template <class Layer, class T>
Matrix<T, Cpu> train_step(HostCtx& ctx, Layer& layer, AdamW<param_t<T>, Cpu>& opt,
                          const Matrix<T, Cpu>& x, const Matrix<T, Cpu>& dy) {
  Matrix<T, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
  opt.step(ctx);
  layer.zero_grad(ctx);
  layer.forward(ctx, x.view(), y.view());
  return y;
}

template <class Layer, class T>
void check_moves_train_like_staying_put(Layer (*make)(HostCtx&, MatrixView<const T, Cpu>)) {
  HostCtx ctx;
  auto w0 = random_matrix<T>(kOut, kIn, 1);
  auto x = random_matrix<T>(kN, kIn, 2), dy = random_matrix<T>(kN, kOut, 3);
  Layer still = make(ctx, as_const(w0.view()));
  AdamW<param_t<T>, Cpu> opt_still({.lr = 0.05});
  opt_still.add(still, {.names = {"lora_A"}});
  opt_still.add(still, {.lr = 0.02, .names = {"lora_B", "rosa_S"}});

  Layer first = make(ctx, as_const(w0.view()));
  AdamW<param_t<T>, Cpu> opt({.lr = 0.05});
  opt.add(first, {.names = {"lora_A"}});
  std::vector<Layer> layers;
  layers.push_back(std::move(first));
  opt.add(layers[0], {.lr = 0.02, .names = {"lora_B", "rosa_S"}});  // moved: still one layer
  for (int step = 0; step < 4; ++step) {
    // Each push_back may reallocate: layers[0] moves again.
    layers.push_back(make(ctx, as_const(w0.view())));
    const auto want = train_step(ctx, still, opt_still, x, dy);
    const auto got = train_step(ctx, layers[0], opt, x, dy);
    EXPECT_TRUE(bitwise_equal(as_const(got.view()), as_const(want.view()))) << "step " << step;
  }
  std::optional<Layer> elsewhere(std::move(layers[0]));
  layers.clear();
  const auto want = train_step(ctx, still, opt_still, x, dy);
  const auto got = train_step(ctx, *elsewhere, opt, x, dy);
  EXPECT_TRUE(bitwise_equal(as_const(got.view()), as_const(want.view())));
  for (std::size_t i = 0; i < still.parameters().size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(elsewhere->parameters()[i].value),
                              as_const(still.parameters()[i].value)))
        << still.parameters()[i].name;
}

TEST(AdamWHandles, AMovedLayerTrainsLikeOneThatStaysPut) {
  check_moves_train_like_staying_put<Lora<bf16, Cpu>, bf16>(&make_lora<bf16>);
  check_moves_train_like_staying_put<Lora<float, Cpu>, float>(&make_lora<float>);
  check_moves_train_like_staying_put<Rosa<bf16, Cpu>, bf16>(
      +[](HostCtx& ctx, MatrixView<const bf16, Cpu> w0) { return make_rosa<bf16>(ctx, w0); });
}

TEST(AdamWHandles, ADestroyedLayerThrowsBeforeAnyUpdate) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  Lora<float, Cpu> keep = make_lora<float>(ctx, as_const(w0.view()));
  std::optional<Lora<float, Cpu>> gone(make_lora<float>(ctx, as_const(w0.view())));
  AdamW<float, Cpu> opt;
  opt.add(keep);
  opt.add(*gone);
  for (auto& p : keep.parameters()) fill(ctx, p.grad, 1.0);
  std::vector<Matrix<float, Cpu>> before;
  for (auto& p : keep.parameters()) before.push_back(converted<float>(as_const(p.value)));
  gone.reset();
  expect_error([&] { opt.step(ctx); }, ErrorKind::state,
               {"AdamW::step", "no longer exists", "destroyed"});
  for (std::size_t i = 0; i < before.size(); ++i)
    EXPECT_TRUE(bitwise_equal(as_const(keep.parameters()[i].value), as_const(before[i].view())))
        << "step() wrote " << keep.parameters()[i].name << " before it threw";
  EXPECT_EQ(opt.steps(), 0);
}

TEST(AdamWHandles, ALayerOverwrittenByAMoveAssignmentThrows) {
  HostCtx ctx;
  auto w0 = random_matrix<float>(kOut, kIn, 1);
  std::vector<Lora<float, Cpu>> layers;
  layers.push_back(make_lora<float>(ctx, as_const(w0.view())));
  layers.push_back(make_lora<float>(ctx, as_const(w0.view())));
  AdamW<float, Cpu> opt;
  opt.add(layers[0]);
  layers[0] = std::move(layers[1]);  // the registered layer's buffers are freed
  expect_error([&] { opt.step(ctx); }, ErrorKind::state, {"AdamW::step", "overwritten"});
}

/// The mask a builder makes for a layer: (row offsets, column indices).
template <class T>
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> mask_of(const Rosa<T, Cpu>& l) {
  const auto s = l.sparse().view();
  return {std::vector<std::int32_t>(s.row_offsets, s.row_offsets + s.rows + 1),
          std::vector<std::int32_t>(s.col_indices, s.col_indices + s.nnz)};
}

template <class T>
void backward_once(HostCtx& ctx, Rosa<T, Cpu>& layer, std::uint32_t seed) {
  auto x = random_matrix<T>(kN, kIn, seed), dy = random_matrix<T>(kN, kOut, seed + 1);
  Matrix<T, Cpu> y(kN, kOut), dx(kN, kIn);
  layer.forward(ctx, x.view(), y.view());
  layer.backward(ctx, x.view(), dy.view(), dx.view());
}

TEST(RosaMaskBuilderHandles, AMovedLayerGetsTheMaskOfOneThatStaysPut) {
  for (const bool on_host : {false, true}) {
    HostCtx ctx;
    auto w0 = random_matrix<double>(kOut, kIn, 1);
    Rosa<double, Cpu> still = make_rosa<double>(ctx, as_const(w0.view()), false);
    RosaMaskBuilder<double, Cpu> builder_still({.accumulate_on_host = on_host});
    builder_still.add(still);
    builder_still.start(ctx);
    backward_once(ctx, still, 10);
    backward_once(ctx, still, 20);
    builder_still.finish(ctx);

    std::vector<Rosa<double, Cpu>> layers;
    layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));
    RosaMaskBuilder<double, Cpu> builder({.accumulate_on_host = on_host});
    builder.add(layers[0]);
    layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));  // moves layers[0]
    builder.start(ctx);
    backward_once(ctx, layers[0], 10);
    std::optional<Rosa<double, Cpu>> elsewhere(std::move(layers[0]));  // moves while collecting
    backward_once(ctx, *elsewhere, 20);
    builder.finish(ctx);
    ASSERT_TRUE(elsewhere->has_mask());
    EXPECT_EQ(mask_of(*elsewhere), mask_of(still)) << "on_host = " << on_host;
    EXPECT_FALSE(layers[1].has_mask());
  }
}

TEST(RosaMaskBuilderHandles, ADestroyedLayerThrows) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  {  // destroyed before start()
    std::optional<Rosa<double, Cpu>> layer(make_rosa<double>(ctx, as_const(w0.view()), false));
    RosaMaskBuilder<double, Cpu> builder;
    builder.add(*layer);
    layer.reset();
    expect_error([&] { builder.start(ctx); }, ErrorKind::state,
                 {"RosaMaskBuilder::start", "no longer exists"});
  }
  {  // destroyed while collecting: finish() changes no other layer, the builder still dies well
    Rosa<double, Cpu> keep = make_rosa<double>(ctx, as_const(w0.view()), false);
    std::optional<Rosa<double, Cpu>> layer(make_rosa<double>(ctx, as_const(w0.view()), false));
    RosaMaskBuilder<double, Cpu> builder;
    builder.add(keep);
    builder.add(*layer);
    builder.start(ctx);
    backward_once(ctx, keep, 10);
    backward_once(ctx, *layer, 10);
    layer.reset();
    expect_error([&] { builder.finish(ctx); }, ErrorKind::state,
                 {"RosaMaskBuilder::finish", "no longer exists"});
    EXPECT_FALSE(keep.has_mask());
  }
  {  // overwritten by a move assignment
    std::vector<Rosa<double, Cpu>> layers;
    layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));
    layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));
    RosaMaskBuilder<double, Cpu> builder;
    builder.add(layers[0]);
    layers[0] = std::move(layers[1]);
    expect_error([&] { builder.start(ctx); }, ErrorKind::state, {"overwritten"});
  }
}

TEST(RosaMaskBuilderHandles, ALayerIsRegisteredOnce) {
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  std::vector<Rosa<double, Cpu>> layers;
  layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));
  RosaMaskBuilder<double, Cpu> builder;
  builder.add(layers[0]);
  layers.push_back(make_rosa<double>(ctx, as_const(w0.view()), false));  // moves layers[0]
  expect_error([&] { builder.add(layers[0]); }, ErrorKind::invalid_argument,
               {"RosaMaskBuilder::add", "already registered"});
}

// The builder's scratch (G = dyᵀ x in param_t<T>, and the bf16 gemm's staging) comes from the
// workspace that start() sized, whatever the layer reserved for itself: the backward passes
// that collect gradients allocate nothing.
template <class T>
void check_builder_workspace(RosaGradAccumulation accumulation, bool on_host) {
  HostCtx ctx;
  constexpr index_t out = 64, in = 48, rows = 4;
  auto w0 = random_matrix<T>(out, in, 1);
  Rosa<T, Cpu> layer(
      ctx, as_const(w0.view()),
      {.lora = {.r = 2, .alpha = 4, .seed = 7}, .density = 0.05, .forward = RosaForward::spmm});
  layer.preallocate(ctx, rows);
  RosaMaskBuilder<T, Cpu> builder({.accumulation = accumulation, .accumulate_on_host = on_host});
  builder.add(layer);
  const bool in_place = accumulation == RosaGradAccumulation::mean && !on_host;
  const index_t g_bytes = in_place ? 0 : out * in * index_t(sizeof(param_t<T>));
  EXPECT_GE(builder.workspace_bytes(ctx), g_bytes);
  builder.start(ctx);
  EXPECT_GE(ctx.workspace().capacity(), std::size_t(builder.workspace_bytes(ctx)));
  const auto allocations = ctx.workspace().allocations();
  auto x = random_matrix<T>(rows, in, 2), dy = random_matrix<T>(rows, out, 3);
  Matrix<T, Cpu> y(rows, out), dx(rows, in);
  for (int i = 0; i < 2; ++i) {
    layer.forward(ctx, x.view(), y.view());
    layer.backward(ctx, x.view(), dy.view(), dx.view());
  }
  EXPECT_EQ(ctx.workspace().allocations(), allocations)
      << "collecting gradients grew the workspace (sizeof(T) = " << sizeof(T) << ")";
  builder.finish(ctx);
}

TEST(RosaMaskBuilderWorkspace, StartReservesWhatAccumulationTakes) {
  for (const auto mode : {RosaGradAccumulation::mean_squared, RosaGradAccumulation::mean})
    for (const bool on_host : {false, true}) {
      check_builder_workspace<double>(mode, on_host);  // G is out · in · 8 bytes
      check_builder_workspace<float>(mode, on_host);
      check_builder_workspace<bf16>(mode, on_host);  // plus the bf16 gemm's fp32 panels
    }
  HostCtx ctx;
  auto w0 = random_matrix<double>(kOut, kIn, 1);
  Rosa<double, Cpu> layer = make_rosa<double>(ctx, as_const(w0.view()), false);
  RosaMaskBuilder<double, Cpu> squares, in_place({.accumulation = RosaGradAccumulation::mean});
  EXPECT_EQ(squares.workspace_bytes(ctx), 0);  // no layer yet
  squares.add(layer);
  in_place.add(layer);
  EXPECT_EQ(squares.workspace_bytes(ctx), detail::align_up(kOut * kIn * 8));
  EXPECT_EQ(in_place.workspace_bytes(ctx), 0);  // double: the gemm stages nothing
  HostCtx fresh;
  squares.preallocate(fresh);
  EXPECT_GE(fresh.workspace().capacity(), std::size_t(kOut * kIn * 8));
}

// The train/ headers dispatch through the Context's backend like the adapters: no call names
// peft::cpu or peft::gpu.
TEST(TrainHeaders, CallNoBackendNamespaceDirectly) {
  const auto dir =
      std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "include" / "peft" / "train";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    ++files;
    std::istringstream lines(text.str());
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
      ++number;
      const auto code = line.substr(0, line.find("//"));
      EXPECT_EQ(code.find("cpu::"), std::string::npos)
          << entry.path() << ":" << number << ": " << line;
      EXPECT_EQ(code.find("gpu::"), std::string::npos)
          << entry.path() << ":" << number << ": " << line;
    }
  }
  EXPECT_GE(files, 2);
}

}  // namespace
}  // namespace peft::test
