#pragma once
// The demo's own small trainer: the code a user who already has a model and a training loop
// would have before reaching for PEFT. Nothing here is part of peft-cpp's API; it only calls it.
//
//   x [64] -> Linear -> ReLU -> Linear -> ReLU -> Linear -> softmax cross-entropy [10 classes]
//
// The three layers are either the trainable base (Linear below) or adapters (peft::Lora,
// peft::Rosa) wrapping the frozen base weights: all have forward/backward/zero_grad/
// set_training with the same arguments, so one forward, backward and training loop serve both.

#include <peft/peft.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

namespace demo {

using peft::index_t;
using Ctx = peft::Context<peft::Cpu>;
using Mat = peft::Matrix<float, peft::Cpu>;
using Vec = peft::Vector<float, peft::Cpu>;
using View = peft::MatrixView<float, peft::Cpu>;
using ConstView = peft::MatrixView<const float, peft::Cpu>;
using Param = peft::Parameter<float, peft::Cpu>;

constexpr index_t kInputs = 64;
constexpr index_t kHidden = 512;
constexpr index_t kClasses = 10;
constexpr index_t kBatch = 128;

// ---- Randomness ----------------------------------------------------------------------------

// Philox stream ids of the demo, under RandomPurpose::user: they cannot collide with the
// adapters' own streams (initialisation, dropout), whatever the layers' stream ids.
enum StreamId : std::uint32_t { kCentres = 1, kSamples, kShuffle, kWeights, kAlarmDraws };

// Draw i of a Philox stream is a pure function of (seed, stream, step, i): no hidden state, and
// the same bits with every compiler (std::normal_distribution's algorithm varies between standard
// libraries). Use either normal() or bits() on one Random, not both: they share the counter.
struct Random {
  peft::RandomStream stream;
  std::uint64_t next = 0;

  double normal() { return peft::normal_from_stream(stream, next++); }
  std::uint32_t bits() { return stream.bits(next++); }
};

inline Random make_random(std::uint64_t seed, StreamId id, std::uint32_t step = 0) {
  return {peft::make_stream(seed, id, peft::RandomPurpose::user, step)};
}

// ---- Data ----------------------------------------------------------------------------------

struct Dataset {
  Mat x;               // [n, kInputs]
  std::vector<int> y;  // class of each row
};

// A fresh random order of 0..n-1 for each epoch (Fisher-Yates on Philox bits; the modulo bias
// of 32-bit draws is irrelevant here).
inline std::vector<index_t> shuffled(index_t n, std::uint64_t seed, std::uint32_t epoch) {
  std::vector<index_t> order(n);
  for (index_t i = 0; i < n; ++i) order[i] = i;
  Random random = make_random(seed, kShuffle, epoch);
  for (index_t i = n - 1; i > 0; --i) std::swap(order[i], order[random.bits() % (i + 1)]);
  return order;
}

// ---- The base model's layer ----------------------------------------------------------------

// A plain trainable dense layer, y = x Wᵀ + b with W [out, in].
class Linear {
 public:
  // nn.Linear's initialisation: W and b ~ U(-1/sqrt(in), 1/sqrt(in)).
  Linear(index_t in, index_t out, std::uint64_t seed, std::uint32_t layer)
      : w_(out, in), b_(out), dw_(out, in), db_(out) {
    Random random = make_random(seed, kWeights, layer);
    const float bound = float(1.0 / std::sqrt(double(in)));
    for (index_t i = 0; i < w_.size(); ++i)
      w_.data()[i] = peft::uniform_symmetric(random.bits(), bound);
    for (index_t i = 0; i < b_.size(); ++i)
      b_.data()[i] = peft::uniform_symmetric(random.bits(), bound);
  }

  void forward(Ctx& ctx, ConstView x, View y) {
    peft::cpu::broadcast_rows(ctx, bias(), y);                                 // y = b
    peft::cpu::gemm(ctx, peft::Op::N, peft::Op::T, 1.0, x, weight(), 1.0, y);  // y += x Wᵀ
  }

  // Accumulates dW and db (like autograd); writes dx unless it is an empty view.
  void backward(Ctx& ctx, ConstView x, ConstView dy, View dx) {
    peft::cpu::gemm(ctx, peft::Op::T, peft::Op::N, 1.0, dy, x, 1.0, dw_.view());  // dW += dyᵀ x
    View db = db_.view().as_row();
    for (index_t i = 0; i < dy.rows(); ++i)  // db += column sums of dy
      for (index_t j = 0; j < dy.cols(); ++j) db(0, j) += dy(i, j);
    if (!dx.empty()) peft::cpu::gemm(ctx, peft::Op::N, peft::Op::N, 1.0, dy, weight(), 0.0, dx);
  }

  void zero_grad(Ctx& ctx) {
    peft::cpu::fill(ctx, dw_.view(), 0.0);
    peft::cpu::fill(ctx, db_.view().as_row(), 0.0);
  }
  void set_training(bool) {}  // nothing differs between training and evaluation

  std::vector<Param> parameters() {
    return {{"weight", w_.view(), dw_.view()}, {"bias", b_.view().as_row(), db_.view().as_row()}};
  }
  index_t num_parameters() const { return w_.size() + b_.size(); }

  ConstView weight() const { return w_.view(); }
  View weight_mut() { return w_.view(); }  // for merge, which writes W0 += ΔW
  peft::VectorView<const float, peft::Cpu> bias() const { return b_.view(); }

 private:
  Mat w_;
  Vec b_;
  Mat dw_;
  Vec db_;
};

// ---- Forward, loss, backward ---------------------------------------------------------------

// Every buffer one batch needs, allocated once for kBatch rows; a smaller final batch uses the
// leading rows.
struct Batch {
  Mat x{kBatch, kInputs}, h1{kBatch, kHidden}, h2{kBatch, kHidden}, logits{kBatch, kClasses};
  Mat dh1{kBatch, kHidden}, dh2{kBatch, kHidden}, dlogits{kBatch, kClasses};
  std::vector<int> labels = std::vector<int>(kBatch);
  index_t rows = kBatch;

  View rows_of(Mat& m) { return m.view().rows_range(0, rows); }
};

inline void relu(View h) {
  for (index_t i = 0; i < h.rows(); ++i)
    for (index_t j = 0; j < h.cols(); ++j) h(i, j) = std::max(h(i, j), 0.0f);
}

// dh *= (h > 0): h is the ReLU's output, positive exactly where its input was.
inline void relu_backward(ConstView h, View dh) {
  for (index_t i = 0; i < h.rows(); ++i)
    for (index_t j = 0; j < h.cols(); ++j)
      if (h(i, j) <= 0.0f) dh(i, j) = 0.0f;
}

template <class Layer>
void forward(Ctx& ctx, std::vector<Layer>& net, ConstView x, Batch& b) {
  net[0].forward(ctx, x, b.rows_of(b.h1));
  relu(b.rows_of(b.h1));
  net[1].forward(ctx, b.rows_of(b.h1), b.rows_of(b.h2));
  relu(b.rows_of(b.h2));
  net[2].forward(ctx, b.rows_of(b.h2), b.rows_of(b.logits));
}

// Back through the net from b.dlogits. Each layer hands dx to the one before; the first layer
// gets an empty dx because nothing upstream of the data needs a gradient.
template <class Layer>
void backward(Ctx& ctx, std::vector<Layer>& net, ConstView x, Batch& b) {
  net[2].backward(ctx, b.rows_of(b.h2), b.rows_of(b.dlogits), b.rows_of(b.dh2));
  relu_backward(b.rows_of(b.h2), b.rows_of(b.dh2));
  net[1].backward(ctx, b.rows_of(b.h1), b.rows_of(b.dh2), b.rows_of(b.dh1));
  relu_backward(b.rows_of(b.h1), b.rows_of(b.dh1));
  net[0].backward(ctx, x, b.rows_of(b.dh1), View{});
}

struct LossStats {
  double loss_sum = 0;
  index_t correct = 0;
};

inline index_t argmax_row(ConstView logits, index_t i) {
  index_t best = 0;
  for (index_t j = 1; j < logits.cols(); ++j)
    if (logits(i, j) > logits(i, best)) best = j;
  return best;
}

// Softmax cross-entropy of each row against its label. Writes dlogits = (softmax - onehot) / n,
// the gradient of the batch's mean loss, unless dlogits is empty (evaluation).
inline LossStats softmax_cross_entropy(ConstView logits, const int* labels, View dlogits,
                                       double scale = 1.0) {
  LossStats stats;
  const index_t n = logits.rows();
  for (index_t i = 0; i < n; ++i) {
    // Subtract the row's maximum so that exp cannot overflow.
    const index_t best = argmax_row(logits, i);
    const double top = logits(i, best);
    double sum = 0;
    for (index_t j = 0; j < kClasses; ++j) sum += std::exp(logits(i, j) - top);
    stats.loss_sum += std::log(sum) - (logits(i, labels[i]) - top);
    stats.correct += best == labels[i];
    if (dlogits.empty()) continue;
    for (index_t j = 0; j < kClasses; ++j) {
      const double p = std::exp(logits(i, j) - top) / sum;
      dlogits(i, j) = float(scale * (p - (j == labels[i])) / double(n));
    }
  }
  return stats;
}

// ---- Training and evaluation ---------------------------------------------------------------

// Test accuracy in evaluation mode (no dropout in the adapters).
template <class Layer>
double accuracy(Ctx& ctx, std::vector<Layer>& net, const Dataset& data, Batch& b) {
  for (auto& layer : net) layer.set_training(false);
  index_t correct = 0;
  const index_t n = data.x.rows();
  for (index_t start = 0; start < n; start += kBatch) {
    b.rows = std::min(kBatch, n - start);
    forward(ctx, net, data.x.view().rows_range(start, b.rows), b);
    correct += softmax_cross_entropy(b.rows_of(b.logits), &data.y[start], View{}).correct;
  }
  for (auto& layer : net) layer.set_training(true);
  return double(correct) / double(n);
}

// Copies the rows order[start, start + b.rows) of the data into the batch.
inline void gather(const Dataset& data, const std::vector<index_t>& order, index_t start,
                   Batch& b) {
  const ConstView src = data.x.view();
  View x = b.rows_of(b.x);
  for (index_t i = 0; i < b.rows; ++i) {
    const index_t row = order[start + i];
    for (index_t j = 0; j < kInputs; ++j) x(i, j) = src(row, j);
    b.labels[i] = data.y[row];
  }
}

// Where a method hooks work of its own into the training loop (RoSA collects gradients and
// builds its masks there). Steps are optimizer steps, 0-based; a step may accumulate gradients
// over several batches, and before_step/after_step run inside the timed region.
struct NoHooks {
  index_t batches_of_step(std::int64_t) const { return 1; }
  void before_step(Ctx&, std::int64_t) {}
  void before_update(Ctx&, std::int64_t) {}  // gradients complete, optimizer not yet stepped
  void after_step(Ctx&, std::int64_t) {}
};

struct EpochResult {
  double loss = 0;
  double accuracy = 0;
  double train_ms = 0;  // time of the epoch's steps: batches, forward, backward, optimizer
  index_t batches = 0;
};

// One pass over the data in a shuffled order: forward, loss and backward of each batch and,
// once the step's batches are done (its gradients summed, each scaled by 1 / batches), an
// optimizer step. A step still short of batches at the end of the data steps there.
template <class Layer, class Optimizer, class Hooks>
EpochResult train_epoch(Ctx& ctx, std::vector<Layer>& net, Optimizer& opt, Hooks& hooks,
                        const Dataset& data, Batch& b, std::uint64_t seed, std::uint32_t epoch) {
  EpochResult result;
  LossStats total;
  const index_t n = data.x.rows();
  const std::vector<index_t> order = shuffled(n, seed, epoch);
  index_t start = 0, seen = 0;
  while (start < n) {
    const index_t batches = hooks.batches_of_step(opt.steps());
    const auto t0 = std::chrono::steady_clock::now();
    hooks.before_step(ctx, opt.steps());
    for (auto& layer : net) layer.zero_grad(ctx);
    for (index_t k = 0; k < batches && start < n; ++k, start += b.rows) {
      b.rows = std::min(kBatch, n - start);
      gather(data, order, start, b);
      forward(ctx, net, b.rows_of(b.x), b);
      const LossStats s = softmax_cross_entropy(b.rows_of(b.logits), b.labels.data(),
                                                b.rows_of(b.dlogits), 1.0 / double(batches));
      backward(ctx, net, b.rows_of(b.x), b);
      total.loss_sum += s.loss_sum;
      total.correct += s.correct;
      seen += b.rows;
      ++result.batches;
    }
    hooks.before_update(ctx, opt.steps());
    opt.step(ctx);  // also calls parameters_updated on the adapter layers it holds
    hooks.after_step(ctx, opt.steps() - 1);
    result.train_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  result.loss = total.loss_sum / double(seen);
  result.accuracy = double(total.correct) / double(seen);
  return result;
}

// Trains for `epochs` epochs, printing one line per epoch; returns the mean time per batch.
template <class Layer, class Optimizer, class Hooks>
double fit(const char* phase, Ctx& ctx, std::vector<Layer>& net, Optimizer& opt, Hooks& hooks,
           const Dataset& train, const Dataset& test, Batch& b, std::uint64_t seed,
           std::uint32_t first_epoch, int epochs) {
  double total_ms = 0;
  index_t total_batches = 0;
  for (int e = 0; e < epochs; ++e) {
    const EpochResult r = train_epoch(ctx, net, opt, hooks, train, b, seed, first_epoch + e);
    total_ms += r.train_ms;
    total_batches += r.batches;
    std::printf("%s epoch %2d/%d  loss %.4f  train accuracy %5.1f%%  test accuracy %5.1f%%\n",
                phase, e + 1, epochs, r.loss, 100 * r.accuracy, 100 * accuracy(ctx, net, test, b));
    std::fflush(stdout);
  }
  return total_ms / double(total_batches);
}

}  // namespace demo
