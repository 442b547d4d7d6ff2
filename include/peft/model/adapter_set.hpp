#pragma once
// AdapterSet<T, B>: the adapters of one model, by module name (as in the base model, e.g.
// "model.layers.0.self_attn.q_proj"), in insertion order. It is what a trainer hands to the
// optimizer and what save_adapter / load_adapter write and read.
//
// Layers are held in a std::variant (AnyAdapter) over the adapter types of AdapterFormats
// (adapter_types.hpp); adding a type there adds it here and to the checkpoint code. Every
// alternative models the Adapter concept, which is all the set's own operations use. Layers
// live on the heap and never move, so references to them (an optimizer holds some) stay valid
// while the set lives, also when the set itself is moved.
//
// Like the adapters, the set is generic over the backend: include <peft/peft.hpp> for the CPU;
// for AdapterSet<T, Cuda>, include <peft/cuda.hpp> and this header in .cu files.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../adapters/adapter.hpp"
#include "adapter_types.hpp"
#include "base_model.hpp"

namespace peft {

/// FNV-1a, 32 bits: the stable hash that gives each module its stream_id.
inline constexpr std::uint32_t fnv1a32(std::string_view text) noexcept {
  std::uint32_t hash = 2166136261u;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 16777619u;
  }
  return hash;
}

/// The stream_id AdapterSet gives the layer of `module`, so that layers sharing a seed differ
/// and a module keeps its random streams across runs and reorderings.
inline constexpr std::uint32_t module_stream_id(std::string_view module) noexcept {
  return fnv1a32(module);
}

/// The configuration type of layer type L (LoraConfig for Lora<T, B>, ...).
template <class L>
using layer_config_t = std::remove_cvref_t<decltype(std::declval<const L&>().config())>;

template <class T, class B>
class AdapterSet {
 public:
  using value_type = T;
  using param_type = param_t<T>;
  using backend_type = B;
  using Ctx = Context<B>;
  using Layer = AnyAdapter<T, B>;

  AdapterSet() = default;
  AdapterSet(AdapterSet&&) noexcept = default;
  AdapterSet& operator=(AdapterSet&&) noexcept = default;
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;

  // ---- building ---------------------------------------------------------------------------

  /// Adds a layer of method M (peft::Lora, peft::Rosa, ...) for `module` over `base`, with
  /// stream_id = module_stream_id(module):  set.add<peft::Lora>(ctx, name, base, {.r = 16}).
  template <template <class, class> class M>
  M<T, B>& add(Ctx& ctx, std::string module, const BaseLinear<T, B>& base,
               const layer_config_t<M<T, B>>& config) {
    static_assert(AdapterFormats::has_layer<M<T, B>, T, B>,
                  "AdapterSet::add<M>: M is not among AdapterFormats (model/adapter_types.hpp)");
    check_new_module("AdapterSet::add", module);
    check_layout(module, base.layout, config);
    const LayerOptions options{.stream_id = module_stream_id(module)};
    return emplace<M<T, B>>(std::move(module), ctx, base.weight, config, options, base.bias);
  }

  /// add<Lora>.
  Lora<T, B>& add_lora(Ctx& ctx, std::string module, const BaseLinear<T, B>& base,
                       const LoraConfig& config) {
    return add<Lora>(ctx, std::move(module), base, config);
  }

  /// add<Rosa>. Its parameters are "<module>.lora_A", "<module>.lora_B" and "<module>.rosa_S";
  /// it has no mask until one is set (Rosa::set_mask, or a RosaMaskBuilder).
  Rosa<T, B>& add_rosa(Ctx& ctx, std::string module, const BaseLinear<T, B>& base,
                       const RosaConfig& config) {
    return add<Rosa>(ctx, std::move(module), base, config);
  }

  /// Adds a layer built elsewhere (moved in). Its stream_id is the caller's choice.
  template <class L>
  requires std::is_constructible_v<Layer, L&&> &&
      (!std::is_lvalue_reference_v<L>)L& add(std::string module, L&& layer) {
    check_new_module("AdapterSet::add", module);
    return emplace<std::remove_cvref_t<L>>(std::move(module), std::move(layer));
  }

  // ---- lookup -----------------------------------------------------------------------------

  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  bool contains(std::string_view module) const { return index_.find(module) != index_.end(); }

  /// Module names in insertion order.
  std::vector<std::string> modules() const {
    std::vector<std::string> names;
    names.reserve(entries_.size());
    for (const auto& e : entries_) names.push_back(e->module);
    return names;
  }

  Layer& at(std::string_view module) { return entry(module, "AdapterSet::at").layer; }
  const Layer& at(std::string_view module) const {
    return const_cast<AdapterSet*>(this)->entry(module, "AdapterSet::at").layer;
  }

  /// The layer of `module` as an L (e.g. Lora<T, B>); an error when it holds another type.
  template <class L>
  L& get(std::string_view module) {
    Layer& layer = at(module);
    L* p = std::get_if<L>(&layer);
    PEFT_CHECK_ARG(p != nullptr, "AdapterSet::get: module '", module,
                   "' holds another adapter type");
    return *p;
  }
  template <class L>
  const L& get(std::string_view module) const {
    return const_cast<AdapterSet*>(this)->template get<L>(module);
  }

  /// f(module_name, layer) for every layer in order; the layer as its concrete type.
  template <class F>
  void for_each(F&& f) {
    for (auto& e : entries_)
      std::visit([&](auto& layer) { f(static_cast<const std::string&>(e->module), layer); },
                 e->layer);
  }
  template <class F>
  void for_each(F&& f) const {
    for (const auto& e : entries_)
      std::visit([&](const auto& layer) { f(static_cast<const std::string&>(e->module), layer); },
                 e->layer);
  }

  // ---- training ---------------------------------------------------------------------------

  /// Every trainable parameter, named "<module>.<parameter>" (e.g.
  /// "model.layers.0.self_attn.q_proj.lora_A"). For an optimizer:
  ///   opt.add(set.parameters(), {}, [&set](auto& ctx) { set.parameters_updated(ctx); });
  std::vector<Parameter<param_type, B>> parameters() {
    std::vector<Parameter<param_type, B>> all;
    for_each([&](const std::string& module, auto& layer) {
      for (auto& p : layer.parameters()) {
        p.name = module + "." + p.name;
        all.push_back(std::move(p));
      }
    });
    return all;
  }

  index_t num_trainable() const {
    index_t n = 0;
    for_each([&](const std::string&, const auto& layer) { n += layer.num_trainable(); });
    return n;
  }

  void zero_grad(Ctx& ctx) {
    for_each([&](const std::string&, auto& layer) { layer.zero_grad(ctx); });
  }
  void parameters_updated(Ctx& ctx) {
    for_each([&](const std::string&, auto& layer) { layer.parameters_updated(ctx); });
  }
  void set_training(bool training) {
    for_each([&](const std::string&, auto& layer) { layer.set_training(training); });
  }

  // ---- merging ----------------------------------------------------------------------------

  /// Merges every layer into its frozen weight. `weights` maps each module of the set to the
  /// mutable view of the memory its layer was built over (other modules are ignored). All
  /// modules are checked before anything is written. Returns how many layers were merged
  /// (already merged ones are skipped, as PEFT does).
  index_t merge(Ctx& ctx, const WeightMap<T, B>& weights) {
    return merge_all("AdapterSet::merge", ctx, weights, true);
  }
  /// Subtracts every merged layer again. Returns how many were unmerged.
  index_t unmerge(Ctx& ctx, const WeightMap<T, B>& weights) {
    return merge_all("AdapterSet::unmerge", ctx, weights, false);
  }

 private:
  struct Entry {
    std::string module;
    Layer layer;
  };

  void check_new_module(const char* where, const std::string& module) const {
    PEFT_CHECK_ARG(!module.empty(), where, ": the module name is empty");
    PEFT_CHECK_ARG(!contains(module), where, ": module '", module, "' already has an adapter");
  }

  /// A layer whose config's fan_in_fan_out contradicts the base layer's declared layout would
  /// compute with the weight transposed (silently so when it is square).
  template <class Config>
  static void check_layout(const std::string& module, WeightLayout layout, const Config& config) {
    if (layout == WeightLayout::from_config) return;
    bool flag = false;
    if constexpr (requires { config.fan_in_fan_out; })
      flag = config.fan_in_fan_out;
    else if constexpr (requires { config.lora.fan_in_fan_out; })
      flag = config.lora.fan_in_fan_out;
    else
      return;
    PEFT_CHECK_ARG(flag == (layout == WeightLayout::in_out), "AdapterSet::add: module '", module,
                   "' has fan_in_fan_out = ", flag ? "true" : "false", " but its base layer is ",
                   to_string(layout));
  }

  template <class L, class... Args>
  L& emplace(std::string module, Args&&... args) {
    auto e = std::make_unique<Entry>(
        Entry{module, Layer(std::in_place_type<L>, std::forward<Args>(args)...)});
    L& layer = std::get<L>(e->layer);
    index_.emplace(std::move(module), entries_.size());
    entries_.push_back(std::move(e));
    return layer;
  }

  Entry& entry(std::string_view module, const char* where) {
    const auto it = index_.find(module);
    PEFT_CHECK_ARG(it != index_.end(), where, ": no adapter for module '", module, "'");
    return *entries_[it->second];
  }

  index_t merge_all(const char* where, Ctx& ctx, const WeightMap<T, B>& weights, bool merge) {
    for (const auto& e : entries_) {
      const auto it = weights.find(e->module);
      PEFT_CHECK_ARG(it != weights.end(), where, ": no weight given for module '", e->module, "'");
      std::visit(
          [&](const auto& layer) {
            if constexpr (requires { layer.base_weight(); }) {
              const auto base = layer.base_weight();
              const auto& w = it->second;
              PEFT_CHECK_ARG(w.data() == base.data() && w.rows() == base.rows() &&
                                 w.cols() == base.cols() && w.stride() == base.stride(),
                             where, ": the weight given for module '", e->module,
                             "' is not the memory its layer was built over");
            }
          },
          e->layer);
    }
    index_t count = 0;
    for (auto& e : entries_) {
      const MatrixView<T, B> w = weights.find(e->module)->second;
      std::visit(
          [&](auto& layer) {
            if (merge ? layer.merge(ctx, w) : layer.unmerge(ctx, w)) ++count;
          },
          e->layer);
    }
    return count;
  }

  std::vector<std::unique_ptr<Entry>> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

}  // namespace peft
