#pragma once
// Pre-training of the base: every parameter trains with peft::AdamW (over raw parameters),
// the learning rate warming up linearly for the first 5% of the steps, then following a cosine
// down to a tenth.

#include <cmath>
#include <numbers>

#include "common.hpp"
#include "model.hpp"
#include "train_loop.hpp"

namespace tfm {

template <class T>
struct Pretraining {
  Transformer<T>& model;
  peft::AdamW<T, peft::Cpu> optimizer;
  double lr;
  index_t steps;

  Pretraining(Transformer<T>& m, double peak_lr, index_t total)
      : model(m), optimizer({.lr = peak_lr, .weight_decay = 0.01}), lr(peak_lr), steps(total) {
    optimizer.add(model.parameters());
  }

  void before_step(Ctx&, index_t) {}
  void zero_grad(Ctx& ctx) { model.zero_grad(ctx); }
  void update(Ctx& ctx, index_t step) {
    const double warmup = std::max(1.0, 0.05 * double(steps));
    const double progress = (double(step) - warmup) / std::max(1.0, double(steps) - warmup);
    const double scale =
        double(step) < warmup
            ? (double(step) + 1) / warmup
            : 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * std::min(1.0, progress)));
    optimizer.set_lr(0, lr * scale);
    optimizer.step(ctx);
  }
};

template <class T>
LoopResult pretrain(Ctx& ctx, Transformer<T>& model, Activations<T>& act,
                    const std::vector<int>& text, const LoopOptions& o, double lr) {
  model.set_train_base(true);
  Pretraining<T> method(model, lr, o.steps);
  const LoopResult r = train_loop(ctx, model, act, text, o, method);
  model.set_train_base(false);
  return r;
}

}  // namespace tfm
