#pragma once
// AdamW over parameter groups with PyTorch's semantics (decoupled weight decay, bias
// correction). Each group has its own learning rate and weight decay; after a step the
// optimizer calls parameters_updated on every layer it stepped.
//
// Layers are held by LayerHandle, not by address: a registered layer may move (into a
// std::vector that grows, a std::optional, ...) and the optimizer follows it. Its parameters
// live in heap buffers that a move hands over, so the optimizer's views of them stay valid. A
// layer destroyed (or overwritten by a move assignment) while registered frees those buffers:
// step() then throws a peft::Error before it writes anything.

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../adapters/adapter.hpp"
#include "../core/adamw_step.hpp"

namespace peft {

/// torch.optim.AdamW's defaults.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

/// Per-group overrides; unset fields take the optimizer's options.
struct ParamGroupOptions {
  std::optional<double> lr = std::nullopt;
  std::optional<double> weight_decay = std::nullopt;
  /// Only the parameters with these names (e.g. {"rosa_S"}); empty = all of the layer's.
  std::vector<std::string> names = {};
};

template <class P, class B>
class AdamW {
 public:
  using Ctx = Context<B>;

  explicit AdamW(const AdamWOptions& options = {}) : options_(options) {
    PEFT_CHECK_ARG(options.lr >= 0 && std::isfinite(options.lr), "AdamW: lr is ", options.lr,
                   ", expected a finite value >= 0");
    PEFT_CHECK_ARG(options.beta1 >= 0 && options.beta1 < 1, "AdamW: beta1 is ", options.beta1,
                   ", expected in [0, 1)");
    PEFT_CHECK_ARG(options.beta2 >= 0 && options.beta2 < 1, "AdamW: beta2 is ", options.beta2,
                   ", expected in [0, 1)");
    PEFT_CHECK_ARG(options.eps > 0, "AdamW: eps is ", options.eps, ", expected > 0");
    PEFT_CHECK_ARG(options.weight_decay >= 0, "AdamW: weight_decay is ", options.weight_decay,
                   ", expected >= 0");
  }

  /// Adds a layer's parameters (all, or those named in group.names) as one group; the layer's
  /// parameters_updated runs after every step (once per layer, however many groups it has).
  /// The layer may move afterwards; it must not be destroyed before the optimizer's last step.
  /// Returns the group's index.
  template <class Layer>
  requires Adapter<Layer> && std::is_same_v<typename Layer::param_type, P> &&
      std::is_same_v<typename Layer::backend_type, B>
          std::size_t add(Layer& layer, const ParamGroupOptions& group = {}) {
    std::vector<Parameter<P, B>> selected;
    for (auto& p : layer.parameters()) {
      if (group.names.empty() || contains(group.names, p.name)) selected.push_back(p);
    }
    PEFT_CHECK_ARG(!selected.empty(),
                   "AdamW::add: no parameter of the layer matches the group's "
                   "names");
    auto owner = std::make_unique<LayerOwner<Layer>>(layer.handle());
    const bool known = has_owner(*owner);
    owners_.reserve(owners_.size() + 1);  // nothing below throws once the group is added
    const std::size_t index = add_group(std::move(selected), group);
    if (!known) owners_.push_back(std::move(owner));
    return index;
  }

  /// Adds raw parameters as one group; on_updated (optional) runs after every step, once per
  /// distinct non-null `owner` (or every time when owner is null). The optimizer cannot check
  /// that raw parameters still exist: prefer add(layer) for layers, which can move. Returns the
  /// group's index.
  std::size_t add(std::vector<Parameter<P, B>> params, const ParamGroupOptions& group = {},
                  std::function<void(Ctx&)> on_updated = {}, const void* owner = nullptr) {
    auto raw = std::make_unique<RawOwner>(owner, std::move(on_updated));
    const bool keep = raw->on_updated && (owner == nullptr || !has_owner(*raw));
    owners_.reserve(owners_.size() + 1);
    const std::size_t index = add_group(std::move(params), group);
    if (keep) owners_.push_back(std::move(raw));
    return index;
  }

  /// prepare_gradients on the layers, one step over every group, then parameters_updated on the
  /// layers. Bias correction counts
  /// each group's own steps (PyTorch counts per parameter from its first update). Throws a
  /// peft::Error, having changed nothing, when a registered layer no longer exists.
  void step(Ctx& ctx) {
    // Before any write: the parameters of a destroyed layer are freed memory.
    for (const auto& o : owners_) o->check("AdamW::step");
    // Methods whose parameters are not their effective factors pull the factors' gradients back.
    for (auto& o : owners_) o->prepare(ctx);
    ++steps_;
    for (auto& g : groups_) {
      ++g.steps;
      const double bc1 = 1.0 - std::pow(options_.beta1, double(g.steps));
      const double bc2 = 1.0 - std::pow(options_.beta2, double(g.steps));
      const AdamWStep h{g.lr, options_.beta1, options_.beta2, options_.eps, g.weight_decay, bc1,
                        bc2};
      // One fused update per group (one kernel on the GPU).
      adamw_update(ctx, h, std::span<const AdamWTensors<P, B>>(g.tensors));
    }
    for (auto& o : owners_) o->updated(ctx);
  }

  std::int64_t steps() const noexcept { return steps_; }

  /// Zeroes a group's moments and step count, as if its parameters were new to the optimizer
  /// (e.g. RoSA's rosa_S once its mask exists: PyTorch starts S's state at its first update).
  void reset_state(Ctx& ctx, std::size_t group) {
    Group& g = at(group);
    for (auto& slot : g.slots) {
      fill(ctx, slot.m.view(), 0.0);
      fill(ctx, slot.v.view(), 0.0);
    }
    g.steps = 0;
  }
  /// Follows a layer whose parameters change shape (AdaLora::keep_ranks): change(ctx) changes
  /// the layer; then every moment the optimizer holds for one of the layer's parameters is
  /// rebuilt by carry(ctx, name, old_moment, new_moment), which writes the new moment (of the
  /// parameter's new shape) from the old one. Step counts (bias correction) stay.
  template <class Layer, class Change, class Carry>
  void reshape(Ctx& ctx, Layer& layer, Change&& change, Carry&& carry) {
    struct Moved {
      Slot* slot;
      std::string name;
      Matrix<P, B> m, v;
    };
    std::vector<Moved> moved;
    for (const auto& p : layer.parameters())
      for (auto& g : groups_)
        for (auto& s : g.slots)
          if (s.param.value.data() == p.value.data())
            moved.push_back({&s, p.name, std::move(s.m), std::move(s.v)});
    change(ctx);
    auto params = layer.parameters();
    for (auto& mv : moved) {
      const auto p = std::find_if(params.begin(), params.end(),
                                  [&](const auto& q) { return q.name == mv.name; });
      PEFT_CHECK(p != params.end(), ErrorKind::state, "AdamW::reshape: the layer no longer has ",
                 "the parameter '", mv.name, "'");
      Slot& s = *mv.slot;
      s.param = *p;
      s.m = Matrix<P, B>(p->value.rows(), p->value.cols());
      s.v = Matrix<P, B>(p->value.rows(), p->value.cols());
      carry(ctx, mv.name, as_const(mv.m.view()), s.m.view());
      carry(ctx, mv.name, as_const(mv.v.view()), s.v.view());
    }
    for (auto& g : groups_) {
      g.tensors.clear();
      for (auto& s : g.slots)
        g.tensors.push_back({s.param.value, as_const(s.param.grad), s.m.view(), s.v.view()});
    }
  }

  std::size_t num_groups() const noexcept { return groups_.size(); }
  double lr(std::size_t group) const { return at(group).lr; }
  /// For learning-rate schedules.
  void set_lr(std::size_t group, double lr) {
    PEFT_CHECK_ARG(lr >= 0 && std::isfinite(lr), "AdamW::set_lr: lr is ", lr,
                   ", expected a finite value >= 0");
    at(group).lr = lr;
  }

 private:
  /// What runs after a step for one registration: a layer (through its handle) or a raw
  /// callback.
  struct Owner {
    virtual ~Owner() = default;
    /// Throws when the owner no longer exists.
    virtual void check(const char* where) const = 0;
    /// Before the update: makes the gradients current (Layer::prepare_gradients).
    virtual void prepare(Ctx& ctx) = 0;
    virtual void updated(Ctx& ctx) = 0;
    virtual bool same(const Owner& other) const = 0;
    /// One address per kind of owner (no RTTI needed to compare two owners).
    virtual const void* kind() const noexcept = 0;
  };
  template <class Kind>
  static const void* kind_of() noexcept {
    static const char tag = 0;
    return &tag;
  }

  template <class Layer>
  struct LayerOwner final : Owner {
    explicit LayerOwner(LayerHandle<Layer> h) : handle(std::move(h)) {}
    void check(const char* where) const override { handle.get(where); }
    void prepare(Ctx& ctx) override { handle.get("AdamW::step").prepare_gradients(ctx); }
    void updated(Ctx& ctx) override { handle.get("AdamW::step").parameters_updated(ctx); }
    bool same(const Owner& other) const override {
      return other.kind() == kind() &&
             handle.same_layer(static_cast<const LayerOwner&>(other).handle);
    }
    const void* kind() const noexcept override { return kind_of<LayerOwner>(); }
    LayerHandle<Layer> handle;
  };

  struct RawOwner final : Owner {
    RawOwner(const void* k, std::function<void(Ctx&)> f) : key(k), on_updated(std::move(f)) {}
    void check(const char*) const override {}
    void prepare(Ctx&) override {}
    void updated(Ctx& ctx) override { on_updated(ctx); }
    bool same(const Owner& other) const override {
      return other.kind() == kind() && key != nullptr &&
             static_cast<const RawOwner&>(other).key == key;
    }
    const void* kind() const noexcept override { return kind_of<RawOwner>(); }
    const void* key;
    std::function<void(Ctx&)> on_updated;
  };

  std::size_t add_group(std::vector<Parameter<P, B>> params, const ParamGroupOptions& group) {
    Group g;
    g.lr = group.lr.value_or(options_.lr);
    g.weight_decay = group.weight_decay.value_or(options_.weight_decay);
    PEFT_CHECK_ARG(g.lr >= 0 && std::isfinite(g.lr), "AdamW::add: group lr is ", g.lr,
                   ", expected a finite value >= 0");
    PEFT_CHECK_ARG(g.weight_decay >= 0, "AdamW::add: group weight_decay is ", g.weight_decay,
                   ", expected >= 0");
    for (auto& p : params) {
      PEFT_CHECK_SHAPE(p.value.rows() == p.grad.rows() && p.value.cols() == p.grad.cols(),
                       "AdamW::add: parameter ", p.name, " is ", shape_string(p.value),
                       " but its gradient is ", shape_string(p.grad));
      g.slots.push_back({p, Matrix<P, B>(p.value.rows(), p.value.cols()),
                         Matrix<P, B>(p.value.rows(), p.value.cols())});
    }
    for (auto& s : g.slots)
      g.tensors.push_back({s.param.value, as_const(s.param.grad), s.m.view(), s.v.view()});
    groups_.push_back(std::move(g));
    return groups_.size() - 1;
  }

  struct Slot {
    Parameter<P, B> param;
    Matrix<P, B> m;
    Matrix<P, B> v;
  };
  struct Group {
    std::vector<Slot> slots;
    std::vector<AdamWTensors<P, B>> tensors;  // views of slots, built once
    double lr = 0;
    double weight_decay = 0;
    std::int64_t steps = 0;
  };

  static bool contains(const std::vector<std::string>& names, const std::string& name) {
    for (const auto& n : names)
      if (n == name) return true;
    return false;
  }
  bool has_owner(const Owner& owner) const {
    for (const auto& o : owners_)
      if (o->same(owner)) return true;
    return false;
  }
  Group& at(std::size_t group) {
    PEFT_CHECK_ARG(group < groups_.size(), "AdamW: group ", group, " does not exist (",
                   groups_.size(), " groups)");
    return groups_[group];
  }
  const Group& at(std::size_t group) const { return const_cast<AdamW*>(this)->at(group); }

  AdamWOptions options_;
  std::vector<Group> groups_;
  std::vector<std::unique_ptr<Owner>> owners_;  // in registration order
  std::int64_t steps_ = 0;
};

}  // namespace peft
