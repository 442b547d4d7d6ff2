// RankAllocator::compact: once the rank pattern is final, every AdaLoRA layer shrinks to its kept
// ranks (AdaLora::keep_ranks) and AdamW's moments with it (AdamW::reshape). Two identical runs,
// one compacted: the same outputs, gradients of the kept entries and optimizer steps after it,
// with dropout on (the dropout stream continues).

#include <gtest/gtest.h>

#include <random>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

using Layer = AdaLora<double, Cpu>;
constexpr RankAllocatorOptions kRun{.target_r = 3, .tinit = 1, .tfinal = 3, .total_step = 10};

struct Training {
  HostCtx ctx;
  std::vector<Matrix<double, Cpu>> weights;
  std::vector<Layer> layers;
  AdamW<double, Cpu> optimizer{{.lr = 1e-2, .weight_decay = 0.1}};
  RankAllocator<double, Cpu> allocator{kRun};

  Training() {
    weights.push_back(random_matrix<double>(7, 9, 1));
    weights.push_back(random_matrix<double>(5, 6, 2));
    for (std::size_t i = 0; i < weights.size(); ++i)
      layers.emplace_back(
          ctx, as_const(weights[i].view()),
          AdaLoraConfig{.init_r = 6, .alpha = 4, .dropout = 0.2, .init_weights = false, .seed = 9},
          LayerOptions{.stream_id = std::uint32_t(i)});
    for (std::size_t i = 0; i < layers.size(); ++i) {
      optimizer.add(layers[i]);
      allocator.add(ctx, layers[i], "layer" + std::to_string(i));
    }
  }

  /// Forward and backward of every layer on the step's inputs; returns the outputs.
  std::vector<Matrix<double, Cpu>> forward_backward(std::int64_t step) {
    std::vector<Matrix<double, Cpu>> ys;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      Layer& l = layers[i];
      const auto seed = 100 + 10 * std::uint32_t(step) + std::uint32_t(i);
      const auto x = random_matrix<double>(4, l.in_features(), seed);
      const auto dy = random_matrix<double>(4, l.out_features(), seed + 1000);
      ys.emplace_back(4, l.out_features());
      Matrix<double, Cpu> dx(4, l.in_features());
      l.forward(ctx, x.view(), ys.back().view());
      l.backward(ctx, x.view(), dy.view(), dx.view());
      l.prepare_gradients(ctx);
    }
    return ys;
  }
  /// PEFT's order: optimizer step, then update_and_allocate, then zero_grad.
  void finish_step(std::int64_t step) {
    optimizer.step(ctx);
    allocator.update_and_allocate(ctx, step);
    for (auto& l : layers) l.zero_grad(ctx);
  }
};

/// `full` restricted to the kept ranks (rows of A and E, columns of B) equals `compact`.
void expect_kept_equal(const std::string& name, MatrixView<const double, Cpu> full,
                       MatrixView<const double, Cpu> compact, const std::vector<index_t>& kept,
                       double tolerance) {
  const bool columns = name == "lora_B";
  for (std::size_t k = 0; k < kept.size(); ++k) {
    const index_t n = columns ? full.rows() : full.cols();
    for (index_t j = 0; j < n; ++j) {
      const double a = columns ? full(j, kept[k]) : full(kept[k], j);
      const double b = columns ? compact(j, index_t(k)) : compact(index_t(k), j);
      EXPECT_NEAR(a, b, tolerance * (1 + std::abs(a))) << name << " rank " << kept[k];
    }
  }
}

TEST(AdaLoraCompact, OutputsGradientsAndOptimizerStepsDoNotChange) {
  Training full, compacted;
  const std::int64_t freeze = kRun.total_step - kRun.tfinal;
  for (std::int64_t step = 0; step <= freeze; ++step) {
    full.forward_backward(step);
    compacted.forward_backward(step);
    full.finish_step(step);
    compacted.finish_step(step);
  }
  ASSERT_TRUE(compacted.allocator.pattern_final());
  const auto pattern = compacted.allocator.rank_pattern(compacted.ctx);
  compacted.allocator.compact(compacted.ctx, compacted.optimizer);
  EXPECT_TRUE(compacted.allocator.compacted());
  EXPECT_EQ(compacted.allocator.rank_pattern(compacted.ctx), pattern) << "over the initial ranks";

  std::vector<std::vector<index_t>> kept(2);
  index_t total = 0;
  for (std::size_t i = 0; i < 2; ++i) {
    for (std::size_t k = 0; k < 6; ++k)
      if (pattern[i].second[k]) kept[i].push_back(index_t(k));
    EXPECT_EQ(compacted.layers[i].rank(), index_t(kept[i].size()));
    EXPECT_EQ(compacted.layers[i].ranknum(), 6.0);
    EXPECT_EQ(compacted.layers[i].scaling(), full.layers[i].scaling());
    total += index_t(kept[i].size());
  }
  EXPECT_EQ(total, 6) << "target_r 3 x 2 layers";
  EXPECT_LT(total, 12) << "the test must shrink something";

  for (std::int64_t step = freeze + 1; step < kRun.total_step; ++step) {
    SCOPED_TRACE(step);
    const auto ya = full.forward_backward(step);
    const auto yb = compacted.forward_backward(step);
    for (std::size_t i = 0; i < 2; ++i) {
      EXPECT_LT(relative_error(as_const(ya[i].view()), as_const(yb[i].view())), 1e-13);
      auto pa = full.layers[i].parameters(), pb = compacted.layers[i].parameters();
      for (std::size_t k = 0; k < 3; ++k)
        expect_kept_equal(pa[k].name, as_const(pa[k].grad), as_const(pb[k].grad), kept[i], 1e-12);
    }
    full.finish_step(step);
    compacted.finish_step(step);
    for (std::size_t i = 0; i < 2; ++i) {
      auto pa = full.layers[i].parameters(), pb = compacted.layers[i].parameters();
      for (std::size_t k = 0; k < 3; ++k)
        expect_kept_equal(pa[k].name, as_const(pa[k].value), as_const(pb[k].value), kept[i], 1e-12);
    }
  }
}

// Without the moments carried the steps after compaction would differ: the carry is what makes
// the test above pass (a fresh optimizer state is not equivalent).
TEST(AdaLoraCompact, MomentsAreCarriedNotReset) {
  Training run;
  for (std::int64_t step = 0; step <= 7; ++step) {
    run.forward_backward(step);
    run.finish_step(step);
  }
  const auto pattern = run.allocator.rank_pattern(run.ctx);
  std::vector<index_t> kept;
  for (std::size_t k = 0; k < 6; ++k)
    if (pattern[0].second[k]) kept.push_back(index_t(k));
  // Stepped once more with zero gradients, AdamW moves a parameter by its moments (and weight
  // decay): fresh moments would move the kept entries differently from the uncompacted run.
  Training probe;
  for (std::int64_t step = 0; step <= 7; ++step) {
    probe.forward_backward(step);
    probe.finish_step(step);
  }
  run.allocator.compact(run.ctx, run.optimizer);
  run.optimizer.step(run.ctx);
  probe.optimizer.step(probe.ctx);
  expect_kept_equal("lora_A", as_const(probe.layers[0].parameters()[0].value),
                    as_const(run.layers[0].parameters()[0].value), kept, 1e-13);
}

TEST(AdaLoraCompact, Refusals) {
  Training run;
  run.forward_backward(0);
  run.finish_step(0);
  expect_error([&] { run.allocator.compact(run.ctx); }, ErrorKind::state,
               {"RankAllocator::compact: the rank pattern is not final yet",
                "step total_step - tfinal = 7"});
  expect_error([&] { run.layers[0].keep_ranks(run.ctx, {}); }, ErrorKind::invalid_argument,
               {"no rank kept"});
  expect_error(
      [&] {
        run.layers[0].keep_ranks(run.ctx, {2, 1});
      },
      ErrorKind::invalid_argument, {"increasing indices below the rank 6", "got 1 at position 1"});
  expect_error(
      [&] {
        run.layers[0].keep_ranks(run.ctx, {0, 6});
      },
      ErrorKind::invalid_argument, {"got 6 at position 1"});
  EXPECT_EQ(run.layers[0].rank(), 6) << "unchanged";
}

}  // namespace
}  // namespace peft::test
