#pragma once
// The training loop shared by pre-training and every adaptation: a batch of random windows per
// step, forward, backward, and the method's update; progress lines (step, loss, steps per
// second) unless quiet. A method provides
//   before_step(ctx, step)   e.g. RoSA starts collecting the gradients its masks come from
//   zero_grad(ctx)
//   update(ctx, step)        the optimizer step and whatever the method does around it

#include <chrono>
#include <cstdio>
#include <vector>

#include "common.hpp"
#include "model.hpp"
#include "text.hpp"

namespace tfm {

struct LoopOptions {
  const char* label = "";
  index_t steps = 100;
  index_t batch = 8;
  index_t seq = 128;
  std::uint64_t seed = 0;
  std::uint32_t first_draw = 0;  // batch draws step, step + 1, ... of the seed's batch stream
  bool quiet = false;
};

struct LoopResult {
  double ms_per_step = 0;  // forward, backward and update; not the batch assembly
  double last_loss = 0;    // mean over the last tenth of the steps
};

template <class T, class Method>
LoopResult train_loop(Ctx& ctx, Transformer<T>& model, Activations<T>& act,
                      const std::vector<int>& text, const LoopOptions& o, Method& method) {
  using Clock = std::chrono::steady_clock;
  LoopResult r;
  double timed_ms = 0, tail_loss = 0;
  index_t tail = 0;
  const index_t report_every = std::max<index_t>(1, o.steps / 10);
  const auto start = Clock::now();
  for (index_t step = 0; step < o.steps; ++step) {
    const Batch batch =
        random_batch(text, o.batch, o.seq, o.seed, o.first_draw + std::uint32_t(step));
    const auto t0 = Clock::now();
    method.before_step(ctx, step);
    method.zero_grad(ctx);
    const double loss = model.forward(ctx, batch, act, true);
    model.backward(ctx, batch, act);
    method.update(ctx, step);
    timed_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (step >= o.steps - std::max<index_t>(1, o.steps / 10)) {
      tail_loss += loss;
      ++tail;
    }
    if (!o.quiet && ((step + 1) % report_every == 0 || step + 1 == o.steps)) {
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      std::printf("  %-8s step %5lld/%lld  loss %.4f  %.2f steps/s\n", o.label,
                  static_cast<long long>(step + 1), static_cast<long long>(o.steps), loss,
                  double(step + 1) / seconds);
      std::fflush(stdout);
    }
  }
  r.ms_per_step = timed_ms / double(o.steps);
  r.last_loss = tail_loss / double(tail);
  return r;
}

// Mean loss over the validation batches.
template <class T>
double validation_loss(Ctx& ctx, Transformer<T>& model, Activations<T>& act,
                       const std::vector<Batch>& batches) {
  double total = 0;
  index_t rows = 0;
  for (const Batch& b : batches) {
    total += model.forward(ctx, b, act, false) * double(b.batch * b.seq);
    rows += b.batch * b.seq;
  }
  return total / double(rows);
}

}  // namespace tfm
