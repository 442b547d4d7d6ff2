#pragma once
// AdaLoRA's rank allocator (Zhang et al. 2023; PEFT's RankAllocator) over any number of AdaLora
// layers. Call update_and_allocate(ctx, step) once per optimizer step, after backward and before
// zero_grad (PEFT's order: after optimizer.step() is fine too). It keeps, per entry of A, E and
// B, EMAs of the sensitivity |p · ∇p| and of its uncertainty, scores each rank (triplet) as
// s(E_i) + mean_j s(A_ij) + mean_k s(B_ki), and keeps the budget's best triplets by zeroing E
// elsewhere. The budget falls from Σ init_r to target_r · layers on PEFT's cubic schedule; at
// step total_step − tfinal the mask is frozen into the rank pattern and re-applied afterwards.
//
// Where PEFT is fragile, this one is not: exactly `budget` triplets are kept (PEFT masks every
// tie at its threshold, and its kthvalue fails for k = 0), ties going to the earlier layer and
// the smaller rank index, identically on the CPU and the GPU; the statistics stay where the
// layers live (scores, threshold and mask included); and state() exposes everything a resumed
// run needs to make the masks an uninterrupted run makes (io/adalora_allocator_state.hpp saves
// it). Once the pattern is final, compact(ctx, optimizer) shrinks the layers to their kept
// ranks, so that a step costs what a LoRA of those ranks costs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../adapters/adalora.hpp"
#include "../core/sparse.hpp"

namespace peft {

/// The allocator's fields of PEFT's AdaLoraConfig, with PEFT's defaults.
struct RankAllocatorOptions {
  index_t target_r = 8;         // average rank per layer at the end
  std::int64_t tinit = 0;       // steps of warm-up at the full budget
  std::int64_t tfinal = 0;      // final steps at the frozen rank pattern
  std::int64_t delta_t = 1;     // deltaT: mask every delta_t steps while the budget falls
  double beta1 = 0.85;          // EMA of the sensitivity
  double beta2 = 0.85;          // EMA of the uncertainty
  std::int64_t total_step = 0;  // required: the number of optimizer steps of the run
};

template <class T, class B>
class RankAllocator {
 public:
  using P = param_t<T>;
  using Ctx = Context<B>;
  using Layer = AdaLora<T, B>;

  explicit RankAllocator(const RankAllocatorOptions& options) : options_(options) {
    const auto& o = options;
    PEFT_CHECK_ARG(o.total_step > 0, "RankAllocator: total_step is ", o.total_step,
                   ", expected the run's number of optimizer steps (> 0)");
    PEFT_CHECK_ARG(o.tinit >= 0 && o.tfinal >= 0, "RankAllocator: tinit is ", o.tinit,
                   " and tfinal ", o.tfinal, ", expected >= 0");
    PEFT_CHECK_ARG(o.tinit < o.total_step - o.tfinal, "RankAllocator: tinit (", o.tinit,
                   ") must be below total_step - tfinal (", o.total_step, " - ", o.tfinal, " = ",
                   o.total_step - o.tfinal,
                   "): the budget falls between the warm-up of tinit steps and the final "
                   "tfinal steps, which leaves no step for it");
    PEFT_CHECK_ARG(o.delta_t >= 1, "RankAllocator: delta_t is ", o.delta_t, ", expected >= 1");
    PEFT_CHECK_ARG(o.beta1 > 0 && o.beta1 < 1 && o.beta2 > 0 && o.beta2 < 1,
                   "RankAllocator: beta1 is ", o.beta1, " and beta2 ", o.beta2,
                   ", expected both in (0, 1)");
    PEFT_CHECK_ARG(o.target_r >= 0, "RankAllocator: target_r is ", o.target_r, ", expected >= 0");
  }
  RankAllocator(const RankAllocator&) = delete;
  RankAllocator& operator=(const RankAllocator&) = delete;
  RankAllocator(RankAllocator&&) noexcept = default;
  RankAllocator& operator=(RankAllocator&&) noexcept = default;

  /// Registers a layer (before the first update). `name` labels its rank pattern and state.
  void add(Ctx& ctx, Layer& layer, std::string name) {
    PEFT_CHECK(mask_.size() == 0, ErrorKind::state,
               "RankAllocator::add: called after the first update_and_allocate");
    Entry e;
    e.name = std::move(name);
    e.layer = layer.handle();
    e.r = layer.rank();
    e.offset = init_budget_;
    e.in = layer.in_features();
    e.out = layer.out_features();
    auto params = layer.parameters();
    for (int k = 0; k < 3; ++k) {
      const auto& v = params[static_cast<std::size_t>(k)].value;
      e.stats[k] = Stats{Matrix<P, B>(v.rows(), v.cols()), Matrix<P, B>(v.rows(), v.cols()),
                         Matrix<P, B>(v.rows(), v.cols())};
    }
    e.ones = Matrix<P, B>(std::max(e.in, e.out), 1);
    fill(ctx, e.ones.view(), 1.0);
    init_budget_ += e.r;
    entries_.push_back(std::move(e));
  }

  index_t init_budget() const noexcept { return init_budget_; }
  index_t target_budget() const noexcept { return options_.target_r * index_t(entries_.size()); }
  const RankAllocatorOptions& options() const noexcept { return options_; }

  struct Budget {
    index_t budget;
    bool mask;  // whether this step masks
  };

  /// PEFT's budget_schedule: the full budget until tinit, the target after total_step − tfinal,
  /// a cubic fall between, masking every delta_t steps.
  Budget budget_schedule(std::int64_t step) const {
    const auto& o = options_;
    const index_t init = init_budget_, target = std::min(target_budget(), init_budget_);
    if (step <= o.tinit) return {init, false};
    if (step > o.total_step - o.tfinal) return {target, true};
    const double mul = 1.0 - double(step - o.tinit) / double(o.total_step - o.tfinal - o.tinit);
    const auto budget =
        static_cast<index_t>(double(init - target) * mul * mul * mul + double(target));
    return {budget, step % o.delta_t == 0};
  }

  /// One step of allocation (see the top of the file). Returns the budget in force.
  index_t update_and_allocate(Ctx& ctx, std::int64_t step) {
    PEFT_CHECK(!entries_.empty(), ErrorKind::state,
               "RankAllocator::update_and_allocate: no layer was added");
    ensure_buffers(ctx);
    last_step_ = step;
    const std::int64_t freeze_at = options_.total_step - options_.tfinal;
    if (compacted_) return budget_schedule(step).budget;  // the layers hold the kept ranks only
    if (step < freeze_at) {
      update_importance(ctx);
      const Budget b = budget_schedule(step);
      if (b.mask) mask_to_budget(ctx, b.budget);
      return b.budget;
    }
    if (step == freeze_at || !frozen_) {  // PEFT: a forced mask at the target, statistics reset
      mask_to_budget(ctx, budget_schedule(freeze_at).budget);
      frozen_ = true;
      for (auto& e : entries_)
        for (auto& s : e.stats) {
          fill(ctx, s.sensitivity.view(), 0.0);
          fill(ctx, s.uncertainty.view(), 0.0);
        }
      return budget_schedule(freeze_at).budget;
    }
    apply_mask(ctx);
    return budget_schedule(step).budget;
  }

  /// Whether the rank pattern is final (step total_step − tfinal has passed).
  bool pattern_final() const noexcept { return frozen_; }
  /// The step of the last update_and_allocate (-1 before the first): a resumed run continues
  /// at last_step() + 1.
  std::int64_t last_step() const noexcept { return last_step_; }
  void set_last_step(std::int64_t step) noexcept { last_step_ = step; }
  /// Whether compact() has shrunk the layers.
  bool compacted() const noexcept { return compacted_; }

  /// Once the pattern is final: shrinks every layer to its kept ranks (AdaLora::keep_ranks), so
  /// that a step costs what a LoRA of those ranks costs (PEFT keeps computing with init_r ranks
  /// and only zeroes E). Outputs and gradients of the kept ranks do not change. The
  /// orthogonal regulariser then covers the kept ranks only (PEFT's covers the pruned rows of
  /// A and columns of B too). rank_pattern() keeps answering with the pattern over the initial
  /// ranks. Every layer must keep at least one rank.
  void compact(Ctx& ctx) {
    compact_impl(ctx, [](Layer& layer, Ctx& c, const std::vector<index_t>& kept) {
      layer.keep_ranks(c, kept);
    });
  }
  /// The same, and the optimizer's moments of the layers' parameters with them (AdamW::reshape).
  template <class Optimizer>
  void compact(Ctx& ctx, Optimizer& optimizer) {
    compact_impl(ctx, [&](Layer& layer, Ctx& c, const std::vector<index_t>& kept) {
      optimizer.reshape(
          c, layer, [&](Ctx& cc) { layer.keep_ranks(cc, kept); },
          [&](Ctx& cc, const std::string& name, MatrixView<const P, B> from, MatrixView<P, B> to) {
            Layer::gather_ranks(cc, name, from, to, kept);
          });
    });
  }

  /// The kept ranks of each layer, in the order of add (PEFT's rank_pattern); all kept before
  /// the first mask.
  std::vector<std::pair<std::string, std::vector<bool>>> rank_pattern(Ctx& ctx) const {
    if (compacted_) return compacted_pattern_;
    std::vector<std::pair<std::string, std::vector<bool>>> out;
    Matrix<P, Cpu> host(1, std::max<index_t>(init_budget_, 1));
    if (mask_.size() > 0) download(ctx, as_const(mask_.view()), host.view());
    for (const auto& e : entries_) {
      std::vector<bool> keep(static_cast<std::size_t>(e.r), true);
      if (mask_.size() > 0)
        for (index_t i = 0; i < e.r; ++i) keep[std::size_t(i)] = host.data()[e.offset + i] != 0;
      out.emplace_back(e.name, std::move(keep));
    }
    return out;
  }

  /// Every tensor of the allocator's state by name ("<layer>.lora_A.sensitivity", ...,
  /// "rank_mask"): save them with the checkpoint and write them back (with set_pattern_final)
  /// to resume a run exactly. Views stay valid for the allocator's lifetime.
  std::vector<std::pair<std::string, MatrixView<P, B>>> state(Ctx& ctx) {
    ensure_buffers(ctx);
    static constexpr const char* kNames[3] = {"lora_A", "lora_E", "lora_B"};
    std::vector<std::pair<std::string, MatrixView<P, B>>> out;
    for (auto& e : entries_)
      for (int k = 0; k < 3; ++k) {
        out.emplace_back(e.name + "." + kNames[k] + ".sensitivity", e.stats[k].sensitivity.view());
        out.emplace_back(e.name + "." + kNames[k] + ".uncertainty", e.stats[k].uncertainty.view());
      }
    out.emplace_back("rank_mask", mask_.view());
    return out;
  }
  void set_pattern_final(bool final) noexcept { frozen_ = final; }

  /// The registered layers' names and ranks, in the order of add.
  std::vector<std::pair<std::string, index_t>> layers() const {
    std::vector<std::pair<std::string, index_t>> out;
    for (const auto& e : entries_) out.emplace_back(e.name, e.r);
    return out;
  }

 private:
  struct Stats {
    Matrix<P, B> sensitivity, uncertainty, score;
  };
  struct Entry {
    std::string name;
    LayerHandle<Layer> layer;
    index_t r = 0, offset = 0, in = 0, out = 0;
    Stats stats[3];     // lora_A, lora_E, lora_B
    Matrix<P, B> ones;  // [max(in, out), 1] for the means
  };

  template <class Shrink>
  void compact_impl(Ctx& ctx, Shrink&& shrink) {
    PEFT_CHECK(frozen_, ErrorKind::state, "RankAllocator::compact: the rank pattern is not final ",
               "yet (it is at step total_step - tfinal = ", options_.total_step - options_.tfinal,
               ")");
    if (compacted_) return;
    auto pattern = rank_pattern(ctx);
    std::vector<std::vector<index_t>> kept(entries_.size());
    for (std::size_t l = 0; l < entries_.size(); ++l) {
      entries_[l].layer.get("RankAllocator::compact");
      for (std::size_t i = 0; i < pattern[l].second.size(); ++i)
        if (pattern[l].second[i]) kept[l].push_back(index_t(i));
      PEFT_CHECK(!kept[l].empty(), ErrorKind::state, "RankAllocator::compact: layer '",
                 entries_[l].name, "' keeps no rank; compact needs at least one per layer");
    }
    index_t total = 0;
    for (std::size_t l = 0; l < entries_.size(); ++l) {
      Entry& e = entries_[l];
      Layer& layer = e.layer.get("RankAllocator::compact");
      shrink(layer, ctx, kept[l]);
      e.r = layer.rank();
      e.offset = total;
      total += e.r;
      auto params = layer.parameters();
      for (int k = 0; k < 3; ++k) {
        const auto& v = params[static_cast<std::size_t>(k)].value;
        for (auto* m : {&e.stats[k].sensitivity, &e.stats[k].uncertainty, &e.stats[k].score}) {
          *m = Matrix<P, B>(v.rows(), v.cols());
          fill(ctx, m->view(), 0.0);
        }
      }
    }
    mask_ = Matrix<P, B>(1, total);
    fill(ctx, mask_.view(), 1.0);
    compacted_pattern_ = std::move(pattern);
    compacted_ = true;
  }

  void ensure_buffers(Ctx& ctx) {
    if (mask_.size() > 0) return;
    triplets_ = Matrix<P, B>(1, init_budget_);
    mask_ = Matrix<P, B>(1, init_budget_);
    fill(ctx, mask_.view(), 1.0);
    ones_ = Matrix<P, B>(1, init_budget_);
    fill(ctx, ones_.view(), 1.0);
    row_offsets_ = Vector<std::int32_t, B>(2);
    kept_ = Vector<std::int32_t, B>(init_budget_);
  }

  void update_importance(Ctx& ctx) {
    for (auto& e : entries_) {
      Layer& layer = e.layer.get("RankAllocator::update_and_allocate");
      layer.prepare_gradients(ctx);
      auto params = layer.parameters();
      for (int k = 0; k < 3; ++k) {
        const auto& p = params[static_cast<std::size_t>(k)];
        importance_update(ctx, options_.beta1, options_.beta2, as_const(p.value), as_const(p.grad),
                          e.stats[k].sensitivity.view(), e.stats[k].uncertainty.view(),
                          e.stats[k].score.view());
      }
    }
  }

  /// Keeps the `budget` best triplets over all layers: mask = 1 there, 0 elsewhere; E ⊙= mask.
  void mask_to_budget(Ctx& ctx, index_t budget) {
    budget = std::clamp<index_t>(budget, 0, init_budget_);
    for (auto& e : entries_) {
      MatrixView<P, B> triplet(triplets_.data() + e.offset, e.r, 1);
      copy(ctx, as_const(e.stats[1].score.view()), triplet);  // s(E_i)
      const auto ones_in = as_const(MatrixView<P, B>(e.ones.data(), e.in, 1));
      const auto ones_out = as_const(MatrixView<P, B>(e.ones.data(), e.out, 1));
      gemm(ctx, Op::N, Op::N, 1.0 / double(e.in), as_const(e.stats[0].score.view()), ones_in, 1.0,
           triplet);  // + mean_j s(A_ij)
      gemm(ctx, Op::T, Op::N, 1.0 / double(e.out), as_const(e.stats[2].score.view()), ones_out, 1.0,
           triplet);  // + mean_k s(B_ki)
    }
    topk_pattern(ctx, as_const(triplets_.view()), budget, row_offsets_.view(), kept_.view());
    fill(ctx, mask_.view(), 0.0);
    const CsrView<const P, B> kept{1,
                                   init_budget_,
                                   budget,
                                   row_offsets_.data(),
                                   kept_.data(),
                                   static_cast<const P*>(ones_.data())};
    add_sparse_to_dense(ctx, 1.0, kept, mask_.view());
    apply_mask(ctx);
  }

  void apply_mask(Ctx& ctx) {
    for (auto& e : entries_) {
      Layer& layer = e.layer.get("RankAllocator::update_and_allocate");
      auto lora_e = layer.parameters()[1].value;
      multiply(ctx, as_const(MatrixView<P, B>(mask_.data() + e.offset, e.r, 1)), lora_e);
      layer.parameters_updated(ctx);
    }
  }

  RankAllocatorOptions options_;
  std::vector<Entry> entries_;
  index_t init_budget_ = 0;
  Matrix<P, B> triplets_, mask_, ones_;  // [1, init_budget]
  Vector<std::int32_t, B> row_offsets_, kept_;
  bool frozen_ = false;
  bool compacted_ = false;
  std::vector<std::pair<std::string, std::vector<bool>>> compacted_pattern_;
  std::int64_t last_step_ = -1;
};

}  // namespace peft
