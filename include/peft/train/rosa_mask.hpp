#pragma once
// RoSA mask generation. For each registered layer, accumulates the dense gradient of W0,
// G = dyᵀ x, over the micro-batches of one optimizer step, as the mean of squares (a diagonal
// Fisher estimate, the default) or the plain mean; then keeps the top int(density · out · in)
// entries of |G| per layer (ties go to the smaller row-major index) as the layer's mask, and
// frees the accumulators. The top-k runs where the accumulator lives (on the GPU for GPU
// layers), or on the host when accumulate_on_host is set (for models whose layers would not fit
// twice on the device).
//
// Schedule of the paper and the reference (`schedule = "wl64"`): train LoRA alone for
// mask_warmup_steps optimizer steps, collect gradients during the next step, build the masks,
// then train A, B and S together. RosaSchedule::phase(step) says which phase a step is in.
//
// Layers are held by LayerHandle: a registered layer may move (its gradient observer moves with
// it); one destroyed while registered makes start() and finish() throw a peft::Error.
// Primitives are called unqualified and found through the Context's backend (the host path
// runs on a Context<Cpu> of the builder's own).
//
// Scratch: accumulate() takes G = dyᵀ x (and the 16-bit GEMM's staging) from the Context's
// workspace; workspace_bytes() says how much and start() reserves it, so the backward passes
// that collect gradients allocate nothing.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "../adapters/rosa.hpp"
#include "../backend/cpu/elementwise.hpp"  // the host-side accumulation, no Eigen
#include "../backend/cpu/sparse.hpp"

namespace peft {

/// The reference's grad_acc_mode.
enum class RosaGradAccumulation { mean_squared, mean };

struct RosaMaskOptions {
  RosaGradAccumulation accumulation = RosaGradAccumulation::mean_squared;
  /// Keep the accumulators (and run the top-k) in host memory instead of the layer's backend.
  bool accumulate_on_host = false;
};

/// Which phase optimizer step `step` (0-based) belongs to.
struct RosaSchedule {
  enum class Phase { lora_only, collect_gradients, joint };
  std::int64_t mask_warmup_steps = 64;

  Phase phase(std::int64_t step) const {
    if (step < mask_warmup_steps) return Phase::lora_only;
    if (step == mask_warmup_steps) return Phase::collect_gradients;
    return Phase::joint;
  }
};

template <class T, class B>
class RosaMaskBuilder {
 public:
  using P = param_t<T>;
  using Ctx = Context<B>;
  using Layer = Rosa<T, B>;

  explicit RosaMaskBuilder(const RosaMaskOptions& options = {}) : options_(options) {}
  RosaMaskBuilder(const RosaMaskBuilder&) = delete;
  RosaMaskBuilder& operator=(const RosaMaskBuilder&) = delete;
  ~RosaMaskBuilder() { detach(); }

  /// Registers a layer; `density` overrides the layer's own (it must fit the layer's capacity).
  /// The layer may move afterwards; it must outlive the builder's use of it (finish()).
  void add(Layer& layer, std::optional<double> density = std::nullopt) {
    PEFT_CHECK(!collecting_, ErrorKind::state, "RosaMaskBuilder::add: called while collecting");
    LayerHandle<Layer> handle = layer.handle();
    for (const auto& e : entries_)
      PEFT_CHECK_ARG(!e.layer.same_layer(handle),
                     "RosaMaskBuilder::add: the layer is already registered");
    const index_t out = layer.out_features(), in = layer.in_features();
    index_t k = layer.sparse_capacity();
    if (density) {
      PEFT_CHECK_ARG(*density >= 0 && *density <= 1, "RosaMaskBuilder::add: density is ", *density,
                     ", expected in [0, 1]");
      k = static_cast<index_t>(*density * double(out) * double(in));
      PEFT_CHECK_ARG(k <= layer.sparse_capacity(), "RosaMaskBuilder::add: density ", *density,
                     " asks for ", k, " entries, the layer has room for ", layer.sparse_capacity(),
                     " (its config's density)");
    }
    Entry entry;
    entry.layer = std::move(handle);
    entry.out = out;
    entry.in = in;
    entry.k = k;
    entries_.push_back(std::move(entry));
  }

  /// Workspace bytes one accumulation takes (the largest over the registered layers): G = dyᵀ x
  /// in param_t<T> unless the plain mean accumulates in place, plus what the backend's gemm
  /// stages for 16-bit T (for any batch size).
  index_t workspace_bytes(const Ctx& ctx) const {
    const bool in_place =
        !options_.accumulate_on_host && options_.accumulation == RosaGradAccumulation::mean;
    index_t bytes = 0;
    for (const auto& e : entries_) {
      index_t b = in_place ? 0 : detail::align_up(e.out * e.in * index_t(sizeof(P)));
      constexpr index_t any_rows = std::numeric_limits<index_t>::max();
      // Backends whose gemm takes no scratch need not say so.
      if constexpr (requires { gemm_workspace_bytes<T, P>(ctx, Op::T, Op::N, 1, 1, 1); })
        b += gemm_workspace_bytes<T, P>(ctx, Op::T, Op::N, e.out, e.in, any_rows);
      bytes = std::max(bytes, b);
    }
    return bytes;
  }

  /// Grows the Context's workspace to workspace_bytes() (start() does it too).
  void preallocate(Ctx& ctx) const {
    ctx.workspace().reserve(static_cast<std::size_t>(workspace_bytes(ctx)));
  }

  /// Allocates the accumulators and the workspace, and starts observing every registered
  /// layer's backward.
  void start(Ctx& ctx) {
    PEFT_CHECK(!collecting_, ErrorKind::state, "RosaMaskBuilder::start: already collecting");
    PEFT_CHECK(!entries_.empty(), ErrorKind::state, "RosaMaskBuilder::start: no layer was added");
    for (auto& e : entries_) e.layer.get("RosaMaskBuilder::start");
    preallocate(ctx);
    for (auto& e : entries_) {
      const index_t out = e.out, in = e.in;
      e.micro_batches = 0;
      if (options_.accumulate_on_host) {
        e.host_sum = Matrix<P, Cpu>(out, in);
        e.host_scratch = Matrix<P, Cpu>(out, in);
      } else {
        e.sum = Matrix<P, B>(out, in);
      }
      Entry* entry = &e;
      e.layer.get("RosaMaskBuilder::start")
          .set_gradient_observer(
              [this, entry](Ctx& c, MatrixView<const T, B> x, MatrixView<const T, B> dy) {
                accumulate(c, *entry, x, dy);
              });
    }
    collecting_ = true;
  }

  bool collecting() const noexcept { return collecting_; }

  /// Builds every layer's mask from what was accumulated, installs it, frees the accumulators.
  void finish(Ctx& ctx) {
    PEFT_CHECK(collecting_, ErrorKind::state, "RosaMaskBuilder::finish: start() was not called");
    // Every check before the first write: the device path builds the pattern in S's own
    // storage, so a merged layer found halfway would keep a pattern its merged W0 does not have.
    for (auto& e : entries_) {
      const Layer& layer = e.layer.get("RosaMaskBuilder::finish");
      PEFT_CHECK(e.micro_batches > 0, ErrorKind::state,
                 "RosaMaskBuilder::finish: a layer saw no backward since start()");
      PEFT_CHECK(!layer.merged(), ErrorKind::state,
                 "RosaMaskBuilder::finish: a registered layer is merged; unmerge it before its "
                 "mask is built (no layer was changed)");
    }
    detach();
    for (auto& e : entries_) {
      Layer& layer = e.layer.get("RosaMaskBuilder::finish");
      const double mean = 1.0 / double(e.micro_batches);
      if (options_.accumulate_on_host) {
        scale(host_, mean, e.host_sum.view());
        CsrPattern pattern{e.host_sum.rows(), e.host_sum.cols(),
                           std::vector<std::int32_t>(std::size_t(e.host_sum.rows() + 1)),
                           std::vector<std::int32_t>(std::size_t(e.k))};
        topk_pattern(
            host_, as_const(e.host_sum.view()), e.k,
            VectorView<std::int32_t, Cpu>(pattern.row_offsets.data(), e.host_sum.rows() + 1),
            VectorView<std::int32_t, Cpu>(pattern.col_indices.data(), e.k));
        layer.set_mask(ctx, pattern);
      } else {
        scale(ctx, mean, e.sum.view());
        auto& s = layer.sparse();
        topk_pattern(ctx, as_const(e.sum.view()), e.k, s.row_offsets_storage(),
                     s.col_indices_storage());
        layer.set_mask_trusted(ctx, e.k);
      }
      e.sum = Matrix<P, B>();
      e.host_sum = Matrix<P, Cpu>();
      e.host_scratch = Matrix<P, Cpu>();
    }
  }

 private:
  struct Entry {
    LayerHandle<Layer> layer;
    index_t out = 0, in = 0;  // the layer's sizes (fixed for its life)
    index_t k = 0;
    index_t micro_batches = 0;
    Matrix<P, B> sum;
    Matrix<P, Cpu> host_sum, host_scratch;
  };

  void accumulate(Ctx& ctx, Entry& e, MatrixView<const T, B> x, MatrixView<const T, B> dy) {
    ++e.micro_batches;
    const bool squares = options_.accumulation == RosaGradAccumulation::mean_squared;
    if (!options_.accumulate_on_host && !squares) {
      gemm(ctx, Op::T, Op::N, 1.0, dy, x, 1.0, e.sum.view());  // sum += dyᵀ x
      return;
    }
    typename detail::Workspace<B>::Frame frame(ctx.workspace());
    auto g = frame.template matrix<P>(e.out, e.in);
    gemm(ctx, Op::T, Op::N, 1.0, dy, x, 0.0, g);  // G = dyᵀ x of this micro-batch
    if (!options_.accumulate_on_host) {
      accumulate_squares(ctx, 1.0, as_const(g), e.sum.view());
      return;
    }
    download(ctx, as_const(g), e.host_scratch.view());
    if (squares) {
      accumulate_squares(host_, 1.0, as_const(e.host_scratch.view()), e.host_sum.view());
    } else {
      axpy(host_, 1.0, as_const(e.host_scratch.view()), e.host_sum.view());
    }
  }

  /// Stops observing; layers destroyed meanwhile have nothing left to detach.
  void detach() noexcept {
    if (!collecting_) return;
    for (auto& e : entries_)
      if (e.layer.alive()) e.layer.get("RosaMaskBuilder::detach").set_gradient_observer({});
    collecting_ = false;
  }

  RosaMaskOptions options_;
  Context<Cpu> host_;           // for the host-side accumulation and top-k
  std::vector<Entry> entries_;  // not resized while collecting: observers hold pointers
  bool collecting_ = false;
};

}  // namespace peft
