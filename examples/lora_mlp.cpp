// lora_mlp: train a small MLP on task A, freeze it, then adapt it to a shifted task B with LoRA.
//
// The model is written here, the way a user with their own trainer would write it:
//
//   x [64] -> Linear -> ReLU -> Linear -> ReLU -> Linear -> softmax cross-entropy [10 classes]
//
// Phase 1 trains every weight and bias of the base model ("full training") with peft::AdamW over
// raw peft::Parameter groups. Phase 2 freezes the base, puts a peft::Lora on each Linear (the
// frozen weight is shared, not copied) and trains only the adapters' A and B matrices.
//
// Data: synthetic and deterministic, drawn from peft's counter-based Philox generator: a given
// --seed always gives the same data, and the same run at a given thread count.
//   Task A: 10 classes, each a mixture of 3 Gaussian blobs (so no linear model can separate
//     them). The blob centres lie in the first 16 of the 64 input features; every feature gets
//     unit Gaussian noise, so the other 48 are pure distractors. Sample i has class i % 10 and
//     blob (i / 10) % 3: classes are balanced without any random draw.
//   Task B: the same classes seen through a "rotated sensor": x_B = R x, where R rotates the
//     feature planes (0, 1), (2, 3), ..., (6, 7) by 80 degrees. The frozen model misreads these
//     inputs. R is orthogonal and R - I has rank 8, so the first layer's W1 Rᵀ = W1 + W1 (Rᵀ - I)
//     undoes the shift with a rank-8 change of W1: exactly what a rank-8 LoRA can learn.
// With the defaults, task B's test accuracy goes from about 46% (frozen base) to about 93%.
//
// Usage: lora_mlp [--epochs N] [--rank R] [--seed S] [--threads T] [--help]

#include <peft/peft.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using peft::index_t;
using Ctx = peft::Context<peft::Cpu>;
using Mat = peft::Matrix<float, peft::Cpu>;
using Vec = peft::Vector<float, peft::Cpu>;
using View = peft::MatrixView<float, peft::Cpu>;
using ConstView = peft::MatrixView<const float, peft::Cpu>;
using Param = peft::Parameter<float, peft::Cpu>;
using Lora = peft::Lora<float, peft::Cpu>;

// ---- The problem ---------------------------------------------------------------------------

constexpr index_t kInputs = 64;
constexpr index_t kSignal = 16;  // features that carry the class; the rest is noise
constexpr index_t kRotated = 8;  // task B rotates this many of the signal features
constexpr double kAngle = 80.0 * 3.14159265358979323846 / 180.0;
constexpr index_t kHidden = 512;
constexpr index_t kClasses = 10;
constexpr index_t kBlobsPerClass = 3;
constexpr double kSpread = 1.3;  // standard deviation of the blob centres (noise has 1)
constexpr index_t kTrainSize = 16384;
constexpr index_t kTestSize = 4096;
constexpr index_t kBatch = 128;

// Philox stream ids of the example. The LoRA layers use stream ids 1..3 (one per layer), so ours
// start higher: the same (seed, stream) never serves two purposes.
enum StreamId : std::uint32_t { kCentres = 100, kSamples, kShuffle, kWeights };

// ---- Randomness ----------------------------------------------------------------------------

// Draw i of a Philox stream is a pure function of (seed, stream, step, i): no hidden state, and
// the same bits with every compiler (std::normal_distribution's algorithm varies between standard
// libraries). Use either normal() or bits() on one Random, not both: they share the counter.
struct Random {
  peft::RandomStream stream;
  std::uint64_t next = 0;

  double normal() { return peft::normal_from_stream(stream, next++); }
  std::uint32_t bits() { return stream.bits(next++); }
};

Random make_random(std::uint64_t seed, StreamId id, std::uint32_t step = 0) {
  return {peft::make_stream(seed, id, peft::RandomPurpose::init, step)};
}

// ---- Data ----------------------------------------------------------------------------------

struct Dataset {
  Mat x;               // [n, kInputs]
  std::vector<int> y;  // class of each row
};

// One centre per (class, blob), non-zero only in the signal features.
Mat make_centres(std::uint64_t seed) {
  Mat centres(kClasses * kBlobsPerClass, kInputs);
  Random random = make_random(seed, kCentres);
  View c = centres.view();
  for (index_t i = 0; i < c.rows(); ++i)
    for (index_t j = 0; j < kSignal; ++j) c(i, j) = float(kSpread * random.normal());
  return centres;
}

// `split` separates the random streams of the train and test sets of both tasks.
Dataset make_dataset(const Mat& centres, index_t n, std::uint64_t seed, std::uint32_t split) {
  Dataset d{Mat(n, kInputs), std::vector<int>(n)};
  Random noise = make_random(seed, kSamples, split);
  const ConstView c = centres.view();
  View x = d.x.view();
  for (index_t i = 0; i < n; ++i) {
    d.y[i] = int(i % kClasses);
    const index_t blob = d.y[i] * kBlobsPerClass + (i / kClasses) % kBlobsPerClass;
    for (index_t j = 0; j < kInputs; ++j) x(i, j) = c(blob, j) + float(noise.normal());
  }
  return d;
}

// Task B's sensor: rotates the feature planes (0, 1), (2, 3), ... of the first kRotated features.
void rotate_inputs(Dataset& d) {
  const float c = float(std::cos(kAngle)), s = float(std::sin(kAngle));
  View x = d.x.view();
  for (index_t i = 0; i < x.rows(); ++i) {
    for (index_t j = 0; j < kRotated; j += 2) {
      const float u = x(i, j), v = x(i, j + 1);
      x(i, j) = c * u - s * v;
      x(i, j + 1) = s * u + c * v;
    }
  }
}

// A fresh random order of 0..n-1 for each epoch (Fisher-Yates on Philox bits; the modulo bias
// of 32-bit draws is irrelevant here).
std::vector<index_t> shuffled(index_t n, std::uint64_t seed, std::uint32_t epoch) {
  std::vector<index_t> order(n);
  for (index_t i = 0; i < n; ++i) order[i] = i;
  Random random = make_random(seed, kShuffle, epoch);
  for (index_t i = n - 1; i > 0; --i) std::swap(order[i], order[random.bits() % (i + 1)]);
  return order;
}

// ---- The base model's layer ----------------------------------------------------------------

// A plain trainable dense layer, y = x Wᵀ + b with W [out, in]: the "existing model" a user would
// have before reaching for PEFT. It has the same forward/backward/zero_grad/set_training calls as
// peft::Lora, so one forward and one backward function below serve both phases.
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
  View weight_mut() { return w_.view(); }  // for Lora::merge, which writes W0 += ΔW
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

void relu(View h) {
  for (index_t i = 0; i < h.rows(); ++i)
    for (index_t j = 0; j < h.cols(); ++j) h(i, j) = std::max(h(i, j), 0.0f);
}

// dh *= (h > 0): h is the ReLU's output, positive exactly where its input was.
void relu_backward(ConstView h, View dh) {
  for (index_t i = 0; i < h.rows(); ++i)
    for (index_t j = 0; j < h.cols(); ++j)
      if (h(i, j) <= 0.0f) dh(i, j) = 0.0f;
}

// Layer is Linear (phase 1) or peft::Lora (phase 2): both take (ctx, x, y).
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

// Softmax cross-entropy of each row against its label. Writes dlogits = (softmax - onehot) / n,
// the gradient of the batch's mean loss, unless dlogits is empty (evaluation).
LossStats softmax_cross_entropy(ConstView logits, const int* labels, View dlogits) {
  LossStats stats;
  const index_t n = logits.rows();
  for (index_t i = 0; i < n; ++i) {
    // Subtract the row's maximum so that exp cannot overflow.
    index_t best = 0;
    for (index_t j = 1; j < kClasses; ++j)
      if (logits(i, j) > logits(i, best)) best = j;
    const double top = logits(i, best);
    double sum = 0;
    for (index_t j = 0; j < kClasses; ++j) sum += std::exp(logits(i, j) - top);
    stats.loss_sum += std::log(sum) - (logits(i, labels[i]) - top);
    stats.correct += best == labels[i];
    if (dlogits.empty()) continue;
    for (index_t j = 0; j < kClasses; ++j) {
      const double p = std::exp(logits(i, j) - top) / sum;
      dlogits(i, j) = float((p - (j == labels[i])) / double(n));
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

struct EpochResult {
  double loss = 0;
  double accuracy = 0;
  double step_ms = 0;  // total time of the epoch's training steps
  index_t steps = 0;
};

// Copies the rows order[start, start + b.rows) of the data into the batch.
void gather(const Dataset& data, const std::vector<index_t>& order, index_t start, Batch& b) {
  const ConstView src = data.x.view();
  View x = b.rows_of(b.x);
  for (index_t i = 0; i < b.rows; ++i) {
    const index_t row = order[start + i];
    for (index_t j = 0; j < kInputs; ++j) x(i, j) = src(row, j);
    b.labels[i] = data.y[row];
  }
}

// One pass over the data in a shuffled order: forward, loss, backward, optimizer step.
template <class Layer, class Optimizer>
EpochResult train_epoch(Ctx& ctx, std::vector<Layer>& net, Optimizer& opt, const Dataset& data,
                        Batch& b, std::uint64_t seed, std::uint32_t epoch) {
  EpochResult result;
  LossStats total;
  const index_t n = data.x.rows();
  const std::vector<index_t> order = shuffled(n, seed, epoch);
  for (index_t start = 0; start < n; start += kBatch) {
    b.rows = std::min(kBatch, n - start);
    gather(data, order, start, b);
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& layer : net) layer.zero_grad(ctx);
    forward(ctx, net, b.rows_of(b.x), b);
    const LossStats s =
        softmax_cross_entropy(b.rows_of(b.logits), b.labels.data(), b.rows_of(b.dlogits));
    backward(ctx, net, b.rows_of(b.x), b);
    opt.step(ctx);  // also calls parameters_updated on the LoRA layers it holds
    const auto t1 = std::chrono::steady_clock::now();
    result.step_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    ++result.steps;
    total.loss_sum += s.loss_sum;
    total.correct += s.correct;
  }
  result.loss = total.loss_sum / double(n);
  result.accuracy = double(total.correct) / double(n);
  return result;
}

// Trains for `epochs` epochs, printing one line per epoch; returns the mean time of a step.
template <class Layer, class Optimizer>
double fit(const char* phase, Ctx& ctx, std::vector<Layer>& net, Optimizer& opt,
           const Dataset& train, const Dataset& test, Batch& b, std::uint64_t seed,
           std::uint32_t first_epoch, int epochs) {
  double total_ms = 0;
  index_t total_steps = 0;
  for (int e = 0; e < epochs; ++e) {
    const EpochResult r = train_epoch(ctx, net, opt, train, b, seed, first_epoch + e);
    total_ms += r.step_ms;
    total_steps += r.steps;
    std::printf("%s epoch %2d/%d  loss %.4f  train accuracy %5.1f%%  test accuracy %5.1f%%\n",
                phase, e + 1, epochs, r.loss, 100 * r.accuracy, 100 * accuracy(ctx, net, test, b));
    std::fflush(stdout);
  }
  return total_ms / double(total_steps);
}

// ---- Command line --------------------------------------------------------------------------

struct Options {
  int epochs = 6;
  index_t rank = 8;
  std::uint64_t seed = 42;
  // One thread by default: this model's GEMMs are small (128 x 512 x 512), so the fork/join and
  // busy-waiting of a second thread cost about what it saves, and far more on a busy machine.
  int threads = 1;
};

void usage(std::FILE* out) {
  std::fprintf(out,
               "usage: lora_mlp [--epochs N] [--rank R] [--seed S] [--threads T]\n"
               "Trains an MLP on task A, freezes it and adapts it to a shifted task B with LoRA.\n"
               "  --epochs N  epochs of each phase (default 6)\n"
               "  --rank R    LoRA rank r, 1..%lld (default 8, the rank of task B's shift)\n"
               "  --seed S    seed of the data, the initialisation and the shuffling (default 42)\n"
               "  --threads T CPU threads for the GEMMs and element-wise loops (default 1)\n",
               static_cast<long long>(kInputs));
}

// Parses an integer in [lo, hi]; false when the text is not one.
bool parse_int(std::string_view text, long long lo, long long hi, long long& value) {
  try {
    std::size_t used = 0;
    value = std::stoll(std::string(text), &used);
    return used == text.size() && value >= lo && value <= hi;
  } catch (const std::exception&) {
    return false;
  }
}

// Returns false (after printing why) when the command line is invalid.
bool parse_options(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const int at = i;
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      usage(stdout);
      std::exit(0);
    }
    long long value = 0;
    const bool has_value = i + 1 < argc;
    if (flag == "--epochs" && has_value && parse_int(argv[++i], 1, 1000, value)) {
      options.epochs = int(value);
    } else if (flag == "--rank" && has_value && parse_int(argv[++i], 1, kInputs, value)) {
      options.rank = value;
    } else if (flag == "--seed" && has_value && parse_int(argv[++i], 0, INT64_MAX, value)) {
      options.seed = std::uint64_t(value);
    } else if (flag == "--threads" && has_value && parse_int(argv[++i], 1, 1024, value)) {
      options.threads = int(value);
    } else {
      const bool took_value = i > at;  // the flag was known, its value was not valid
      std::fprintf(stderr, "lora_mlp: bad argument '%s%s%s'\n", argv[at], took_value ? " " : "",
                   took_value ? argv[i] : "");
      usage(stderr);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parse_options(argc, argv, options)) return 2;
  const auto start = std::chrono::steady_clock::now();

  // Both tasks share the classes (the blob centres); B's inputs are rotated.
  const Mat centres = make_centres(options.seed);
  const Dataset train_a = make_dataset(centres, kTrainSize, options.seed, 0);
  const Dataset test_a = make_dataset(centres, kTestSize, options.seed, 1);
  Dataset train_b = make_dataset(centres, kTrainSize, options.seed, 2);
  Dataset test_b = make_dataset(centres, kTestSize, options.seed, 3);
  rotate_inputs(train_b);
  rotate_inputs(test_b);

  Ctx ctx(peft::CpuContextOptions{.threads = options.threads});
  Batch batch;

  // Phase 1: full training of the base model on task A.
  std::vector<Linear> base;
  base.emplace_back(kInputs, kHidden, options.seed, 0);
  base.emplace_back(kHidden, kHidden, options.seed, 1);
  base.emplace_back(kHidden, kClasses, options.seed, 2);
  peft::AdamW<float, peft::Cpu> full_opt({.lr = 2e-3, .weight_decay = 0.0});
  index_t full_parameters = 0;
  for (auto& layer : base) {
    full_opt.add(layer.parameters());
    full_parameters += layer.num_parameters();
  }
  std::printf("Phase 1: full training on task A (%lld parameters, %d thread%s)\n",
              static_cast<long long>(full_parameters), ctx.threads(), ctx.threads() > 1 ? "s" : "");
  const double full_step_ms =
      fit("A", ctx, base, full_opt, train_a, test_a, batch, options.seed, 0, options.epochs);
  const double base_accuracy_a = accuracy(ctx, base, test_a, batch);
  const double base_accuracy_b = accuracy(ctx, base, test_b, batch);
  std::printf("Frozen base: test accuracy %.1f%% on A, %.1f%% on B (the rotated inputs)\n\n",
              100 * base_accuracy_a, 100 * base_accuracy_b);

  // Phase 2: the base is frozen (full_opt is never stepped again); each Linear's
  // weight and bias are wrapped, not copied, by a LoRA layer. B starts at zero, so the adapted
  // model starts out exactly as the base.
  const peft::LoraConfig config{.r = options.rank,
                                .alpha = 2.0 * double(options.rank),
                                .dropout = 0.05f,
                                .seed = options.seed};
  std::vector<Lora> adapted;
  adapted.reserve(base.size());
  for (std::uint32_t i = 0; i < base.size(); ++i)
    adapted.emplace_back(ctx, base[i].weight(), config, peft::LayerOptions{.stream_id = i + 1},
                         base[i].bias());
  peft::AdamW<float, peft::Cpu> lora_opt({.lr = 3e-3, .weight_decay = 0.0});
  index_t lora_parameters = 0;
  for (auto& layer : adapted) {
    lora_opt.add(layer);
    lora_parameters += layer.num_trainable();
  }
  std::printf("Phase 2: LoRA (r = %lld) on the frozen base, task B\n",
              static_cast<long long>(options.rank));
  const double lora_step_ms =
      fit("B", ctx, adapted, lora_opt, train_b, test_b, batch, options.seed, 1000, options.epochs);
  const double lora_accuracy_b = accuracy(ctx, adapted, test_b, batch);

  // For deployment, fold ΔW into the base weights: the plain base forward then runs task B with
  // no adapter cost (and no longer serves task A; unmerge would restore it).
  for (std::size_t i = 0; i < base.size(); ++i) adapted[i].merge(ctx, base[i].weight_mut());
  const double merged_accuracy_b = accuracy(ctx, base, test_b, batch);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\nSummary\n");
  std::printf("  trainable parameters: LoRA %lld vs full fine-tuning %lld (%.1f%%)\n",
              static_cast<long long>(lora_parameters), static_cast<long long>(full_parameters),
              100.0 * double(lora_parameters) / double(full_parameters));
  std::printf(
      "  task B test accuracy: %.1f%% before adaptation, %.1f%% after LoRA (%.1f%% merged)\n",
      100 * base_accuracy_b, 100 * lora_accuracy_b, 100 * merged_accuracy_b);
  std::printf("  time per step: %.3f ms full training, %.3f ms LoRA (batch %lld)\n", full_step_ms,
              lora_step_ms, static_cast<long long>(kBatch));
  std::printf("  total time: %.1f s\n", seconds);
  return 0;
}
