// AdaLoRA's rank allocator and orthogonal regulariser on the CPU: options, the budget schedule,
// the importance EMAs, the triplet scores and the mask against brute force, exact budgets under
// ties, the frozen pattern, resuming from state, and finite differences of the regulariser.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "util/test_util.hpp"

namespace peft::test {
namespace {

using Layer = AdaLora<double, Cpu>;

struct Model {
  HostCtx ctx;
  std::vector<Matrix<double, Cpu>> weights;
  std::vector<Layer> layers;

  explicit Model(std::vector<std::pair<index_t, index_t>> shapes, index_t r = 4) {
    std::uint32_t seed = 1;
    for (auto [out, in] : shapes) weights.push_back(random_matrix<double>(out, in, seed++));
    for (std::size_t i = 0; i < weights.size(); ++i) {
      layers.emplace_back(ctx, weights[i].view(),
                          AdaLoraConfig{.init_r = r, .init_weights = false, .seed = 3},
                          LayerOptions{.stream_id = std::uint32_t(i)});
    }
  }

  /// Deterministic "gradients" written straight into the parameters' gradients.
  void set_gradients(std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> dist(-1, 1);
    for (auto& l : layers) {
      l.zero_grad(ctx);
      for (auto& p : l.parameters())
        for (index_t i = 0; i < p.grad.size(); ++i) p.grad.data()[i] = dist(gen);
    }
  }

  RankAllocator<double, Cpu> allocator(const RankAllocatorOptions& o) {
    RankAllocator<double, Cpu> a(o);
    for (std::size_t i = 0; i < layers.size(); ++i)
      a.add(ctx, layers[i], "layers." + std::to_string(i));
    return a;
  }
};

TEST(RankAllocator, OptionsAreValidatedWithMessagesThatExplain) {
  expect_error([] { RankAllocator<double, Cpu>({.total_step = 0}); }, ErrorKind::invalid_argument,
               {"total_step is 0"});
  expect_error([] { RankAllocator<double, Cpu>({.tinit = 10, .tfinal = 5, .total_step = 15}); },
               ErrorKind::invalid_argument, {"tinit (10)", "total_step - tfinal (15 - 5 = 10)"});
  expect_error([] { RankAllocator<double, Cpu>({.beta1 = 1.0, .total_step = 5}); },
               ErrorKind::invalid_argument, {"beta1 is 1", "(0, 1)"});
  expect_error([] { RankAllocator<double, Cpu>({.delta_t = 0, .total_step = 5}); },
               ErrorKind::invalid_argument, {"delta_t is 0"});
  Model m({{6, 5}});
  auto a = m.allocator({.total_step = 5});
  a.update_and_allocate(m.ctx, 0);
  expect_error([&] { a.add(m.ctx, m.layers[0], "late"); }, ErrorKind::state, {"after the first"});
}

TEST(RankAllocator, BudgetScheduleIsPeftsCubic) {
  Model m({{6, 5}, {7, 5}}, 12);  // init budget 24, target 2 x 8 = 16
  auto a = m.allocator({.target_r = 8, .tinit = 2, .tfinal = 3, .delta_t = 2, .total_step = 20});
  EXPECT_EQ(a.init_budget(), 24);
  EXPECT_EQ(a.target_budget(), 16);
  // PEFT: step <= tinit: (init, no mask); step > T - tfinal: (target, mask); else
  // int((init - target) (1 - (step - tinit) / (T - tfinal - tinit))^3 + target).
  const std::vector<std::tuple<int, index_t, bool>> expected = {
      {0, 24, false},  {2, 24, false},  {3, 22, false}, {4, 21, true}, {10, 16, true},
      {11, 16, false}, {17, 16, false}, {18, 16, true}, {20, 16, true}};
  for (auto [step, budget, mask] : expected) {
    const auto b = a.budget_schedule(step);
    EXPECT_EQ(b.budget, budget) << "step " << step;
    EXPECT_EQ(b.mask, mask) << "step " << step;
  }
}

TEST(RankAllocator, KeepsTheBestTripletsByBruteForce) {
  Model m({{6, 5}, {3, 8}}, 4);
  auto a = m.allocator({.target_r = 2, .tfinal = 0, .beta1 = 0.6, .beta2 = 0.7, .total_step = 4});
  // Host reference of the EMAs and scores.
  std::vector<std::vector<Matrix<double, Cpu>>> sens(2), unc(2);
  for (int l = 0; l < 2; ++l)
    for (auto& p : m.layers[std::size_t(l)].parameters()) {
      sens[std::size_t(l)].emplace_back(p.value.rows(), p.value.cols());
      unc[std::size_t(l)].emplace_back(p.value.rows(), p.value.cols());
    }
  for (int step = 0; step < 3; ++step) {
    m.set_gradients(100 + std::uint32_t(step));
    std::vector<double> triplet;
    for (int l = 0; l < 2; ++l) {
      auto params = m.layers[std::size_t(l)].parameters();
      std::vector<std::vector<double>> score(3);
      for (int k = 0; k < 3; ++k) {
        auto& s = sens[std::size_t(l)][std::size_t(k)];
        auto& u = unc[std::size_t(l)][std::size_t(k)];
        for (index_t i = 0; i < s.size(); ++i) {
          const double ipt = std::abs(params[std::size_t(k)].value.data()[i] *
                                      params[std::size_t(k)].grad.data()[i]);
          s.data()[i] = 0.6 * s.data()[i] + 0.4 * ipt;
          u.data()[i] = 0.7 * u.data()[i] + 0.3 * std::abs(ipt - s.data()[i]);
          score[std::size_t(k)].push_back(s.data()[i] * u.data()[i]);
        }
      }
      const index_t r = 4, in = params[0].value.cols(), out = params[2].value.rows();
      for (index_t i = 0; i < r; ++i) {
        double t = score[1][std::size_t(i)], mean_a = 0, mean_b = 0;
        for (index_t j = 0; j < in; ++j) mean_a += score[0][std::size_t(i * in + j)];
        for (index_t o = 0; o < out; ++o) mean_b += score[2][std::size_t(o * r + i)];
        triplet.push_back(t + mean_a / double(in) + mean_b / double(out));
      }
    }
    const auto budget = a.budget_schedule(step);
    a.update_and_allocate(m.ctx, step);
    if (!budget.mask) continue;
    std::vector<std::size_t> order(triplet.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](auto p, auto q) { return triplet[p] > triplet[q]; });
    std::vector<bool> keep(triplet.size(), false);
    for (index_t k = 0; k < budget.budget; ++k) keep[order[std::size_t(k)]] = true;
    const auto pattern = a.rank_pattern(m.ctx);
    for (int l = 0; l < 2; ++l) {
      auto e = m.layers[std::size_t(l)].parameters()[1].value;
      for (index_t i = 0; i < 4; ++i) {
        const bool kept = keep[std::size_t(l * 4 + i)];
        EXPECT_EQ(pattern[std::size_t(l)].second[std::size_t(i)], kept) << step << " " << l;
        if (!kept) {
          EXPECT_EQ(e(i, 0), 0.0);
        }
      }
    }
  }
}

TEST(RankAllocator, KeepsExactlyTheBudgetUnderTies) {
  // All gradients zero: every score ties at 0. PEFT's `score <= kthvalue` masks every triplet;
  // here exactly `budget` stay, the earliest ones.
  Model m({{6, 5}, {6, 5}}, 4);
  auto a = m.allocator({.target_r = 3, .total_step = 2});
  for (auto& l : m.layers) l.zero_grad(m.ctx);
  a.update_and_allocate(m.ctx, 2);  // the freeze step: target budget 6 of 8
  const auto pattern = a.rank_pattern(m.ctx);
  EXPECT_EQ(pattern[0].second, (std::vector<bool>{true, true, true, true}));
  EXPECT_EQ(pattern[1].second, (std::vector<bool>{true, true, false, false}));
  EXPECT_TRUE(a.pattern_final());
}

TEST(RankAllocator, FrozenPatternIsReappliedAfterTheFinalStep) {
  Model m({{6, 5}}, 4);
  auto a = m.allocator({.target_r = 2, .tfinal = 2, .total_step = 6});
  for (std::int64_t step = 0; step <= 4; ++step) {
    m.set_gradients(std::uint32_t(step));
    a.update_and_allocate(m.ctx, step);
  }
  ASSERT_TRUE(a.pattern_final());
  const auto pattern = a.rank_pattern(m.ctx)[0].second;
  EXPECT_EQ(std::count(pattern.begin(), pattern.end(), true), 2);
  auto e = m.layers[0].parameters()[1].value;
  for (index_t i = 0; i < 4; ++i) e(i, 0) = 1.5;  // an optimizer step revives every E
  m.layers[0].parameters_updated(m.ctx);
  a.update_and_allocate(m.ctx, 5);
  for (index_t i = 0; i < 4; ++i) EXPECT_EQ(e(i, 0), pattern[std::size_t(i)] ? 1.5 : 0.0);
}

TEST(RankAllocator, ResumingFromStateMakesTheSameMasks) {
  const RankAllocatorOptions options{.target_r = 2, .tinit = 1, .tfinal = 1, .total_step = 8};
  Model straight({{6, 5}, {4, 7}}, 4), resumed({{6, 5}, {4, 7}}, 4);
  auto a = straight.allocator(options);
  auto b = resumed.allocator(options);
  for (std::int64_t step = 0; step < 4; ++step) {
    straight.set_gradients(std::uint32_t(step));
    resumed.set_gradients(std::uint32_t(step));
    a.update_and_allocate(straight.ctx, step);
    b.update_and_allocate(resumed.ctx, step);
  }
  // "Stop": a new allocator over the same layers, its state written back from b's.
  auto c = resumed.allocator(options);
  auto saved = b.state(resumed.ctx);
  auto fresh = c.state(resumed.ctx);
  ASSERT_EQ(saved.size(), fresh.size());
  for (std::size_t i = 0; i < saved.size(); ++i) {
    EXPECT_EQ(saved[i].first, fresh[i].first);
    copy(resumed.ctx, as_const(saved[i].second), fresh[i].second);
  }
  c.set_pattern_final(b.pattern_final());
  for (std::int64_t step = 4; step < 10; ++step) {
    straight.set_gradients(std::uint32_t(step));
    resumed.set_gradients(std::uint32_t(step));
    a.update_and_allocate(straight.ctx, step);
    c.update_and_allocate(resumed.ctx, step);
    EXPECT_EQ(a.rank_pattern(straight.ctx), c.rank_pattern(resumed.ctx)) << "step " << step;
  }
}

TEST(OrthogonalRegularizer, ValueAndGradientMatchFiniteDifferences) {
  Model m({{6, 5}, {4, 7}}, 3);
  std::vector<Layer*> layers = {&m.layers[0], &m.layers[1]};
  auto value = [&] {
    double total = 0;
    for (auto* l : layers) {
      auto p = l->parameters();
      auto aat = naive_product(as_const(p[0].value), false, as_const(p[0].value), true);
      auto btb = naive_product(as_const(p[2].value), true, as_const(p[2].value), false);
      for (auto* g : {&aat, &btb}) {
        double s = 0;
        for (index_t i = 0; i < g->rows(); ++i)
          for (index_t j = 0; j < g->cols(); ++j) {
            const double d = g->view()(i, j) - (i == j ? 1.0 : 0.0);
            s += d * d;
          }
        total += std::sqrt(s);
      }
    }
    return 0.5 * total / 4.0;
  };
  for (auto* l : layers) l->zero_grad(m.ctx);
  const double r = add_orthogonal_regularization(m.ctx, layers, 0.5);
  EXPECT_NEAR(r, value(), 1e-12);
  for (auto* l : layers)
    for (int k : {0, 2}) {
      auto p = l->parameters()[std::size_t(k)];
      Matrix<double, Cpu> numeric(p.value.rows(), p.value.cols());
      for (index_t i = 0; i < p.value.size(); ++i) {
        const double saved = p.value.data()[i], h = 1e-6;
        p.value.data()[i] = saved + h;
        const double plus = value();
        p.value.data()[i] = saved - h;
        const double minus = value();
        p.value.data()[i] = saved;
        numeric.data()[i] = (plus - minus) / (2 * h);
      }
      EXPECT_LT(relative_error(as_const(p.grad), as_const(numeric.view())), 1e-7) << p.name;
    }
  expect_error([&] { add_orthogonal_regularization(m.ctx, layers, -1.0); },
               ErrorKind::invalid_argument, {"weight is -1"});
}

}  // namespace
}  // namespace peft::test
